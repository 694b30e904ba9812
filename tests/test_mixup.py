"""--mixup ALPHA (common/train/mixup.py): soft labels into the plain SoftmaxOutput.

MXNet's own behaviour first (a (N, C) label is taken as probabilities, gradient p - label,
smooth_alpha not applied), then the batch mixing, then tiny runs (trainkit's 4 colour
classes, ResNet-20 from scratch): ALPHA 0 is no flag, the checkpoint is the plain one and
scores like validation, cached features are refused.
"""
import json

import mxnet as mx
import numpy as np
import pytest

import score
from common import cli
from common.train import mixup
from tests import trainkit
from tests.test_recipe import resolved, train

LOGITS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=np.float32)
SOFT = np.array([[0.2, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def softmax_gradient(label, smooth_alpha=0.0):
    """(output, d loss / d logits) of SoftmaxOutput on LOGITS with `label` (any shape it takes)."""
    net = mx.sym.SoftmaxOutput(mx.sym.Variable("data"), name="softmax", smooth_alpha=smooth_alpha)
    ex = net.simple_bind(mx.cpu(), data=LOGITS.shape, softmax_label=label.shape)
    ex.arg_dict["data"][:] = LOGITS
    ex.arg_dict["softmax_label"][:] = label
    ex.forward(is_train=True)
    ex.backward()
    return ex.outputs[0].asnumpy(), ex.grad_dict["data"].asnumpy()


def test_softmax_output_takes_probability_labels_with_gradient_p_minus_label():
    e = np.exp(LOGITS - LOGITS.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)  # by hand: [0.0900, 0.2447, 0.6652], [0.2119, 0.2119, 0.5761]
    out, grad = softmax_gradient(SOFT)
    np.testing.assert_allclose(out, p, atol=1e-6)
    np.testing.assert_allclose(grad, p - SOFT, atol=1e-6)
    np.testing.assert_allclose(grad[0], [0.0900 - 0.2, 0.2447 - 0.8, 0.6652], atol=1e-4)


def test_smooth_alpha_does_not_apply_to_probability_labels_so_mixup_smooths_them_itself():
    _, plain = softmax_gradient(SOFT)
    _, smoothed = softmax_gradient(SOFT, smooth_alpha=0.3)
    np.testing.assert_array_equal(plain, smoothed)  # MXNet ignores it here: mixup.soft_label must not
    # For one-hot labels, soft_label's smoothing is exactly smooth_alpha's target.
    _, by_index = softmax_gradient(np.array([1, 2], dtype=np.float32), smooth_alpha=0.3)
    hot = mixup.soft_label(np.eye(3, dtype=np.float32)[[1, 2]], 0.3, 3)
    np.testing.assert_allclose(hot.sum(axis=1), 1, atol=1e-6)
    _, by_soft = softmax_gradient(hot)
    np.testing.assert_allclose(by_soft, by_index, atol=1e-6)


def test_a_batch_is_mixed_with_its_permutation_against_soft_labels_reproducibly():
    mix = mixup.Mixup(0.4, 4, smoothing=0.1, seed=3)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (6, 3, 2, 2)).astype(np.float32), np.array([0, 1, 2, 3, 0, 1], dtype=np.float32)
    batch = mx.io.DataBatch(data=[mx.nd.array(x)], label=[mx.nd.array(y)], pad=1)
    mixed, [dominant] = mix(batch, epoch=2, nbatch=5)
    lam, perm = mix.draw(2, 5, 6)
    assert (lam, list(perm)) == (mix.draw(2, 5, 6)[0], list(mix.draw(2, 5, 6)[1]))  # the same draw again
    assert mix.draw(2, 6, 6)[0] != lam and mixup.Mixup(0.4, 4, seed=4).draw(2, 5, 6)[0] != lam
    np.testing.assert_allclose(mixed.data[0].asnumpy(), lam * x + (1 - lam) * x[perm], rtol=1e-5)
    hot = np.eye(4)[y.astype(int)]
    np.testing.assert_allclose(mixed.label[0].asnumpy(),
                               mixup.soft_label(lam * hot + (1 - lam) * hot[perm], 0.1, 4), atol=1e-6)
    np.testing.assert_array_equal(dominant.asnumpy(), y if lam >= 0.5 else y[perm])
    assert mixed.pad == 1


def test_cached_features_are_refused():
    # Bad --mixup values: test_recipe.BAD_VALUES.
    for argv in (["--cache-features"], ["--head", "logistic"]):
        with pytest.raises(cli.UserError) as error:
            args = resolved("--mode", "last-layer", "--mixup", "0.2", *argv)
            mixup.check_mixup_args(args.mixup, cache=args.cache_features or args.head != "fc")
        assert "--mixup 0.2" in str(error.value) and "--cache-features" in str(error.value)
    mixup.check_mixup_args(0.0, cache=True)  # off: nothing to refuse


# ---------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("mixup")))


def test_alpha_zero_is_bit_identical_to_no_flag(data_dir, tmp_path):
    train(data_dir, tmp_path / "plain" / "run", "--mode", "scratch", "--seed", "1")
    train(data_dir, tmp_path / "zero" / "run", "--mode", "scratch", "--seed", "1", "--mixup", "0")
    plain, zero = trainkit.params(tmp_path / "plain" / "run", 1), trainkit.params(tmp_path / "zero" / "run", 1)
    assert sorted(plain) == sorted(zero)
    for name in plain:
        np.testing.assert_array_equal(plain[name], zero[name], err_msg=name)


def test_a_mixup_run_saves_the_plain_symbol_scores_like_validation_and_records_alpha(data_dir, tmp_path, caplog):
    plain, mixed = tmp_path / "plain" / "run", tmp_path / "mixed" / "run"
    train(data_dir, plain, "--mode", "scratch", "--label-smoothing", "0.1")
    val, _ = train(data_dir, mixed, "--mode", "scratch", "--label-smoothing", "0.1", "--mixup", "0.4", epochs=2)
    assert "training accuracy and loss are against each mixed image's dominant label" in caplog.text
    assert open(f"{mixed}-symbol.json").read() == open(f"{plain}-symbol.json").read()
    with open(f"{mixed}-args.json") as f:
        assert json.load(f)["mixup"] == 0.4
    # The weights did train on something else than the plain run's batches.
    assert not np.allclose(trainkit.params(plain, 1)["arg:fc1_weight"], trainkit.params(mixed, 1)["arg:fc1_weight"])
    report = score.main(["--model-prefix", str(mixed), "--epoch", "2", "--batch-size", "8", "--data-nthreads", "1",
                         "--data-val", f"{data_dir}/caltech256-val.rec", "--out-dir", str(tmp_path / "score")])
    assert round(report["acc"], 6) == round(val["acc"], 6)
    assert report["loss"] == pytest.approx(val["loss"], abs=1e-4)
