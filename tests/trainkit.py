"""Tiny datasets and checkpoints for the training, scoring and prediction tests.

Everything is small enough to train in seconds on two CPU cores: 16x16 images
of a few colour-coded classes (tools/imagegen.py), ResNet-20's small-input
layout, and checkpoints in the model zoo's format (tools/zoocheckpoint.py; no .sha256 files, as the zoo
publishes none).
"""
import json
import logging
import os
import types

import mxnet as mx
import numpy as np

import train_caltech
from common import checkpoint
from common.prep import main as prepare
from common.prep.imagefolder import read_lst
from common.report import read_metrics
from tools.imagegen import make_class_tree
from tools.zoocheckpoint import IMAGE_SHAPE, make_pretrained, random_params  # noqa: F401 (the tests' helpers)

# The model zoo's published ResNet-50 symbol file (see tests/fixtures/README.md).
ZOO_SYMBOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "resnet-50-symbol.json")
RESIZE = 18  # packed shorter side: leaves room for a random 16 px crop
# What bit-repeatable runs need in their environment (shared/MXNET_NOTES.md).
REPEATABLE = {"MXNET_ENGINE_TYPE": "NaiveEngine", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
TIMING = {"images_per_sec", "seconds"}  # the metrics.jsonl columns two equal runs may differ in


def prepare_dataset(root, counts=(12, 12, 12, 12), train_per_class=8, seed=0):
    """Generate class folders under root/src and pack them into root/data.

    Returns the data folder (caltech256-classes.txt, -summary.json, -train/val.rec/.idx/.lst).
    """
    src, out = os.path.join(root, "src"), os.path.join(root, "data")
    make_class_tree(src, list(counts), seed=seed, min_side=18, max_side=30)
    prepare.main(["--src", src, "--out", out, "--train-per-class", str(train_per_class),
                  "--resize", str(RESIZE), "--num-thread", "1", "--prefix", "caltech256"])
    return out


def train_args(data_dir, model_prefix, *extra, epochs=2):
    """train_caltech.py arguments for a tiny run on CPU (every epoch's checkpoint kept)."""
    return ["--data-dir", data_dir, "--model-prefix", model_prefix, "--network", "resnet-20",
            "--image-shape", ",".join(map(str, IMAGE_SHAPE)), "--num-epochs", str(epochs),
            "--batch-size", "8", "--cpus", "1", "--top-k", "2", "--data-nthreads", "1",
            "--disp-batches", "100", "--keep", "100", *extra]


# ---------------------------------------------------------------- comparing runs

def params(prefix, epoch):
    """{name: numpy array} of a run's PREFIX-EPOCH.params."""
    arrays = mx.nd.load(checkpoint.params_path(str(prefix), epoch))
    return {k: v.asnumpy() for k, v in arrays.items()}


def metrics(prefix):
    """The records of PREFIX-metrics.jsonl, one per epoch."""
    with open(f"{prefix}-metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def assert_same_run(prefix, reference, epoch):
    """Epoch `epoch`'s parameters within 1e-5 and the same metrics (timing aside) as the reference."""
    ours, theirs = params(prefix, epoch), params(reference, epoch)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5, rtol=0, err_msg=name)
    strip = lambda p: [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(p)]  # noqa: E731
    assert strip(prefix) == strip(reference)


def committed(prefix):
    """The epochs whose checkpoint is committed (its manifest verifies), in order."""
    return sorted(checkpoint.committed_epochs(str(prefix)))


def manifests(prefix):
    """{epoch: the bytes of its manifest} of every committed epoch: a committed epoch trained
    again would get a new manifest (a new time)."""
    return {e: open(checkpoint.manifest_path(str(prefix), e), "rb").read() for e in committed(prefix)}


def trained_run(root, epochs=4):
    """Train ResNet-20 from scratch on prepare_dataset's 4 classes for `epochs` in root.

    Returns root, data_dir, prefix (model/net, one checkpoint per epoch), metrics,
    val [(label, original image file)] in .lst order, classes, src, val_rec.
    """
    data_dir = prepare_dataset(str(root))
    prefix = os.path.join(str(root), "model", "net")
    handlers = list(logging.getLogger().handlers)
    # lr 0.1 without momentum: val accuracy 0.25, 0.5, 1.0, 1.0 here, deterministically
    train_caltech.main(train_args(data_dir, prefix, "--mode", "scratch", "--lr", "0.1", epochs=epochs))
    for handler in set(logging.getLogger().handlers) - set(handlers):  # the run's log file
        logging.getLogger().removeHandler(handler)
        handler.close()
    metrics = read_metrics(prefix + "-metrics.jsonl")
    assert len(metrics) == epochs
    # chance is 1/4: the checks on rankings mean something only if it learned
    assert metrics[-1]["val_acc"] > 0.5, metrics
    val = [(int(label), os.path.join(str(root), "src", rel))
           for _, label, rel in read_lst(os.path.join(data_dir, "caltech256-val.lst"))]
    with open(os.path.join(data_dir, "caltech256-classes.txt"), encoding="utf-8") as f:
        classes = f.read().split()
    return types.SimpleNamespace(root=root, data_dir=data_dir, prefix=prefix, metrics=metrics,
                                 val=val, classes=classes, src=os.path.join(str(root), "src"),
                                 val_rec=os.path.join(data_dir, "caltech256-val.rec"))
