"""--balanced-sampling: each epoch draws classes uniformly, then an image of the class.

On a deliberately imbalanced set (3 colour classes with 120 training images, 3
with 4: 30 to 1) plain shuffling all but ignores the small classes in two epochs,
and the balanced draw does not; the draw is seeded by the epoch, so a run stopped
and rerun ends exactly like an unbroken one.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from common.train import sampling
from tests import trainkit
from tools.imagegen import packed_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG, SMALL = 120, 4


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """A data folder whose training set has BIG images of classes 0-2 and SMALL of 3-5;
    10 validation images for every class."""
    root = tmp_path_factory.mktemp("imbalanced")
    return packed_dataset(str(root), [BIG] * 3 + [SMALL] * 3, resize=trainkit.RESIZE)


def train(data_dir, prefix, *extra, epochs=2):
    args = trainkit.train_args(data_dir, str(prefix), "--mode", "scratch", "--lr", "0.01", "--mom", "0.9",
                               "--wd", "1e-4", *extra, epochs=epochs)
    result = subprocess.run([sys.executable, os.path.join(REPO, "train_caltech.py"), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=180, env=dict(os.environ, **trainkit.REPEATABLE))
    assert result.returncode == 0, result.stderr
    return result


def mean_class_acc(result):
    return float(result.stdout.split("mean_class_acc=")[1].split()[0])


def test_the_draw_is_uniform_over_classes_seeded_and_within_each_class():
    labels = np.repeat([0, 1, 2, 3], [300, 300, 10, 1])
    drawn = sampling.balanced_draw(labels, seed=5, count=40000)
    per_class = np.bincount(labels[drawn], minlength=4) / len(drawn)
    np.testing.assert_allclose(per_class, 0.25, atol=0.01)
    small = drawn[labels[drawn] == 2]
    assert set(small) == set(np.flatnonzero(labels == 2))  # every image of a small class, repeated
    assert np.array_equal(sampling.balanced_draw(labels, 5), sampling.balanced_draw(labels, 5))
    assert not np.array_equal(sampling.balanced_draw(labels, 5), sampling.balanced_draw(labels, 6))
    assert len(sampling.balanced_draw(labels, 5)) == len(labels)


def test_balanced_sampling_lifts_the_small_classes(imbalanced, tmp_path):
    plain, balanced = [], []
    for seed in ("0", "1"):
        plain.append(mean_class_acc(train(imbalanced, tmp_path / f"plain{seed}" / "run", "--seed", seed)))
        run = train(imbalanced, tmp_path / f"bal{seed}" / "run", "--seed", seed, "--balanced-sampling")
        balanced.append(mean_class_acc(run))
        assert "class-balanced sampling: each epoch draws 372 images" in run.stderr
    # measured: plain 0.50 and 0.67, balanced 0.92 and 1.00
    assert np.mean(balanced) >= np.mean(plain) + 0.2, (plain, balanced)


def test_a_balanced_run_resumed_ends_like_an_unbroken_one(imbalanced, tmp_path):
    train(imbalanced, tmp_path / "unbroken" / "run", "--balanced-sampling", epochs=3)
    train(imbalanced, tmp_path / "resumed" / "run", "--balanced-sampling", epochs=1)
    again = train(imbalanced, tmp_path / "resumed" / "run", "--balanced-sampling", epochs=3)
    assert "resumed from checkpoint" in again.stderr
    trainkit.assert_same_run(tmp_path / "resumed" / "run", tmp_path / "unbroken" / "run", 3)
    # and the plain order of the same command is another run: refused, not mixed in
    other = subprocess.run([sys.executable, os.path.join(REPO, "train_caltech.py"),
                            *trainkit.train_args(imbalanced, str(tmp_path / "resumed" / "run"), "--mode", "scratch",
                                                 epochs=4)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "sampling: balanced there, None now" in other.stderr, other.stderr
