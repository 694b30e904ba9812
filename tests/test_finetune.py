"""Head surgery (common/finetune.py) and the fine-tuning modes (common/model.py).

The contract: the pretrained network is cut at a named layer and gets a new head
under an unused name; every other parameter comes from the checkpoint, matched by
exact name and shape, or the run stops with a UserError. Checked against the model
zoo's own ResNet-50 symbol (legacy MXNet 0.8 JSON, tests/fixtures) with random
weights, and against small hand-made checkpoints. CPU only, small inputs.
"""
import collections
import json
import logging
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint
from common.train import loop, modes as model, resume, schedule, surgery as finetune
from common.cli import UserError
from tests import trainkit

ZOO_SYMBOL = Path(trainkit.ZOO_SYMBOL)
# Parameter shapes do not depend on the input size (global pool before the head),
# and 64 px keeps a ResNet-50 forward/backward well under a second on 2 cores.
ZOO_SHAPE = (3, 64, 64)
SMALL_SHAPE = trainkit.IMAGE_SHAPE  # (3, 16, 16): ResNet-20's small-input layout
NUM_CLASSES = 7
INPUTS = ("data", "softmax_label")
HEAD = ["fc_new_weight", "fc_new_bias"]

Checkpoint = collections.namedtuple("Checkpoint", "prefix symbol args aux")


def bit_equal(a, b):
    """Same dtype, shape and bytes (NaN-safe, unlike ==)."""
    a, b = a.asnumpy(), b.asnumpy()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def not_bit_equal(arrays, reference):
    return sorted(name for name in reference if not bit_equal(arrays[name], reference[name]))


def backbone_args(symbol, head=HEAD):
    return set(symbol.list_arguments()) - set(INPUTS) - set(head)


def build(prefix, image_shape, mode="full", network="resnet-20", **kwargs):
    return model.build_model(mode=mode, network=network, num_classes=NUM_CLASSES,
                             image_shape=image_shape, pretrained=prefix, pretrained_epoch=0,
                             model_dir=str(Path(prefix).parent / "zoo-cache"), **kwargs)


def bound_module(net, image_shape, batch_size=2, contexts=None):
    """The Module the trainer builds, with its parameters set the trainer's way."""
    cfg = loop.RunConfig(prefix="unused", batch_size=batch_size, image_shape=image_shape, data_threads=1,
                         top_k=1, disp_batches=1, seed=0)
    module = loop.bind(net, contexts or [mx.cpu()], cfg)
    loop.start_params(module, net, cfg, resume.Start())
    return module


def random_batch(image_shape, batch_size=2, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, size=(batch_size,) + tuple(image_shape))
    labels = rng.integers(0, NUM_CLASSES, size=batch_size)
    return mx.io.DataBatch(data=[mx.nd.array(pixels)], label=[mx.nd.array(labels)])


def save_zoo_format(prefix, symbol, args, aux):
    """As the zoo published checkpoints: mx.model.save_checkpoint, no .sha256 files."""
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, symbol, args, aux)
    return prefix


# ---------------------------------------------------------------- the zoo's ResNet-50

@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory):
    """The fixture symbol saved with random weights of its own inferred shapes."""
    if not ZOO_SYMBOL.is_file():
        pytest.fail(f"zoo symbol fixture not found at {ZOO_SYMBOL}")
    symbol = mx.sym.load(str(ZOO_SYMBOL))
    args, aux = trainkit.random_params(symbol, ZOO_SHAPE, seed=1)
    prefix = str(tmp_path_factory.mktemp("zoo") / "imagenet11k-place365ch-resnet-50")
    save_zoo_format(prefix, symbol, args, aux)
    return Checkpoint(prefix, symbol, args, aux)


@pytest.fixture(scope="module")
def zoo_model(zoo_checkpoint):
    return build(zoo_checkpoint.prefix, ZOO_SHAPE, network="resnet-50")


def test_zoo_checkpoint_only_the_new_head_is_fresh(zoo_model, zoo_checkpoint):
    assert zoo_model.fresh == HEAD
    assert set(HEAD) <= set(zoo_model.symbol.list_arguments())
    assert not set(HEAD) & set(zoo_checkpoint.args), "head names must be unused by the checkpoint"
    # full mode: everything trains but bn_data's gamma, which its BatchNorm ignores
    # (fix_gamma) and which weight decay must therefore not touch
    assert zoo_model.fixed == ["bn_data_gamma"]


