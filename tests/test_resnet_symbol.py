"""symbols/resnet.py against the model zoo's published ResNet-50 symbol, plus shape,
naming and error checks for every supported depth. CPU only; no deep forward passes."""
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from symbols import resnet
from tests import trainkit

ZOO_SYMBOL = Path(trainkit.ZOO_SYMBOL)
ZOO_CLASSES = 11586  # the fixture's ImageNet-11k + Places365 head
ZOO_DATA_SHAPE = (1, 3, 224, 224)
# Small enough for a quick ResNet-50 forward; the global pool accepts any size >= 32 px.
SMALL_DATA_SHAPE = (1, 3, 64, 64)
INPUT_NAMES = ('data', 'softmax_label')

# Units per stage, as the zoo's ResNet paper table gives them (independent of the code).
IMAGENET_LAYOUTS = [
    (18, (2, 2, 2, 2), False),
    (34, (3, 4, 6, 3), False),
    (50, (3, 4, 6, 3), True),
    (101, (3, 4, 23, 3), True),
    (152, (3, 8, 36, 3), True),
    (200, (3, 24, 36, 3), True),
]


def load_zoo_symbol():
    """The fixture symbol; fails (not skips) when the file is missing."""
    if not ZOO_SYMBOL.is_file():
        pytest.fail(f'zoo symbol fixture not found at {ZOO_SYMBOL}')
    return mx.sym.load(str(ZOO_SYMBOL))


def our_resnet50():
    return resnet.get_symbol(num_classes=ZOO_CLASSES, num_layers=50, image_shape=(3, 224, 224))


def inferred_shapes(symbol, data_shape):
    """{name: shape} for every argument and auxiliary state at this data shape."""
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
    names = symbol.list_arguments() + symbol.list_auxiliary_states()
    return dict(zip(names, arg_shapes + aux_shapes))


def name_differences(zoo_names, our_names):
    return (f'missing from ours: {sorted(set(zoo_names) - set(our_names))}; '
            f'not in the zoo: {sorted(set(our_names) - set(zoo_names))}')


# Uniform ranges for random parameters, by name suffix: BatchNorms near identity so a
# difference in any layer still shows in the logits 50 layers later.
PARAM_RANGES = {
    '_gamma': (0.5, 1.5),
    '_beta': (-0.1, 0.1),
    '_moving_mean': (-0.1, 0.1),
    '_moving_var': (0.5, 1.5),  # variances must be positive
    '_bias': (-0.1, 0.1),
}


def random_params(symbol, data_shape, seed):
    """Random (arg_params, aux_params) of the shapes `symbol` infers, inputs excluded.

    Weights are He-scaled (variance 2 / fan_in) for the same reason as PARAM_RANGES.
    """
    mx.random.seed(seed)
    aux_names = set(symbol.list_auxiliary_states())
    arg_params, aux_params = {}, {}
    for name, shape in inferred_shapes(symbol, data_shape).items():
        if name in INPUT_NAMES:
            continue
        if name.endswith('_weight'):
            bound = float(np.sqrt(6 / np.prod(shape[1:])))
            low, high = -bound, bound
        else:
            low, high = next(limits for suffix, limits in PARAM_RANGES.items()
                             if name.endswith(suffix))
        params = aux_params if name in aux_names else arg_params
        params[name] = mx.nd.random.uniform(low, high, shape=shape)
    return arg_params, aux_params


def bound_module(symbol, data_shape, arg_params, aux_params):
    """An inference Module with exactly these parameters: none missing, none extra."""
    label_names = [name for name in ('softmax_label',) if name in symbol.list_arguments()]
    module = mx.mod.Module(symbol, data_names=('data',), label_names=label_names,
                           context=mx.cpu())
    module.bind(data_shapes=[('data', data_shape)],
                label_shapes=[(name, data_shape[:1]) for name in label_names] or None,
                for_training=False)
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=False)
    return module


