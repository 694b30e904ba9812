"""score.py's reports: score.json, per_class.csv, confusion.csv and confusion.png."""
import os

from ..fsutil import write_json_atomic
from ..report import plot_confusion, write_confusion_csv, write_per_class_csv


def write_score_files(out_dir, report, matrix, rows, names, title):
    """score.json, per_class.csv, confusion.csv and confusion.png in out_dir (atomic)."""
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "score.json"), report)
    write_per_class_csv(os.path.join(out_dir, "per_class.csv"), rows)
    write_confusion_csv(os.path.join(out_dir, "confusion.csv"), matrix)
    plot_confusion(os.path.join(out_dir, "confusion.png"), matrix, names, title)