def test_zoo_checkpoint_every_backbone_parameter_loaded_bit_exact(zoo_model, zoo_checkpoint):
    symbol = zoo_model.symbol
    # Every parameter of the new symbol except the head is loaded: nothing is left
    # for an initializer to fill in silently.
    assert set(zoo_model.arg_params) == backbone_args(symbol)
    assert set(zoo_model.aux_params) == set(symbol.list_auxiliary_states())
    assert len(zoo_model.arg_params) == len(zoo_checkpoint.args) - 2  # all but fc1's two
    # ...and each equals what was written to the file, bit for bit.
    assert not not_bit_equal(zoo_model.arg_params, {n: zoo_checkpoint.args[n] for n in zoo_model.arg_params})
    assert not not_bit_equal(zoo_model.aux_params, zoo_checkpoint.aux)


def test_zoo_checkpoint_old_head_is_dropped_and_reported(zoo_checkpoint, caplog):
    _, args, aux = checkpoint.load_checkpoint(zoo_checkpoint.prefix, 0)
    surgery = finetune.build(zoo_checkpoint.symbol, args, aux, NUM_CLASSES, "flatten0",
                             (1,) + ZOO_SHAPE)
    assert surgery.dropped == ["fc1_bias", "fc1_weight"]
    assert not {"fc1_weight", "fc1_bias"} & set(surgery.symbol.list_arguments())
    # The run's log says so (that is how a user sees what was not used).
    with caplog.at_level(logging.INFO, logger="common.train.surgery"):
        finetune.log_surgery(surgery)
    assert any("fc1_bias" in r.getMessage() and "fc1_weight" in r.getMessage()
               for r in caplog.records)


def test_zoo_checkpoint_module_starts_from_the_checkpoint(zoo_model, zoo_checkpoint):
    module = bound_module(zoo_model, ZOO_SHAPE)
    args, aux = module.get_params()
    assert not not_bit_equal(args, {n: zoo_checkpoint.args[n] for n in zoo_model.arg_params})
    assert not not_bit_equal(aux, zoo_checkpoint.aux)
    # get_params() can return host-side copies; the executor's arrays are what runs.
    executor = module._exec_group.execs[0]
    assert not not_bit_equal(executor.arg_dict, {n: zoo_checkpoint.args[n] for n in zoo_model.arg_params})
    assert not not_bit_equal(executor.aux_dict, zoo_checkpoint.aux)
    # The head was initialized (Xavier), not left at zero.
    assert np.abs(args["fc_new_weight"].asnumpy()).sum() > 0


def test_zoo_checkpoint_fine_tunes(zoo_model, zoo_checkpoint):
    module = bound_module(zoo_model, ZOO_SHAPE)
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01})
    head_before = module.get_params()[0]["fc_new_weight"].copy()
    batch = random_batch(ZOO_SHAPE)
    module.forward_backward(batch)
    module.update()
    probs = module.get_outputs()[0].asnumpy()
    assert probs.shape == (2, NUM_CLASSES)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    args, _ = module.get_params()
    assert np.isfinite(args["conv0_weight"].asnumpy()).all()
    # Full mode: both the head and the backbone moved.
    assert not bit_equal(args["fc_new_weight"], head_before)
    assert not bit_equal(args["stage4_unit3_conv3_weight"], zoo_checkpoint.args["stage4_unit3_conv3_weight"])
    # A second step still gives finite outputs (the update did not blow up).
    module.forward(batch, is_train=False)
    assert np.isfinite(module.get_outputs()[0].asnumpy()).all()


# ---------------------------------------------------------------- small checkpoints

@pytest.fixture
def small(tmp_path):
    """A ResNet-20 zoo-format checkpoint (fc1 + softmax head, random weights)."""
    prefix, symbol, args, aux = trainkit.make_pretrained(str(tmp_path / "ckpt" / "small"),
                                                         num_classes=5, seed=2)
    return Checkpoint(prefix, symbol, args, aux)


def rewrite(ckpt, tmp_path, args=None, aux=None):
    """The same symbol saved with other arrays, under a new prefix."""
    return save_zoo_format(str(tmp_path / "edited" / "small"), ckpt.symbol,
                           ckpt.args if args is None else args, ckpt.aux if aux is None else aux)


@pytest.mark.parametrize("kind, name", [("arg", "stage2_unit1_conv1_weight"),
                                        ("aux", "bn1_moving_var")])
def test_missing_backbone_parameter_is_an_error(small, tmp_path, kind, name):
    args = dict(small.args)
    aux = dict(small.aux)
    del (args if kind == "arg" else aux)[name]
    with pytest.raises(UserError) as error:
        build(rewrite(small, tmp_path, args, aux), SMALL_SHAPE)
    assert name in str(error.value)
    assert "missing" in str(error.value)