def predict(module, data):
    labels = [mx.nd.zeros(data.shape[:1]) for _ in module.label_names]
    module.forward(mx.io.DataBatch(data=[data], label=labels), is_train=False)
    return module.get_outputs()[0].asnumpy()


def logits(symbol):
    """The fc1 output: unlike the softmax it does not saturate, so it shows differences."""
    return symbol.get_internals()['fc1_output']


# 1. Our ResNet-50 is the zoo's ResNet-50, name for name and shape for shape.

def test_zoo_fixture_exists():
    assert ZOO_SYMBOL.is_file(), f'zoo symbol fixture not found at {ZOO_SYMBOL}'


@pytest.mark.parametrize('kind', ['list_arguments', 'list_auxiliary_states'])
def test_parameter_names_match_zoo(kind):
    zoo_names = getattr(load_zoo_symbol(), kind)()
    our_names = getattr(our_resnet50(), kind)()
    assert set(our_names) == set(zoo_names), name_differences(zoo_names, our_names)
    assert our_names == zoo_names, 'same names, different order'


def test_inferred_shapes_match_zoo():
    zoo_shapes = inferred_shapes(load_zoo_symbol(), ZOO_DATA_SHAPE)
    our_shapes = inferred_shapes(our_resnet50(), ZOO_DATA_SHAPE)
    differing = {name: (zoo_shapes[name], our_shapes.get(name))
                 for name in zoo_shapes if zoo_shapes[name] != our_shapes.get(name)}
    assert not differing, f'(zoo shape, our shape) by name: {differing}'
    assert set(our_shapes) == set(zoo_shapes), name_differences(zoo_shapes, our_shapes)


def test_internal_outputs_match_zoo():
    zoo_outputs = load_zoo_symbol().get_internals().list_outputs()
    our_outputs = our_resnet50().get_internals().list_outputs()
    for key_layer in ('bn_data_output', 'conv0_output', 'pooling0_output', '_plus0_output',
                      '_plus15_output', 'pool1_output', 'flatten0_output', 'fc1_output',
                      'softmax_output'):
        assert key_layer in zoo_outputs and key_layer in our_outputs, key_layer
    assert our_outputs == zoo_outputs, name_differences(zoo_outputs, our_outputs)


def test_layer_hyperparameters_match_zoo():
    """Every attribute both files record agrees (kernel, stride, pad, eps, fix_gamma...).

    The zoo's file also spells out defaults ours leaves implicit (cudnn_tune, dilate,
    grad_scale...); those are not compared, the forward test below covers them.
    """
    zoo_attrs = load_zoo_symbol().attr_dict()
    our_attrs = our_resnet50().attr_dict()
    differing = {}
    for node, attrs in our_attrs.items():
        zoo_node = zoo_attrs.get(node, {})
        for key in attrs.keys() & zoo_node.keys():
            # MXNet 0.8 wrote tuples as "(3,3)", 1.9 as "(3, 3)"
            if attrs[key].replace(' ', '') != zoo_node[key].replace(' ', ''):
                differing[f'{node}.{key}'] = (zoo_node[key], attrs[key])
    assert not differing, f'(zoo, ours) by node.attribute: {differing}'


# 2. A checkpoint saved with the zoo's symbol loads into ours, every array bit for bit.

@pytest.fixture(scope='module')
def zoo_checkpoint(tmp_path_factory):
    """(arg_params, aux_params) as read back from a checkpoint saved with the zoo's symbol."""
    zoo_symbol = load_zoo_symbol()
    prefix = str(tmp_path_factory.mktemp('checkpoint') / 'zoo-resnet-50')
    mx.model.save_checkpoint(prefix, 0, zoo_symbol, *random_params(zoo_symbol, ZOO_DATA_SHAPE, 0))
    _, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
    return arg_params, aux_params


