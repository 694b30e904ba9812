"""--multi-scale MIN,MAX (common/train/multiscale.py): training batches at random input sizes.

The sizes and the draws first, then tiny runs (trainkit's 4 colour classes, ResNet-20
from scratch, 16 px, so sizes 8, 16, 24 for 0.5,1.5): training forwards see those sizes
and validation the bound one (also with --mixup, whose soft labels need the Module
reshaped back), the checkpoint scores like validation, 2 CPU contexts train, cached
features are refused, and a run stopped mid-epoch ends like an unbroken one.
"""
import json
import signal

import mxnet as mx
import numpy as np
import pytest

import score
from common import cli
from common.train import multiscale
from tests import trainkit
from tests.test_recipe import resolved, train
from tests.test_resume import command, run, stop_with


def test_sizes_are_multiples_of_the_step_within_the_range():
    assert multiscale.sizes((3, 16, 16), 0.5, 1.5) == [(8, 8), (16, 16), (24, 24)]
    assert multiscale.sizes((3, 224, 224), 0.75, 1.25) == [(h, h) for h in range(168, 281, 8)]
    # The width follows the height's factor, rounded to the step: 3:2 inputs stay about 3:2.
    assert multiscale.sizes((3, 32, 48), 0.75, 1.25) == [(24, 40), (32, 48), (40, 64)]
    assert multiscale.sizes((3, 16, 16), 1.1, 1.4) == []


def test_a_batch_is_resized_to_its_draw_reproducibly_and_keeps_labels_and_pad():
    scale = multiscale.MultiScale(multiscale.sizes((3, 16, 16), 0.5, 1.5), seed=3)
    draws = [scale.draw(2, b) for b in range(60)]
    assert draws == [scale.draw(2, b) for b in range(60)]  # a resumed run draws the same
    assert set(draws) == {(8, 8), (16, 16), (24, 24)}
    assert draws != [multiscale.MultiScale(scale.sizes, seed=4).draw(2, b) for b in range(60)]
    assert draws != [scale.draw(3, b) for b in range(60)]
    x = np.tile(np.arange(16, dtype=np.float32), (5, 3, 16, 1))  # a horizontal ramp
    label = mx.nd.array([0, 1, 2, 3, 0])
    batch = mx.io.DataBatch(data=[mx.nd.array(x)], label=[label], pad=2)
    for nbatch in range(6):
        out = scale(batch, 2, nbatch)
        height, width = scale.draw(2, nbatch)
        data = out.data[0].asnumpy()
        assert data.shape == (5, 3, height, width)
        assert out is batch if (height, width) == (16, 16) else out.provide_data[0].shape == data.shape
        assert out.pad == 2 and out.label[0] is label
        # Bilinear: the ramp stays a ramp from 0 to 15 along the width, the same on every row.
        np.testing.assert_allclose(data[:, :, :, 0], 0, atol=1e-4)
        np.testing.assert_allclose(data[:, :, :, -1], 15, atol=1e-4)
        assert np.all(np.diff(data, axis=3) >= -1e-4) and np.ptp(data, axis=2).max() < 1e-4


def test_cached_features_and_an_empty_range_are_refused():
    # Bad --multi-scale values: test_recipe.BAD_VALUES.
    for argv in (["--cache-features"], ["--head", "logistic"]):
        args = resolved("--mode", "last-layer", "--multi-scale", "0.5,1.5", *argv)
        with pytest.raises(cli.UserError) as error:
            multiscale.check_multiscale_args(args.multi_scale, args.image_shape,
                                             cache=args.cache_features or args.head != "fc")
        assert "--multi-scale 0.5,1.5" in str(error.value) and "--cache-features" in str(error.value)
    with pytest.raises(cli.UserError) as error:
        multiscale.check_multiscale_args((1.1, 1.4), (3, 16, 16), cache=False)
    assert "--multi-scale 1.1,1.4" in str(error.value) and "17.6 and 22.4" in str(error.value)
    assert multiscale.check_multiscale_args(None, (3, 16, 16), cache=True) is None  # off: nothing to refuse


# ---------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("multiscale")))


class ForwardShapes:
    """Records the data shape of every Module.forward, by is_train."""

    def __init__(self, monkeypatch):
        self.seen, original = {True: set(), False: set()}, mx.mod.Module.forward

        def forward(module, batch, is_train=None):
            self.seen[bool(module.for_training if is_train is None else is_train)].add(batch.data[0].shape[2:])
            return original(module, batch, is_train)
        monkeypatch.setattr(mx.mod.Module, "forward", forward)


@pytest.mark.parametrize("extra", [(), ("--mixup", "0.3"), ("--cpus", "2")], ids=["plain", "mixup", "cpus2"])
def test_training_sees_every_size_validation_the_bound_one_and_score_agrees(data_dir, tmp_path, monkeypatch,
                                                                            extra):
    shapes, prefix = ForwardShapes(monkeypatch), tmp_path / "run"
    val, _ = train(data_dir, prefix, "--mode", "scratch", "--multi-scale", "0.5,1.5", *extra, epochs=2)
    assert shapes.seen[True] == {(8, 8), (16, 16), (24, 24)}
    assert shapes.seen[False] == {(16, 16)}
    report = score.main(["--model-prefix", str(prefix), "--epoch", "2", "--batch-size", "8", "--data-nthreads", "1",
                         "--data-val", f"{data_dir}/caltech256-val.rec", "--out-dir", str(tmp_path / "score")])
    assert round(report["acc"], 6) == round(val["acc"], 6)
    assert report["loss"] == pytest.approx(val["loss"], abs=1e-4)


def test_the_same_symbol_other_weights_and_the_sizes_recorded(data_dir, tmp_path):
    plain, scaled = tmp_path / "plain" / "run", tmp_path / "scaled" / "run"
    train(data_dir, plain, "--mode", "scratch")
    train(data_dir, scaled, "--mode", "scratch", "--multi-scale", "0.5,1.5")
    assert open(f"{scaled}-symbol.json").read() == open(f"{plain}-symbol.json").read()
    assert not np.allclose(trainkit.params(plain, 1)["arg:fc1_weight"], trainkit.params(scaled, 1)["arg:fc1_weight"])
    with open(f"{scaled}-args.json") as f:
        recorded = json.load(f)
    assert recorded["multi_scale"] == [0.5, 1.5] and recorded["multi_scale_sizes"] == [[8, 8], [16, 16], [24, 24]]


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("multiscale-resume")), counts=(40,) * 4,
                                    train_per_class=30)


def test_stopped_mid_epoch_it_ends_like_an_unbroken_run(resume_data, tmp_path):
    extra = ("--multi-scale", "0.5,1.5", "--mixup", "0.3")
    unbroken, stopped = tmp_path / "unbroken" / "run", tmp_path / "stopped" / "run"
    assert run(command(resume_data, unbroken, *extra)).returncode == 0
    code, _, stderr = stop_with(command(resume_data, stopped, *extra), signal.SIGTERM, "Epoch[2] Batch [0-5]")
    assert code == 143, stderr
    result = run(command(resume_data, stopped, *extra))
    assert result.returncode == 0 and "resumed from checkpoint" in result.stderr, result.stderr
    trainkit.assert_same_run(stopped, unbroken, 3)