def test_wrong_shape_is_an_error_naming_both_shapes(small, tmp_path):
    args = dict(small.args, conv0_weight=mx.nd.zeros((16, 3, 5, 5)))
    assert small.args["conv0_weight"].shape == (16, 3, 3, 3)
    with pytest.raises(UserError) as error:
        build(rewrite(small, tmp_path, args), SMALL_SHAPE)
    message = str(error.value)
    assert "conv0_weight" in message
    assert "(16, 3, 5, 5)" in message and "(16, 3, 3, 3)" in message


def test_unknown_cut_layer_lists_candidates_nearest_the_head_first(small):
    with pytest.raises(UserError) as error:
        build(small.prefix, SMALL_SHAPE, layer="flaten0")
    message = str(error.value)
    assert "flaten0" in message
    candidates = [c for c in message.split("first: ", 1)[1].split(", ") if c != "..."]
    assert "flatten0" in candidates
    # Nearest the head first: later in the graph's topological order comes earlier.
    order = small.symbol.get_internals().list_outputs()
    positions = [order.index(f"{c}_output") for c in candidates]
    assert positions == sorted(positions, reverse=True), candidates


@pytest.mark.parametrize("layer", ["relu1", "pool1", "pool1_output"])
def test_cut_at_another_layer_sizes_the_head_to_it(small, layer):
    net = build(small.prefix, SMALL_SHAPE, layer=layer)
    name = layer if layer.endswith("_output") else f"{layer}_output"
    _, (features,), _ = small.symbol.get_internals()[name].infer_shape(data=(1,) + SMALL_SHAPE)
    arg_shapes, out_shapes, _ = net.symbol.infer_shape(data=(1,) + SMALL_SHAPE)
    shapes = dict(zip(net.symbol.list_arguments(), arg_shapes))
    # FullyConnected flattens its input: relu1 gives 64x4x4 inputs, pool1 64.
    assert shapes["fc_new_weight"] == (NUM_CLASSES, int(np.prod(features[1:])))
    assert out_shapes == [(1, NUM_CLASSES)]
    assert set(net.arg_params) == backbone_args(net.symbol)
    assert "bn1_gamma" in net.arg_params  # the layers before the cut stay loaded


def test_refine_tuning_our_checkpoint_renames_the_head(small, tmp_path):
    # Our own fine-tuned checkpoint already has fc_new_*: fine-tune it again.
    surgery = finetune.build(small.symbol, small.args, small.aux, 5, "flatten0", (1,) + SMALL_SHAPE)
    old_head = {"fc_new_weight": mx.nd.full((5, 64), 0.5), "fc_new_bias": mx.nd.full((5,), 0.25)}
    prefix = str(tmp_path / "finetuned" / "run")
    checkpoint.save_checkpoint(prefix, 0, surgery.symbol, dict(surgery.loaded_args, **old_head),
                               surgery.loaded_aux)
    net = build(prefix, SMALL_SHAPE)
    assert net.fresh == ["fc_new1_weight", "fc_new1_bias"]
    arguments = net.symbol.list_arguments()
    assert "fc_new1_weight" in arguments
    # The old head is dropped, not copied into the new one or kept in the graph.
    assert not set(old_head) & set(arguments)
    assert not set(old_head) & set(net.arg_params)
    assert set(net.arg_params) == backbone_args(net.symbol, net.fresh)

    _, args, aux = checkpoint.load_checkpoint(prefix, 0)
    again = finetune.build(surgery.symbol, args, aux, NUM_CLASSES, "flatten0", (1,) + SMALL_SHAPE)
    assert again.dropped == ["fc_new_bias", "fc_new_weight"]


def fc_named_backbone():
    """A tiny net whose backbone layers have 'fc' in their names; only fc1 is the head."""
    net = mx.sym.Convolution(mx.sym.Variable("data"), num_filter=4, kernel=(3, 3), pad=(1, 1),
                             name="fc_like_conv")
    net = mx.sym.BatchNorm(net, name="fc_bn")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Pooling(net, kernel=(1, 1), global_pool=True, pool_type="avg", name="pool1")
    net = mx.sym.Flatten(net, name="flatten0")
    net = mx.sym.FullyConnected(net, num_hidden=3, name="fc1")
    return mx.sym.SoftmaxOutput(net, name="softmax")