@pytest.fixture(scope='module')
def pixels():
    """One raw 0-255 RGB image, as the zoo models take them."""
    return mx.nd.array(np.random.RandomState(0).uniform(0, 255, SMALL_DATA_SHAPE))


def test_zoo_checkpoint_loads_bit_exactly(zoo_checkpoint, pixels):
    arg_params, aux_params = zoo_checkpoint
    module = bound_module(our_resnet50(), SMALL_DATA_SHAPE, arg_params, aux_params)
    # Read the executor's own arrays: after set_params, get_params() returns the
    # module's host-side copies without looking at what was bound.
    executor = module._exec_group.execs[0]  # pylint: disable=protected-access
    bound_args = {name: array for name, array in executor.arg_dict.items()
                  if name not in INPUT_NAMES}
    for saved, bound in ((arg_params, bound_args), (aux_params, executor.aux_dict)):
        assert set(bound) == set(saved), name_differences(saved, bound)
        not_exact = [name for name in saved if saved[name].dtype != bound[name].dtype
                     or saved[name].asnumpy().tobytes() != bound[name].asnumpy().tobytes()]
        assert not not_exact, f'not bit-exact after loading: {not_exact}'

    probs = predict(module, pixels)
    assert probs.shape == (1, ZOO_CLASSES)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_zoo_checkpoint_gives_the_zoo_logits(zoo_checkpoint, pixels):
    """Same names and shapes could still wire a layer differently (shortcut source,
    stride placement, fix_gamma, eps); the same logits rule that out."""
    ours = predict(bound_module(logits(our_resnet50()), SMALL_DATA_SHAPE, *zoo_checkpoint), pixels)
    zoo = predict(bound_module(logits(load_zoo_symbol()), SMALL_DATA_SHAPE, *zoo_checkpoint),
                  pixels)
    assert np.abs(zoo).mean() > 1e-2, 'logits too small to tell networks apart'
    np.testing.assert_allclose(ours, zoo, rtol=1e-5, atol=1e-5 * np.abs(zoo).max())


# 3. Every supported depth builds, with the zoo's naming scheme.

@pytest.mark.parametrize('num_layers, units, bottleneck', IMAGENET_LAYOUTS)
def test_imagenet_depths(num_layers, units, bottleneck):
    symbol = resnet.get_symbol(num_classes=257, num_layers=num_layers, image_shape=(3, 224, 224))
    _, out_shapes, _ = symbol.infer_shape(data=(1, 3, 224, 224))
    assert out_shapes == [(1, 257)]
    args = set(symbol.list_arguments())
    # Depth counts conv0, the convs on the main path and fc1; projections are extra.
    weights = [name for name in args if name.endswith('_weight') and '_sc_' not in name]
    assert len(weights) == num_layers
    for stage, num_units in enumerate(units, start=1):
        assert f'stage{stage}_unit{num_units}_conv2_weight' in args
        assert f'stage{stage}_unit{num_units + 1}_bn1_gamma' not in args
        assert f'stage{stage}_unit1_sc_weight' in args  # the zoo projects even at 64 -> 64
        assert f'stage{stage}_unit2_sc_weight' not in args
        assert (f'stage{stage}_unit1_conv3_weight' in args) == bottleneck
    assert 'stage5_unit1_bn1_gamma' not in args


def test_stage4_unit3_conv3_only_in_bottleneck_nets():
    def has_conv3(num_layers):
        symbol = resnet.get_symbol(num_classes=10, num_layers=num_layers, image_shape=(3, 224, 224))
        return 'stage4_unit3_conv3_weight' in symbol.list_arguments()
    assert has_conv3(50)
    assert not has_conv3(18)


@pytest.mark.parametrize('num_layers, bottleneck', [
    (20, False), (32, False), (44, False), (56, False), (110, False), (164, True)])
