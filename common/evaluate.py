"""Exact evaluation over a whole set: every image counted once.

MXNet 1.9.1's ImageRecordIter cannot be trusted at the end of a set: with
round_batch=False it reports pad=0 and fills the last batch with garbage labels;
with round_batch=True it wraps around, and after reset() it starts the next pass
where the wrap stopped. Module.score counts all of that as data. Measured here: a
fresh, unshuffled iterator does yield the records in file order first. So each
evaluation uses a fresh iterator, keeps exactly the first N outputs, and checks
their labels against the labels read from the .rec headers.

evaluate_set is the one evaluation of a set: training's validation and score.py
both call it; image_losses scores each image of a set the same way (--hard-mining).
"""
import dataclasses
import time

import numpy as np

from .cli import UserError


class OrderError(AssertionError):
    """The iterator did not deliver the records in file order (an MXNet change?)."""


@dataclasses.dataclass
class Score:
    """Evaluation of a model over every image of a set, each counted once.

    figures: summarize's dict; counts/hits: (C,) images and top-1 hits per true
    class; matrix: (C, C) counts, rows true; seconds: wall time; probs: the (N, C)
    probabilities it was computed from, in record order (an ensemble averages them).
    """
    figures: dict
    counts: np.ndarray
    hits: np.ndarray
    matrix: np.ndarray
    seconds: float
    probs: np.ndarray = None


def evaluate_set(module, record_set, *, image_shape, batch_size, threads, num_classes, top_k):
    """Score a bound `module` on every image of a checked RecordSet, with the validation pipeline.

    batch_size: the module's bound batch (over all devices); image_shape: (C, H, W).
    """
    from .transforms import record_iter
    tic = time.time()
    data_iter = record_iter(record_set, image_shape=image_shape, batch_size=batch_size, train=False,
                            threads=threads)
    probs, labels = predict_probabilities(module, data_iter, record_set.labels)
    return score_probabilities(probs, labels, num_classes, top_k, time.time() - tic)


def image_losses(module, record_set, *, image_shape, batch_size, threads):
    """(N,) float32 cross-entropy of each image of a checked RecordSet, in record order,
    with the validation pipeline (center crop, no mirror) and a bound `module`."""
    from .transforms import record_iter
    data_iter = record_iter(record_set, image_shape=image_shape, batch_size=batch_size, train=False,
                            threads=threads)
    return image_loss(*predict_probabilities(module, data_iter, record_set.labels))


def image_loss(probs, labels):
    """(N,) cross-entropy of (N, C) probabilities against (N,) labels (clipped at 1e-12)."""
    picked = probs[np.arange(len(labels)), labels]
    return -np.log(np.maximum(picked, 1e-12))


def score_probabilities(probs, labels, num_classes, top_k, seconds=0.0):
    """The Score of (N, C) probabilities against (N,) labels; seconds: what computing them took."""
    counts, hits = per_class_accuracy(probs, labels, num_classes)
    return Score(summarize(probs, labels, num_classes, top_k), counts, hits,
                 confusion_matrix(probs, labels, num_classes), seconds, probs)


def resolve_top_k(given, default, num_classes):
    """--top-k if given (UserError if above num_classes), else min(default, num_classes)."""
    if given is None:
        return min(default, num_classes)
    check_top_k(given, num_classes)
    return given


def check_top_k(top_k, num_classes):
    """UserError unless 1 <= top_k <= num_classes."""
    if top_k > num_classes:
        raise UserError(f"--top-k {top_k} is more than the {num_classes} classes; valid: 1..{num_classes}")


def predict_probabilities(module, data_iter, expected_labels):
    """(probabilities (N, C) float32, labels (N,) int64) for the first N images.

    data_iter: a fresh, unshuffled iterator over a set whose record labels, in
    file order, are `expected_labels` (N,).
    """
    probs = np.concatenate(list(set_outputs(module, data_iter, expected_labels)))
    return probs.astype(np.float32), np.asarray(expected_labels, dtype=np.int64)


def set_outputs(module, data_iter, expected_labels):
    """Yield the module's first output (numpy) for each batch of the first N images, in order.

    data_iter: as predict_probabilities. The last batch's padding is dropped, so
    the yielded rows add up to N, one per record; after the last one, raises
    OrderError unless the labels the iterator gave were `expected_labels` (N,).
    """
    count = len(expected_labels)
    labels, have = [], 0
    for batch in data_iter:
        if have >= count:
            break
        module.forward(batch, is_train=False)
        keep = min(batch.data[0].shape[0], count - have)
        labels.append(batch.label[0].asnumpy()[:keep])
        have += keep
        # Copied out now (asnumpy waits for the result): the next forward pass reuses
        # the output buffers, and the threaded engine runs ahead of Python.
        yield module.get_outputs()[0].asnumpy()[:keep]
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    if have != count or not np.array_equal(labels, expected_labels):
        raise OrderError(f"the iterator gave {have} images whose labels differ from the "
                         f"{count} records of the set")


def topk_correct(probs, labels, k):
    """(N,) bool: is the true label among the k most probable classes?"""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def per_class_accuracy(probs, labels, num_classes):
    """(counts (C,), correct (C,)) of top-1 predictions per true class."""
    correct = probs.argmax(axis=1) == labels
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    return counts, hits.astype(np.int64)


def summarize(probs, labels, num_classes, top_k):
    """Top-1, top-k, mean per-class accuracy and cross-entropy of predictions.

    Mean per-class accuracy averages over classes that have images, so a class
    with no validation image neither helps nor hurts.
    """
    counts, hits = per_class_accuracy(probs, labels, num_classes)
    present = counts > 0
    return {
        "acc": float(np.mean(probs.argmax(axis=1) == labels)),
        f"top{top_k}": float(np.mean(topk_correct(probs, labels, top_k))),
        "mean_class_acc": float(np.mean(hits[present] / counts[present])),
        "loss": float(np.mean(image_loss(probs, labels))),
        "images": int(len(labels)),
    }


def confusion_matrix(probs, labels, num_classes):
    """(C, C) int64 counts: rows are true classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, probs.argmax(axis=1)), 1)
    return matrix
