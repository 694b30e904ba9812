"""--ema DECAY (common/train/ema.py): averaged weights validated and saved, raw ones for resume.

The average against its closed form on a toy, then tiny runs (trainkit's 4 colour classes,
ResNet-20 from scratch): the checkpoint holds the averages and score.py reads them, 2 CPU
contexts, and a run stopped mid-epoch (with --mixup too) resumes exactly.
"""
import os
import signal

import mxnet as mx
import numpy as np
import pytest

import score
from common import checkpoint, cli
from common.train import ema as averaging
from tests import trainkit
from tests.test_recipe import train
from tests.test_resume import command, run, stop_with

DECAY = 0.8


def toy_module():
    """A FullyConnected(2) + SoftmaxOutput on 3 inputs, its bias frozen, SGD lr 0.5."""
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=2, name="fc"),
                               name="softmax")
    module = mx.mod.Module(net, context=mx.cpu(), fixed_param_names=["fc_bias"])
    module.bind(data_shapes=[("data", (4, 3))], label_shapes=[("softmax_label", (4,))])
    module.init_params(mx.init.Uniform(1.0))
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.5})
    return module


def test_the_average_after_k_updates_is_the_closed_form_and_a_frozen_array_stays_exact():
    module = toy_module()
    ema = averaging.EMA(module, DECAY)
    rng = np.random.default_rng(0)
    seen = [module.get_params()[0]["fc_weight"].asnumpy()]
    bias = module.get_params()[0]["fc_bias"].asnumpy()
    for _ in range(5):
        module.forward_backward(mx.io.DataBatch(data=[mx.nd.array(rng.normal(size=(4, 3)))],
                                                label=[mx.nd.array(rng.integers(0, 2, 4))]))
        module.update()
        ema.update()
        seen.append(module.get_params()[0]["fc_weight"].asnumpy())
    k = len(seen) - 1  # ema_k = d^k w_0 + (1 - d) sum_{i=1..k} d^(k-i) w_i
    closed = DECAY ** k * seen[0] + (1 - DECAY) * sum(DECAY ** (k - i) * seen[i] for i in range(1, k + 1))
    np.testing.assert_allclose(ema.values["fc_weight"].asnumpy(), closed, rtol=1e-5, atol=1e-6)
    assert not np.allclose(closed, seen[-1])  # the average is not the last weights
    assert "fc_bias" not in ema.values  # frozen: never averaged, so saved exactly as it is
    args, _ = ema.merged(*module.get_params())
    np.testing.assert_array_equal(args["fc_bias"].asnumpy(), bias)
    np.testing.assert_allclose(args["fc_weight"].asnumpy(), closed, rtol=1e-5, atol=1e-6)


def test_an_unchanged_array_keeps_its_exact_value():
    module = toy_module()
    ema = averaging.EMA(module, 0.3)
    before = ema.values["fc_weight"].asnumpy().copy()
    for _ in range(3):
        ema.update()  # no training step in between: w - ema is exactly 0
    np.testing.assert_array_equal(ema.values["fc_weight"].asnumpy(), before)


def test_dist_and_fitted_heads_are_refused():
    # Bad --ema values: test_recipe.BAD_VALUES.
    for kwargs, words in (({"kv_store": "dist_sync", "head": "fc"}, "--kv-store dist_sync"),
                          ({"kv_store": "device", "head": "svm"}, "--head svm")):
        with pytest.raises(cli.UserError) as error:
            averaging.check_ema_args(0.9, **kwargs)
        assert "--ema 0.9" in str(error.value) and words in str(error.value)
    averaging.check_ema_args(0.0, kv_store="dist_sync", head="svm")  # off: nothing to refuse


# ---------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("ema")))


@pytest.mark.parametrize("cpus", ["1", "2"])
def test_the_checkpoint_holds_the_averages_and_score_reads_them_as_validation_did(data_dir, tmp_path, cpus):
    prefix = tmp_path / "run"
    val, _ = train(data_dir, prefix, "--mode", "scratch", "--lr", "0.1", "--ema", "0.9", "--cpus", cpus, epochs=2)
    manifest = checkpoint.read_manifest(str(prefix), 2)  # verifies every file it lists, the raw one too
    assert os.path.basename(checkpoint.raw_params_path(str(prefix), 2)) in manifest["files"]
    averaged, raw = trainkit.params(prefix, 2), mx.nd.load(checkpoint.raw_params_path(str(prefix), 2))
    assert sorted(averaged) == sorted(raw)
    assert not np.allclose(averaged["arg:fc1_weight"], raw["arg:fc1_weight"].asnumpy())
    assert not np.allclose(averaged["aux:bn_data_moving_mean"], raw["aux:bn_data_moving_mean"].asnumpy())
    # score.py (no training code) reads PREFIX-0002.params: validation's figures, so validation used the averages.
    report = score.main(["--model-prefix", str(prefix), "--epoch", "2", "--batch-size", "8", "--data-nthreads", "1",
                         "--data-val", f"{data_dir}/caltech256-val.rec", "--out-dir", str(tmp_path / "score")])
    assert round(report["acc"], 6) == round(val["acc"], 6)
    assert report["loss"] == pytest.approx(val["loss"], abs=1e-4)
    assert manifest["val"]["loss"] == pytest.approx(report["loss"], abs=1e-4)


EXTRA = ("--ema", "0.9", "--mixup", "0.3")


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("ema-resume")), counts=(40,) * 4, train_per_class=30)


def test_stopped_mid_epoch_or_extended_it_ends_like_an_unbroken_run_raw_and_averaged(resume_data, tmp_path):
    unbroken = tmp_path / "unbroken" / "run"
    assert run(command(resume_data, unbroken, *EXTRA)).returncode == 0
    stopped = tmp_path / "stopped" / "run"
    code, _, stderr = stop_with(command(resume_data, stopped, *EXTRA), signal.SIGTERM, "Epoch[2] Batch [0-5]")
    assert code == 143, stderr
    mid = checkpoint.read_manifest(str(stopped), checkpoint.RESUME)
    assert os.path.basename(checkpoint.raw_params_path(str(stopped), checkpoint.RESUME)) in mid["files"]
    extended = tmp_path / "extended" / "run"
    assert run(command(resume_data, extended, *EXTRA, epochs=2)).returncode == 0
    for prefix in (stopped, extended):
        result = run(command(resume_data, prefix, *EXTRA))
        assert result.returncode == 0 and "resumed from checkpoint" in result.stderr, result.stderr
        trainkit.assert_same_run(prefix, unbroken, 3)  # the averages, PREFIX-0003.params
        raw = mx.nd.load(checkpoint.raw_params_path(str(prefix), 3))
        reference = mx.nd.load(checkpoint.raw_params_path(str(unbroken), 3))
        for name in reference:
            np.testing.assert_allclose(raw[name].asnumpy(), reference[name].asnumpy(), atol=1e-5, rtol=0,
                                       err_msg=name)