def test_small_input_depths(num_layers, bottleneck):
    symbol = resnet.get_symbol(num_classes=10, num_layers=num_layers, image_shape=(3, 32, 32))
    shapes = inferred_shapes(symbol, (1, 3, 32, 32))
    _, out_shapes, _ = symbol.infer_shape(data=(1, 3, 32, 32))
    assert out_shapes == [(1, 10)]
    units_per_stage = (num_layers - 2) // (9 if bottleneck else 6)
    assert f'stage3_unit{units_per_stage}_bn1_gamma' in shapes
    assert f'stage3_unit{units_per_stage + 1}_bn1_gamma' not in shapes
    assert 'stage4_unit1_bn1_gamma' not in shapes
    assert ('stage1_unit1_conv3_weight' in shapes) == bottleneck
    # CIFAR stem: a 3x3 conv to 16 channels and straight into stage 1
    assert shapes['conv0_weight'] == (16, 3, 3, 3)
    assert 'bn0_gamma' not in shapes


def test_small_input_forward():
    symbol = resnet.get_symbol(num_classes=10, num_layers=20, image_shape=(3, 32, 32))
    arg_params, aux_params = random_params(symbol, (2, 3, 32, 32), seed=1)
    module = bound_module(symbol, (2, 3, 32, 32), arg_params, aux_params)
    probs = predict(module, mx.nd.random.uniform(0, 255, shape=(2, 3, 32, 32)))
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_image_shape_string_and_repeat_builds_give_the_same_symbol():
    # Explicit node names: a second build must not drift to _plus16, flatten1...
    first = resnet.get_symbol(num_classes=10, num_layers=18, image_shape=(3, 224, 224))
    second = resnet.get_symbol(num_classes=10, num_layers=18, image_shape='3,224,224')
    assert first.tojson() == second.tojson()


@pytest.mark.parametrize('num_layers, image_shape, listed', [
    (42, (3, 224, 224), '18, 34, 50, 101, 152, 200'),
    # 50 = 6 * 8 + 2 is a valid small-input depth (as in the zoo's code); 42 is not
    (42, (3, 32, 32), '6n+2 from 8 to 158 or 9n+2 from 164'),
    (165, (3, 32, 32), '6n+2 from 8 to 158 or 9n+2 from 164'),
    (20, (3, 224, 224), '18, 34, 50'),
])
def test_unsupported_depth_names_valid_depths(num_layers, image_shape, listed):
    with pytest.raises(ValueError) as error:
        resnet.get_symbol(num_classes=10, num_layers=num_layers, image_shape=image_shape)
    message = str(error.value)
    assert f'num_layers={num_layers}' in message
    assert listed in message
    assert '\n' not in message


@pytest.mark.parametrize('image_shape', ['3,224', (3, 224), 'a,b,c', (3, 0, 224)])
def test_bad_image_shape_raises(image_shape):
    with pytest.raises(ValueError, match='image_shape'):
        resnet.get_symbol(num_classes=10, num_layers=18, image_shape=image_shape)


# 4. float16: same parameter names, computation in float16, float32 out.

def test_float16_keeps_names_and_infers_types():
    def build(dtype):
        return resnet.get_symbol(num_classes=10, num_layers=50, image_shape=(3, 224, 224),
                                 dtype=dtype)
    half, single = build('float16'), build('float32')
    assert half.list_arguments() == single.list_arguments()
    assert half.list_auxiliary_states() == single.list_auxiliary_states()
    arg_types, out_types, _ = half.infer_type(data=np.float32)
    types = dict(zip(half.list_arguments(), arg_types))
    assert types['conv0_weight'] == np.float16
    assert types['fc1_weight'] == np.float16
    assert out_types == [np.float32]
    _, out_shapes, _ = half.infer_shape(data=(1, 3, 224, 224))
    assert out_shapes == [(1, 10)]


def test_unsupported_dtype_raises():
    with pytest.raises(ValueError, match='float16'):
        resnet.get_symbol(num_classes=10, num_layers=18, image_shape=(3, 224, 224),
                          dtype='int8')
