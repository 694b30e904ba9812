"""--hard-mining FRACTION: after each epoch the highest-loss training images are seen twice
in the next one, the epoch staying N images; resumed runs replay the same order.

Runs are train_caltech.py subprocesses on the 4-colour task of tests/test_resume.py
(30 training images a class, 15 batches an epoch) with the bit-repeatable engine
settings; an interrupted run must end with the parameters and metrics of an
unbroken one. What mining does to accuracy is measured by bench/bench_mining.py.
"""
import os
import signal
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import train_caltech
from common import checkpoint, cli, evaluate, records
from common.train import mining, sampling
from tests import trainkit
from tests.test_resume import stop_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "train_caltech.py")
EPOCHS = 3
FRACTION = "0.2"  # 24 of the 120 training images
ARGS = ["--mode", "scratch", "--lr", "0.01", "--mom", "0.9", "--wd", "1e-4", "--disp-batches", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("mining-data")), counts=(40,) * 4,
                                    train_per_class=30)


def command(data_dir, prefix, *extra, epochs=EPOCHS, mining_flag=True):
    flags = ["--hard-mining", FRACTION] if mining_flag else []
    return [sys.executable, SCRIPT, *trainkit.train_args(data_dir, str(prefix), *ARGS, *flags, *extra, epochs=epochs)]


def run(cmd, status=0):
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, **trainkit.REPEATABLE))
    assert result.returncode == status, result.stderr
    return result




@pytest.fixture(scope="module")
def unbroken(data_dir, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("mining-unbroken") / "run"
    return prefix, run(command(data_dir, prefix))


# ---------------------------------------------------------------- the pieces

def test_the_hard_set_is_the_top_fraction_ties_to_the_earlier_image_at_most_half():
    losses = np.array([0.1, 2.0, 0.5, 2.0, 3.0, 0.2, 0.0, 1.0, 2.0, 0.3], dtype=np.float32)
    positions, threshold = mining.pick_hard(losses, 0.3)
    assert positions.tolist() == [1, 3, 4] and threshold == 2.0  # 8 ties with 1 and 3 but comes later
    assert mining.pick_hard(losses, 0.01)[0].tolist() == [4]  # at least one
    assert len(mining.pick_hard(losses[:5], 0.5)[0]) == 2  # 5 // 2: each takes another's place
    assert mining.pick_hard(losses[:1], 0.5)[0].tolist() == []


def test_an_epoch_shows_each_hard_image_twice_and_stays_n_images():
    hard = [3, 7, 11]
    order = sampling.hard_order(20, hard, seed=4)
    counts = np.bincount(order, minlength=20)
    assert len(order) == 20 and (counts[hard] == 2).all()
    others = np.delete(counts, hard)
    assert (others <= 1).all() and (others == 0).sum() == len(hard)  # as many sit out
    assert np.array_equal(order, sampling.hard_order(20, hard, seed=4))
    sat_out = {tuple(np.flatnonzero(np.bincount(sampling.hard_order(20, hard, s), minlength=20) == 0))
               for s in range(5)}
    assert len(sat_out) > 1  # different ones each epoch


def test_an_epoch_part_holds_the_hard_records_twice(data_dir, tmp_path):
    train = records.check_record_set(os.path.join(data_dir, "caltech256-train.rec"), 4)
    with sampling.EpochParts(train) as parts:
        assert parts.epoch(seed=1) is train  # no hard set: the set as it is
        part = parts.epoch(seed=1, hard=[0, 5, 40])
        keys = records.read_keys(part.idx)
        all_keys = records.read_keys(train.idx)
        assert len(part) == len(train)
        assert [int((keys == all_keys[p]).sum()) for p in (0, 5, 40)] == [2, 2, 2]
        assert np.array_equal(part.labels, records.read_labels(part.rec, part.idx))


# ---------------------------------------------------------------- a run

def losses_of(prefix, epoch, data_dir):
    """Each training image's loss under checkpoint `epoch`, computed here from its files."""
    symbol, args, aux = mx.model.load_checkpoint(str(prefix), epoch)
    module = mx.mod.Module(symbol, context=mx.cpu())
    module.bind(data_shapes=[("data", (8,) + trainkit.IMAGE_SHAPE)], label_shapes=[("softmax_label", (8,))],
                for_training=False)
    module.set_params(args, aux)
    train = records.check_record_set(os.path.join(data_dir, "caltech256-train.rec"), 4)
    from common.transforms import record_iter
    probs, labels = evaluate.predict_probabilities(
        module, record_iter(train, image_shape=trainkit.IMAGE_SHAPE, batch_size=8, train=False, threads=1),
        train.labels)
    return -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))


