"""Reports people read: the metrics log and curves of a run, and a score's CSV and PNG files.

PREFIX-metrics.jsonl and PREFIX-curve.png of a training run; per_class.csv,
confusion.csv and confusion.png of a score. Every file is written atomically.
"""
import csv
import io
import json
import os

import numpy as np

from .fsutil import atomic_output, write_text_atomic

TICK_LABELS_UP_TO = 30  # confusion.png names its classes only when they stay readable
COUNTS_UP_TO = 15  # ... and writes the counts in its cells


def read_metrics(path):
    """The records of a metrics.jsonl file ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """One JSON line per epoch, rewritten atomically after each epoch; plot_path is where
    plot_curves draws its records.

    A resumed run keeps the lines of the epochs it resumes after and drops later
    ones (they are trained again).
    """

    def __init__(self, prefix, begin_epoch):
        self.path = f"{prefix}-metrics.jsonl"
        self.plot_path = f"{prefix}-curve.png"
        self.records = [r for r in read_metrics(self.path) if r["epoch"] <= begin_epoch]

    def append(self, record):
        self.records.append(record)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def plot_curves(records, path):
    """Accuracy and loss per epoch, training against validation, as a PNG."""
    fig = _figure((10, 4))
    epochs = [r["epoch"] for r in records]
    acc, loss = fig.subplots(1, 2)
    for key, label in (("train_acc", "train top-1"), ("val_acc", "val top-1"),
                       ("val_mean_class_acc", "val mean per-class")):
        acc.plot(epochs, [r[key] for r in records], marker="o", label=label)
    acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        loss.plot(epochs, [r[key] for r in records], marker="o", label=label)
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
        axis.legend()
    # A fixed layout: tight_layout would take a third of the drawing time, every epoch.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    _save_png(fig, path, tight=False)


def per_class_rows(counts, hits, names):
    """[(label, name, images, correct, accuracy or None)] sorted by label."""
    return [(label, names[label] if names else str(label), int(n), int(c),
             (c / n) if n else None) for label, (n, c) in enumerate(zip(counts, hits))]


def write_per_class_csv(path, rows):
    """per_class.csv: label,name,images,correct,accuracy (empty accuracy: no image)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "name", "images", "correct", "accuracy"])
    for label, name, images, correct, acc in rows:
        writer.writerow([label, name, images, correct, "" if acc is None else f"{acc:.6f}"])
    write_text_atomic(path, buffer.getvalue())


def write_confusion_csv(path, matrix):
    """confusion.csv: counts, row i = true label i, column j = predicted label j."""
    lines = ["true\\predicted," + ",".join(map(str, range(len(matrix))))]
    lines += [f"{i}," + ",".join(map(str, row)) for i, row in enumerate(matrix.tolist())]
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_confusion(path, matrix, names, title):
    """confusion.png: rows true, columns predicted, each row normalized to sum 1.

    matrix: (C, C) counts. Class names label the axes up to TICK_LABELS_UP_TO
    classes, and the cells show their counts up to COUNTS_UP_TO.
    """
    count = len(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    side = min(20.0, max(6.0, 0.3 * count + 3))
    fig = _figure((side + 1.5, side))
    axis = fig.subplots()
    image = axis.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    if count <= TICK_LABELS_UP_TO:
        labels = names or [str(i) for i in range(count)]
        axis.set_xticks(range(count), labels, rotation=90, fontsize=8)
        axis.set_yticks(range(count), labels, fontsize=8)
    if count <= COUNTS_UP_TO:
        for (row, col), value in np.ndenumerate(matrix):
            if value:
                axis.text(col, row, str(value), ha="center", va="center", fontsize=8,
                          color="white" if share[row, col] > 0.5 else "black")
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    _save_png(fig, path)


def preload():
    """Import what the figures need (matplotlib: ~0.4 s), so that a thread can do it while
    the caller is busy with other work rather than at its first figure."""
    import matplotlib.backends.backend_agg  # noqa: F401 (the PNG writer savefig picks)
    import matplotlib.figure  # noqa: F401


def _figure(size):
    """A figure of its own, outside pyplot: no display needed (cluster nodes), nothing to
    close, and safe to draw in a background thread (pyplot's figure registry is not)."""
    from matplotlib.figure import Figure
    return Figure(figsize=size)


def _save_png(fig, path, tight=True):
    if tight:
        fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