def test_fc_in_a_backbone_name_does_not_drop_it(tmp_path):
    # MXNet's example dropped every parameter whose name contained 'fc'.
    symbol, shape = fc_named_backbone(), (3, 8, 8)
    args, aux = trainkit.random_params(symbol, shape, seed=3)
    prefix = save_zoo_format(str(tmp_path / "fcnet" / "fcnet"), symbol, args, aux)
    net = build(prefix, shape)
    assert set(net.arg_params) == {"fc_like_conv_weight", "fc_like_conv_bias", "fc_bn_gamma", "fc_bn_beta"}
    assert set(net.aux_params) == {"fc_bn_moving_mean", "fc_bn_moving_var"}
    assert not not_bit_equal(net.arg_params, {n: args[n] for n in net.arg_params})
    assert not not_bit_equal(net.aux_params, aux)
    _, loaded_args, loaded_aux = checkpoint.load_checkpoint(prefix, 0)
    surgery = finetune.build(symbol, loaded_args, loaded_aux, NUM_CLASSES, "flatten0", (1,) + shape)
    assert surgery.dropped == ["fc1_bias", "fc1_weight"]


# ---------------------------------------------------------------- modes

def batchnorm_nodes(symbol):
    return [node for node in json.loads(symbol.tojson())["nodes"] if node["op"] == "BatchNorm"]


def test_last_layer_freezes_every_batchnorm(zoo_model, zoo_checkpoint):
    net = build(zoo_checkpoint.prefix, ZOO_SHAPE, mode="last-layer", network="resnet-50")
    nodes = batchnorm_nodes(net.symbol)
    # Training-mode BatchNorm would keep updating the moving statistics even with
    # every parameter fixed; use_global_stats stops that.
    assert len(nodes) == len(batchnorm_nodes(zoo_model.symbol)) > 50
    not_frozen = [n["name"] for n in nodes if n.get("attrs", {}).get("use_global_stats") != "True"]
    assert not not_frozen


def test_last_layer_fixes_every_backbone_argument(small):
    net = build(small.prefix, SMALL_SHAPE, mode="last-layer")
    assert set(net.fixed) == backbone_args(net.symbol)
    assert len(net.fixed) == len(net.fixed and set(net.fixed))  # no duplicates
    assert net.fresh == HEAD


def test_last_layer_trains_the_head_on_inference_features(small):
    # Training-mode BatchNorm would normalize with the batch's statistics, so the
    # head would learn on features it never sees at test time (measured: up to 0.8
    # apart in probability here without use_global_stats).
    net = build(small.prefix, SMALL_SHAPE, mode="last-layer")
    module = bound_module(net, SMALL_SHAPE, batch_size=4)
    batch = random_batch(SMALL_SHAPE, 4)
    module.forward(batch, is_train=True)
    training = module.get_outputs()[0].asnumpy()
    module.forward(batch, is_train=False)
    np.testing.assert_array_equal(training, module.get_outputs()[0].asnumpy())


def test_last_layer_training_changes_only_the_head(small):
    net = build(small.prefix, SMALL_SHAPE, mode="last-layer")
    module = bound_module(net, SMALL_SHAPE, batch_size=4)
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1})
    head_before = module.get_params()[0]["fc_new_weight"].copy()
    for seed in range(2):
        module.forward_backward(random_batch(SMALL_SHAPE, 4, seed))
        module.update()
    args, aux = module.get_params()
    # Weights and BatchNorm moving statistics exactly as pretrained.
    assert not not_bit_equal(args, {n: small.args[n] for n in net.fixed})
    assert not not_bit_equal(aux, small.aux)
    assert not bit_equal(args["fc_new_weight"], head_before)


def lr_mults(symbol):
    return {name: attrs["__lr_mult__"] for name, attrs in symbol.attr_dict().items()
            if "__lr_mult__" in attrs}


def test_lr_mult_pretrained_marks_every_backbone_variable_only(small):
    net = build(small.prefix, SMALL_SHAPE, lr_mult_pretrained=0.1)
    marks = lr_mults(net.symbol)
    assert set(marks) == backbone_args(net.symbol)
    assert set(marks.values()) == {"0.1"}


def test_optimizer_reads_lr_mult_from_the_symbol(small):
    net = build(small.prefix, SMALL_SHAPE, lr_mult_pretrained=0.1)
    optimizer = mx.optimizer.SGD(learning_rate=0.01, sym=net.symbol)
    optimizer.set_lr_mult({})  # what Module does: re-reads the symbol's attributes
    for name in backbone_args(net.symbol):
        assert optimizer.lr_mult.get(name, 1.0) == pytest.approx(0.1), name
    for name in HEAD:
        assert optimizer.lr_mult.get(name, 1.0) == 1.0, name