def test_each_manifest_records_the_top_loss_images_of_its_parameters(data_dir, unbroken):
    prefix, result = unbroken
    for epoch in (1, 2):
        recorded = checkpoint.read_manifest(str(prefix), epoch)["hard_mining"]
        losses = losses_of(prefix, epoch, data_dir)
        top = np.sort(np.argsort(-losses, kind="stable")[:24])
        assert recorded["epoch"] == epoch + 1 and recorded["positions"] == top.tolist()
        assert recorded["threshold"] == pytest.approx(losses[top].min(), abs=1e-5)
        assert f"hard mining for epoch {epoch + 1}: the 24 of 120 training images with loss >= " \
               f"{recorded['threshold']:.4f}" in result.stderr
    assert "hard_mining" not in checkpoint.read_manifest(str(prefix), EPOCHS)  # nothing after the last


def test_a_run_extended_stopped_mid_epoch_or_reloaded_ends_like_an_unbroken_one(data_dir, unbroken, tmp_path):
    reference = unbroken[0]
    # 2 epochs, then 3: epoch 2's checkpoint (the last of its run) records no hard set: mined on resume
    extended = tmp_path / "extended" / "run"
    run(command(data_dir, extended, epochs=2))
    again = run(command(data_dir, extended))
    assert "hard mining for epoch 3" in again.stderr
    trainkit.assert_same_run(extended, reference, EPOCHS)
    # --load-epoch 1: epoch 2's hard set read from epoch 1's manifest
    reloaded = run(command(data_dir, extended, "--load-epoch", "1"))
    assert "epoch 2's hard set (24 images) from the checkpoint" in reloaded.stderr
    trainkit.assert_same_run(extended, reference, EPOCHS)
    # SIGTERM in epoch 2: the mid-epoch manifest carries epoch 2's hard set
    stopped = tmp_path / "stopped" / "run"
    code, _, stderr = stop_with(command(data_dir, stopped), signal.SIGTERM, "Epoch[2] Batch [0-5]")
    assert code == 143, stderr
    mid = checkpoint.read_manifest(str(stopped), checkpoint.RESUME)
    assert mid["epoch"] == 2 and mid["hard_mining"] == checkpoint.read_manifest(str(stopped), 1)["hard_mining"]
    resumed = run(command(data_dir, stopped))
    assert "(after batch" in resumed.stderr and "hard mining for epoch 2" not in resumed.stderr
    trainkit.assert_same_run(stopped, reference, EPOCHS)


def test_another_fraction_or_the_plain_order_is_another_run(data_dir, unbroken):
    prefix, _ = unbroken
    plain = run(command(data_dir, prefix, mining_flag=False, epochs=4), status=1)
    assert "sampling: hard-mining 0.2 there, None now" in plain.stderr, plain.stderr


# ---------------------------------------------------------------- misuse (in this process: fast)

def entry(argv, capsys):
    """(exit status, stderr lines) of train_caltech.py with `argv`, run here."""
    try:
        status = cli.run_entry(train_caltech.main, "train_caltech.py", argv)
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("value", ["0", "0.7", "-1", "abc"])
def test_a_fraction_outside_its_range_is_one_line(data_dir, tmp_path, value, capsys, entry_state):
    status, lines = entry(trainkit.train_args(data_dir, str(tmp_path / "run"), "--hard-mining", value), capsys)
    assert status == 2 and lines == [
        f"train_caltech.py: error: argument --hard-mining: expected a number > 0 and <= 0.5, got "
        f"{value if value != 'abc' else repr(value)} (see --help)"]


@pytest.mark.parametrize("extra,named", [
    (["--balanced-sampling"], "--hard-mining and --balanced-sampling cannot be combined"),
    (["--kv-store", "dist_sync"], "--hard-mining scores the whole training set in one process: use --kv-store "
                                  "device or local (--kv-store dist_sync was given)"),
    (["--mode", "last-layer", "--cache-features"], "--hard-mining needs the training images, not cached features"),
], ids=["balanced", "dist", "cached"])
def test_what_it_does_not_combine_with_is_refused_in_one_line(data_dir, tmp_path, extra, named, capsys,
                                                               entry_state):
    argv = trainkit.train_args(data_dir, str(tmp_path / "run"), *ARGS, "--hard-mining", FRACTION, *extra)
    status, lines = entry(argv, capsys)
    assert status == 1 and len(lines) == 1 and named in lines[0], lines
    assert not (tmp_path / "run-args.json").exists()
