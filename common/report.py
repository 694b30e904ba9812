"""A run's per-epoch record: PREFIX-metrics.jsonl and the PREFIX-curve.png plot."""
import json
import os

from .fsutil import atomic_output, write_text_atomic


def read_metrics(path):
    """The records of a metrics.jsonl file ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """One JSON line per epoch, rewritten atomically after each epoch, plus a plot.

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
        plot_curves(self.records, self.plot_path)


def plot_curves(records, path):
    """Accuracy and loss per epoch, training against validation, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in records]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
