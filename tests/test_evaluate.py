"""common/evaluate.py against figures worked out by hand.

Six images, four classes; class 3 has no image (a class without validation
images, as a tiny Caltech class gets). Probabilities (rows: images):

    image  label   p0    p1    p2    p3    top-1  top-2
      0      0    0.70  0.10  0.15  0.05     0    {0, 2}   right, right
      1      0    0.20  0.50  0.10  0.20     1    {1, 0}   wrong, right (top-2)
      2      1    0.10  0.60  0.20  0.10     1    {1, 2}   right, right
      3      1    0.30  0.25  0.40  0.05     2    {2, 0}   wrong, wrong
      4      2    0.05  0.05  0.80  0.10     2    {2, 3}   right, right
      5      2    0.40  0.35  0.05  0.20     0    {0, 1}   wrong, wrong

top-1: 3/6 = 0.5; top-2: 4/6; per class: 0 -> 1/2, 1 -> 1/2, 2 -> 1/2, 3 -> no
image; mean per-class: (0.5 + 0.5 + 0.5) / 3 = 0.5 (not /4, and class 3 is not
counted as 0 or 1); loss: -mean(log(0.70, 0.20, 0.60, 0.25, 0.80, 0.05)).
"""
import math

import mxnet as mx
import numpy as np
import pytest

from common import evaluate
from common.cli import UserError

PROBS = np.array([[0.70, 0.10, 0.15, 0.05],
                  [0.20, 0.50, 0.10, 0.20],
                  [0.10, 0.60, 0.20, 0.10],
                  [0.30, 0.25, 0.40, 0.05],
                  [0.05, 0.05, 0.80, 0.10],
                  [0.40, 0.35, 0.05, 0.20]], dtype=np.float32)
LABELS = np.array([0, 0, 1, 1, 2, 2])
CLASSES = 4


def test_topk_correct_by_hand():
    assert evaluate.topk_correct(PROBS, LABELS, 1).tolist() == [True, False, True, False, True, False]
    assert evaluate.topk_correct(PROBS, LABELS, 2).tolist() == [True, True, True, False, True, False]
    assert evaluate.topk_correct(PROBS, LABELS, 4).all()
    assert evaluate.topk_correct(PROBS, LABELS, 9).all()  # k above the classes: every class counts


def test_per_class_accuracy_by_hand():
    counts, hits = evaluate.per_class_accuracy(PROBS, LABELS, CLASSES)
    assert counts.tolist() == [2, 2, 2, 0] and hits.tolist() == [1, 1, 1, 0]


def test_confusion_matrix_by_hand():
    # rows true, columns predicted: 0 -> {0, 1}; 1 -> {1, 2}; 2 -> {2, 0}
    assert evaluate.confusion_matrix(PROBS, LABELS, CLASSES).tolist() == [[1, 1, 0, 0],
                                                                         [0, 1, 1, 0],
                                                                         [1, 0, 1, 0],
                                                                         [0, 0, 0, 0]]


def test_summarize_by_hand_with_a_class_without_images():
    figures = evaluate.summarize(PROBS, LABELS, CLASSES, top_k=2)
    assert figures["acc"] == pytest.approx(0.5)
    assert figures["top2"] == pytest.approx(4 / 6)
    assert figures["mean_class_acc"] == pytest.approx(0.5)  # over the 3 classes with images
    expected_loss = -np.mean(np.log([0.70, 0.20, 0.60, 0.25, 0.80, 0.05]))
    assert figures["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert figures["images"] == 6


def test_mean_class_accuracy_weighs_classes_not_images():
    # Class 0: 4 images, all right; class 1: 1 image, wrong -> top-1 0.8, mean per-class 0.5.
    probs = np.array([[0.9, 0.1]] * 5, dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1])
    figures = evaluate.summarize(probs, labels, 3, top_k=1)  # class 2: no image
    assert figures["acc"] == pytest.approx(0.8) and figures["mean_class_acc"] == pytest.approx(0.5)


def test_loss_of_a_zero_probability_is_large_but_finite():
    probs = np.array([[1.0, 0.0]], dtype=np.float32)
    loss = evaluate.summarize(probs, np.array([1]), 2, top_k=1)["loss"]
    assert math.isfinite(loss) and loss == pytest.approx(-math.log(1e-12))


def test_check_top_k():
    evaluate.check_top_k(4, 4)
    with pytest.raises(UserError, match=r"--top-k 5 is more than the 4 classes; valid: 1\.\.4"):
        evaluate.check_top_k(5, 4)


# ---------------------------------------------------------------- the label-order check

class FakeModule:
    """Module.forward/get_outputs over batches whose data are the probabilities themselves."""

    def forward(self, batch, is_train=False):
        self.out = batch.data[0]

    def get_outputs(self):
        return [self.out]


def batches(probs, labels, batch_size):
    """An iterator's batches: the last one padded with repeats, as ImageRecordIter wraps."""
    total = -(-len(labels) // batch_size) * batch_size
    order = np.arange(total) % len(labels)
    for start in range(0, total, batch_size):
        rows = order[start:start + batch_size]
        yield mx.io.DataBatch(data=[mx.nd.array(probs[rows])], label=[mx.nd.array(labels[rows])], pad=0)


@pytest.mark.parametrize("batch_size", [1, 4, 6, 7])
def test_predict_probabilities_keeps_exactly_the_first_n(batch_size):
    probs, labels = evaluate.predict_probabilities(FakeModule(), batches(PROBS, LABELS, batch_size), LABELS)
    np.testing.assert_array_equal(probs, PROBS)
    assert labels.tolist() == LABELS.tolist()


def test_predict_probabilities_refuses_records_out_of_order():
    shuffled = LABELS[[0, 2, 1, 3, 4, 5]]  # what a shuffled iterator would hand out
    with pytest.raises(evaluate.OrderError, match="differ from the 6 records"):
        evaluate.predict_probabilities(FakeModule(), batches(PROBS, shuffled, 4), LABELS)


def test_predict_probabilities_refuses_too_few_images():
    with pytest.raises(evaluate.OrderError, match="gave 4 images"):
        evaluate.predict_probabilities(FakeModule(), batches(PROBS[:4], LABELS[:4], 4), LABELS)