def one_step_deltas(net, contexts):
    """{name: change} after one plain SGD step on a fixed batch."""
    module = bound_module(net, SMALL_SHAPE, batch_size=4, contexts=contexts)
    before = {n: a.asnumpy() for n, a in module.get_params()[0].items()}
    module.init_optimizer(kvstore="device", optimizer="sgd",
                          optimizer_params=schedule.optimizer_params(
                              schedule.Schedule(num_epochs=1, lr=0.5, mom=0.0, wd=0.0),
                              epoch_size=1, dtype="float32"))
    module.forward_backward(random_batch(SMALL_SHAPE, 4, seed=5))
    module.update()
    return {n: a.asnumpy() - before[n] for n, a in module.get_params()[0].items()}


def test_lr_mult_scales_backbone_updates_on_two_devices(small):
    # Two CPU contexts take the kvstore path, where the optimizer maps parameter
    # indices to names differently from the single-device path.
    contexts = [mx.cpu(0), mx.cpu(1)]
    plain = one_step_deltas(build(small.prefix, SMALL_SHAPE), contexts)
    scaled = one_step_deltas(build(small.prefix, SMALL_SHAPE, lr_mult_pretrained=0.1), contexts)
    for name in ("conv0_weight", "stage3_unit3_conv2_weight", "bn1_gamma"):
        assert np.abs(plain[name]).max() > 1e-4, f"{name} did not train: the test proves nothing"
        np.testing.assert_allclose(scaled[name], 0.1 * plain[name], rtol=1e-2,
                                   atol=1e-3 * np.abs(plain[name]).max(), err_msg=name)
    np.testing.assert_allclose(scaled["fc_new_weight"], plain["fc_new_weight"], rtol=1e-2,
                               atol=1e-3 * np.abs(plain["fc_new_weight"]).max())


@pytest.mark.parametrize("mode", ["last-layer", "scratch"])
def test_lr_mult_pretrained_outside_full_mode_is_an_error(small, mode):
    with pytest.raises(UserError) as error:
        build(small.prefix, SMALL_SHAPE, mode=mode, lr_mult_pretrained=0.1)
    assert mode in str(error.value) and "0.1" in str(error.value)


def test_scratch_loads_nothing_and_initializes_everything():
    net = model.build_model(mode="scratch", network="resnet-20", num_classes=NUM_CLASSES,
                            image_shape=SMALL_SHAPE)
    assert net.arg_params == {} and net.aux_params == {}
    assert set(net.fresh) == set(net.symbol.list_arguments()) - set(INPUTS)
    assert len(net.fresh) == len(set(net.fresh))
    assert net.fixed == ["bn_data_gamma"]  # ignored by its fix_gamma BatchNorm


def test_float16_computes_in_half_and_loads_the_same_params(small):
    half = build(small.prefix, SMALL_SHAPE, dtype="float16")
    single = build(small.prefix, SMALL_SHAPE)
    arg_types, out_types, _ = half.symbol.infer_type(data=np.float32)
    types = dict(zip(half.symbol.list_arguments(), arg_types))
    assert types["conv0_weight"] == np.float16
    assert types["stage3_unit3_conv2_weight"] == np.float16
    assert out_types == [np.float32]  # the softmax and its loss in float32
    assert set(half.arg_params) == set(single.arg_params) == backbone_args(half.symbol)
    assert set(half.aux_params) == set(single.aux_params)
    assert not not_bit_equal(half.arg_params, {n: small.args[n] for n in half.arg_params})


def test_network_without_zoo_checkpoint_needs_a_prefix(tmp_path):
    # resnet-20 (small inputs) has no zoo checkpoint: say what to pass instead.
    with pytest.raises(UserError) as error:
        model.build_model(mode="full", network="resnet-20", num_classes=NUM_CLASSES,
                          image_shape=SMALL_SHAPE, model_dir=str(tmp_path))
    assert "resnet-20" in str(error.value) and "--pretrained-model" in str(error.value)


# ---------------------------------------------------------------- bugs found and fixed

def test_cut_at_the_old_loss_layer_is_a_user_error(small):
    with pytest.raises(UserError):
        build(small.prefix, SMALL_SHAPE, layer="softmax")


def test_float16_checkpoint_refine_tunes_in_float32(small, tmp_path):
    half = build(small.prefix, SMALL_SHAPE, dtype="float16")
    prefix = str(tmp_path / "half" / "run")
    checkpoint.save_checkpoint(prefix, 0, half.symbol,
                               dict(half.arg_params, fc_new_weight=mx.nd.zeros((NUM_CLASSES, 64)),
                                    fc_new_bias=mx.nd.zeros(NUM_CLASSES)), half.aux_params)
    net = build(prefix, SMALL_SHAPE)
    _, out_types, _ = net.symbol.infer_type(data=np.float32)
    assert out_types == [np.float32]
