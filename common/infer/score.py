"""score.py's reports (score.json, per_class.csv, confusion.csv, confusion.png) and the
checks that keep them honest: the scored set has the model's classes, and a report
never overwrites the report of another checkpoint or set."""
import os

from ..cli import UserError
from ..fsutil import read_json, write_json_atomic
from ..records import class_list_path, read_classes
from ..report import plot_confusion, write_confusion_csv, write_per_class_csv

REPORT_FILES = ("score.json", "per_class.csv", "confusion.csv", "confusion.png")


def default_out_dir(prefix, epoch, rec):
    """PREFIX-score-EPOCH-SET (SET: the .rec's name): one folder per checkpoint and set."""
    name = os.path.basename(rec)
    return f"{prefix}-score-{epoch:04d}-{name[:-4] if name.endswith('.rec') else name}"


def report_identity(prefix, epoch, rec):
    """What a report is of, as score.json records it (absolute paths)."""
    return {"model_prefix": os.path.abspath(prefix), "epoch": epoch, "data_val": os.path.abspath(rec)}


def check_out_dir(out_dir, identity):
    """UserError if out_dir holds report files that are not an earlier report of `identity`."""
    found = [name for name in REPORT_FILES if os.path.exists(os.path.join(out_dir, name))]
    if not found:
        return
    existing = read_json(os.path.join(out_dir, "score.json"))
    theirs = {key: existing.get(key) for key in identity} if isinstance(existing, dict) else None
    if theirs == identity:
        return  # the same checkpoint on the same set: scoring again replaces it
    what = (f"the report of {theirs['model_prefix']} epoch {theirs['epoch']} on {theirs['data_val']}"
            if theirs else f"{', '.join(found)} of another program")
    raise UserError(f"--out-dir {out_dir} already holds {what}; choose another --out-dir "
                    f"(nothing was overwritten)")


def check_class_map(classes, rec):
    """UserError if the class list of the set `rec` differs from the model's names.

    classes: settings.Setting of the model's class names (value None: unknown,
    nothing to compare). The set's list is the one prepare_data.sh wrote beside it.
    """
    data_file = class_list_path(rec)
    if classes.value is None or not os.path.isfile(data_file):
        return
    names = read_classes(data_file)
    if names == classes.value:
        return
    diff = next((i for i, (a, b) in enumerate(zip(names, classes.value)) if a != b), None)
    detail = (f"label {diff} is {names[diff]!r} there and {classes.value[diff]!r} for the model"
              if diff is not None else f"{len(names)} classes against the model's {len(classes.value)}")
    raise UserError(f"--data-val {rec} is labelled by {data_file}, which is not the model's class "
                    f"list {classes.source} ({detail}); score a set of the dataset the model was "
                    f"trained for")


def write_score_files(out_dir, report, matrix, rows, names, title):
    """score.json, per_class.csv, confusion.csv and confusion.png in out_dir (atomic)."""
    write_json_atomic(os.path.join(out_dir, "score.json"), report)
    write_per_class_csv(os.path.join(out_dir, "per_class.csv"), rows)
    write_confusion_csv(os.path.join(out_dir, "confusion.csv"), matrix)
    plot_confusion(os.path.join(out_dir, "confusion.png"), matrix, names, title)
