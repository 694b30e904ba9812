"""score.py's reports (score.json, per_class.csv, confusion.csv, confusion.png) and the
checks that keep them honest: the scored set has the model's classes, and a report
never overwrites the report of another checkpoint or set."""
import logging
import os

from ..cli import UserError
from ..fsutil import read_json, write_json_atomic
from . import settings
from ..records import check_same_classes, class_list_path
from ..report import plot_confusion, write_confusion_csv, write_per_class_csv

log = logging.getLogger(__name__)

REPORT_FILES = ("score.json", "per_class.csv", "confusion.csv", "confusion.png")


def default_out_dir(prefix, epoch, rec, shape):
    """PREFIX-score-EPOCH-SET (SET: the .rec's name): one folder per checkpoint and set,
    with -CxHxW added for an --image-shape other than the training run's.

    shape: settings.Setting of the input shape; recorded: the run's PREFIX-args.json.
    """
    name = os.path.basename(rec)
    folder = f"{prefix}-score-{epoch:04d}-{name[:-4] if name.endswith('.rec') else name}"
    if shape.source == "--image-shape":
        recorded = settings.recorded_args(prefix).get("image_shape")
        if list(shape.value) != recorded:
            folder += "-" + "x".join(map(str, shape.value))
    return folder


def report_identity(prefix, epoch, rec, image_shape):
    """What a report is of, as score.json records it (absolute paths)."""
    return {"model_prefix": os.path.abspath(prefix), "epoch": epoch, "data_val": os.path.abspath(rec),
            "image_shape": list(image_shape)}


def check_out_dir(out_dir, identity):
    """UserError if out_dir holds report files that are not an earlier report of `identity`."""
    found = [name for name in REPORT_FILES if os.path.exists(os.path.join(out_dir, name))]
    if not found:
        return
    existing = read_json(os.path.join(out_dir, "score.json"))
    theirs = {key: existing.get(key) for key in identity} if isinstance(existing, dict) else None
    if theirs == identity:
        return  # the same checkpoint on the same set: scoring again replaces it
    what = (f"the report of {theirs['model_prefix']} epoch {theirs['epoch']} on {theirs['data_val']} "
            f"at input {','.join(map(str, theirs['image_shape'] or ['?']))}" if theirs
            else f"{', '.join(found)} of another program")
    raise UserError(f"--out-dir {out_dir} already holds {what}; choose another --out-dir "
                    f"(nothing was overwritten)")


def check_class_map(classes, rec):
    """UserError if the class list of the set `rec` differs from the model's names.

    classes: settings.Setting of the model's class names (value None: unknown,
    nothing to compare). Says so when the set has no class list to compare.
    """
    if classes.value is None:
        return
    if check_same_classes(rec, classes.value, classes.source, "--data-val") is None:
        log.warning("%s has no class list beside it (%s): its labels cannot be checked against "
                    "the model's classes", rec, class_list_path(rec))


def write_score_files(out_dir, report, matrix, rows, names, title):
    """score.json, per_class.csv, confusion.csv and confusion.png in out_dir (atomic)."""
    write_json_atomic(os.path.join(out_dir, "score.json"), report)
    write_per_class_csv(os.path.join(out_dir, "per_class.csv"), rows)
    write_confusion_csv(os.path.join(out_dir, "confusion.csv"), matrix)
    plot_confusion(os.path.join(out_dir, "confusion.png"), matrix, names, title)
