"""score.py's reports (score.json, per_class.csv, confusion.csv, confusion.png) and the
checks that keep them honest: the scored set has the model's classes, and a report
never overwrites the report of another checkpoint, ensemble or set."""
import json
import logging
import os

from ..cli import UserError
from ..fsutil import read_json, text_digest, write_json_atomic
from . import settings
from ..records import check_same_classes, class_list_path
from ..report import plot_confusion, write_confusion_csv, write_per_class_csv

log = logging.getLogger(__name__)

REPORT_FILES = ("score.json", "per_class.csv", "confusion.csv", "confusion.png")


def default_out_dir(members, rec):
    """PREFIX-score-EPOCH-SET (SET: the .rec's name): one folder per checkpoint and set,
    with -CxHxW added for an --image-shape other than the training run's. An ensemble's
    is PREFIX-ensembleK-DIGEST-score-SET beside its first member, DIGEST naming the
    members (each prefix, epoch and input shape, in order).

    members: ensemble.Member list (one: a single checkpoint).
    """
    name = os.path.basename(rec)
    name = name[:-4] if name.endswith(".rec") else name
    first = members[0]
    if len(members) > 1:
        digest = text_digest(json.dumps([m.identity() for m in members]))[:8]
        return f"{first.prefix}-ensemble{len(members)}-{digest}-score-{name}"
    folder = f"{first.prefix}-score-{first.epoch:04d}-{name}"
    if first.shape.source == "--image-shape":
        recorded = settings.recorded_args(first.prefix).get("image_shape")
        if list(first.shape.value) != recorded:
            folder += "-" + "x".join(map(str, first.shape.value))
    return folder


def report_identity(members, rec):
    """What a report is of, as score.json records it (absolute paths): one checkpoint's
    prefix, epoch and input shape, or an ensemble's list of them ("ensemble")."""
    if len(members) > 1:
        return {"ensemble": [m.identity() for m in members], "data_val": os.path.abspath(rec)}
    first = members[0]
    return {"model_prefix": os.path.abspath(first.prefix), "epoch": first.epoch, "data_val": os.path.abspath(rec),
            "image_shape": list(first.shape.value)}


def check_out_dir(out_dir, identity):
    """UserError if out_dir holds report files that are not an earlier report of `identity`."""
    found = [name for name in REPORT_FILES if os.path.exists(os.path.join(out_dir, name))]
    if not found:
        return
    existing = read_json(os.path.join(out_dir, "score.json"))
    theirs = {key: existing.get(key) for key in identity} if isinstance(existing, dict) else None
    if theirs == identity:
        return  # the same checkpoint (or ensemble) on the same set: scoring again replaces it
    what = _described(existing) or f"{', '.join(found)} of another program"
    raise UserError(f"--out-dir {out_dir} already holds {what}; choose another --out-dir "
                    f"(nothing was overwritten)")


def _described(report):
    """'the report of PREFIX epoch E on SET at input C,H,W' (or of an ensemble), None if not ours."""
    if not isinstance(report, dict) or "data_val" not in report:
        return None
    if isinstance(report.get("ensemble"), list):
        members = "; ".join(f"{m.get('model_prefix')} epoch {m.get('epoch')}" for m in report["ensemble"]
                            if isinstance(m, dict))
        return f"the report of the ensemble of {members} on {report['data_val']}"
    if "model_prefix" not in report:
        return None
    return (f"the report of {report['model_prefix']} epoch {report.get('epoch')} on {report['data_val']} "
            f"at input {','.join(map(str, report.get('image_shape') or ['?']))}")


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
