"""Pre-activation ResNet (v2; He et al. 2016, "Identity Mappings in Deep Residual
Networks") for the Module API, with the exact layer and parameter names of MXNet's
model-zoo ResNets (apache/mxnet example/image-classification/symbols/resnet.py, v1.x).

The names are the contract: zoo checkpoints load into this symbol by name. That is why
every node is named explicitly instead of being left to MXNet's process-wide
auto-naming counter, which would call the first residual add `_plus16` rather than
`_plus0` the second time a ResNet-50 is built in the same process.
"""
import collections

import mxnet as mx

# The zoo models were trained with these BatchNorm settings; their moving statistics
# only mean what they mean with them.
BN_EPS = 2e-5
BN_MOMENTUM = 0.9

# Inputs up to this height (CIFAR's 32 px) get the small-input network: a 3x3 stride-1
# stem and 3 stages. The ImageNet stem (7x7/2 conv, 3x3/2 pool) would leave 8 px.
SMALL_INPUT_MAX_HEIGHT = 32

DTYPES = ('float32', 'float16')

Layout = collections.namedtuple('Layout', 'units filters bottleneck small_input')
Layout.__doc__ = """How a ResNet of a given depth is laid out.

units: residual units per stage, e.g. (3, 4, 6, 3) for ResNet-50.
filters: conv0's output channels, then each stage's output channels.
bottleneck: True for 1x1-3x3-1x1 units (3 convs), False for 3x3-3x3 units (2 convs).
small_input: True for the CIFAR-style stem (3x3 stride-1 conv0; no bn0, relu0, pooling0).
"""

_BASIC_FILTERS = (64, 64, 128, 256, 512)
_BOTTLENECK_FILTERS = (64, 256, 512, 1024, 2048)

# Inputs taller than SMALL_INPUT_MAX_HEIGHT: depth -> (bottleneck, units per stage).
# Depth counts the convs on the main path plus fc1, e.g. 50 = 1 + 3 * (3+4+6+3) + 1.
_IMAGENET_DEPTHS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
    269: (True, (3, 30, 48, 8)),
}

# Small inputs: 3 stages of n units each, so depth = 3 * convs_per_unit * n + 2 (conv0
# and fc1). Basic units below 164 layers (ResNet-20...110), bottleneck units from 164
# (ResNet-164 and -1001 of the paper); the same split as the zoo's code.
_SmallFamily = collections.namedtuple(
    '_SmallFamily', 'bottleneck convs_per_unit min_depth max_depth filters')
_SMALL_INPUT_FAMILIES = (
    _SmallFamily(False, 2, 8, 158, (16, 16, 32, 64)),
    _SmallFamily(True, 3, 164, None, (16, 64, 128, 256)),
)

# Convs of one unit, in order: (channel divisor of num_filter, kernel, carries stride).
# The bottleneck squeezes to num_filter/4 for the 3x3; the stride sits on the 3x3
# conv (as in fb.resnet.torch), not on the first 1x1 as in the original paper.
_BOTTLENECK_CONVS = ((4, 1, False), (4, 3, True), (1, 1, False))
_BASIC_CONVS = ((1, 3, True), (1, 3, False))

# The small-input depths of the paper; the families above build any 6n+2 / 9n+2.
SMALL_INPUT_NAMED_DEPTHS = (20, 32, 44, 56, 110, 164, 1001)
# Depths offered by name (symbols.NETWORKS, --network): every ImageNet depth, and the
# paper's small-input ones.
NAMED_DEPTHS = tuple(sorted(set(_IMAGENET_DEPTHS) | set(SMALL_INPUT_NAMED_DEPTHS)))


def get_symbol(num_classes, num_layers, image_shape, conv_workspace=256, dtype='float32'):
    """The zoo's pre-activation ResNet ending in SoftmaxOutput.

    Inputs: `data` (N, C, H, W) float32, raw 0-255 RGB (bn_data normalises it, as in
    the zoo models); `softmax_label` (N,). Output `softmax_output` (N, num_classes).
    image_shape: (C, H, W) as a tuple/list or a "3,224,224" string; only H matters,
    it picks the ImageNet or the small-input (H <= 32) layout. conv_workspace: MB of
    scratch space per convolution. dtype 'float16' casts data to float16 before
    bn_data and fc1's output back to float32; parameter names do not change.
    Raises ValueError naming the valid values for an unsupported depth, shape or dtype.
    """
    _channels, height, _width = _parse_image_shape(image_shape)
    layout = resnet_layout(num_layers, height)
    if dtype not in DTYPES:
        raise ValueError(f'dtype={dtype!r} is not supported; valid: {", ".join(DTYPES)}')
    if num_classes < 1:
        raise ValueError(f'num_classes={num_classes} must be at least 1')
    data = mx.sym.Variable('data')
    if dtype == 'float16':
        data = mx.sym.Cast(data, dtype='float16', name='data_float16')
    # gamma fixed at 1: this layer only standardises the raw pixels per channel (plus beta)
    body = _batch_norm(data, 'bn_data', fix_gamma=True)
    body = _stem(body, layout.filters[0], layout.small_input, conv_workspace)
    body = _stages(body, layout, conv_workspace)
    return _head(body, num_classes, dtype)


def resnet_layout(num_layers, height):
    """The Layout of a num_layers-deep ResNet for inputs `height` pixels tall.

    Raises ValueError naming num_layers and the depths valid at that height.
    """
    if height > SMALL_INPUT_MAX_HEIGHT:
        return _imagenet_layout(num_layers)
    return _small_input_layout(num_layers)


def residual_unit(data, num_filter, stride, project, name, add_name, bottleneck, workspace):
    """One pre-activation unit: (BatchNorm, ReLU, conv) two or three times, plus shortcut.

    data (N, C, H, W) -> (N, num_filter, H / stride, W / stride). project=True gives
    the shortcut a 1x1 conv `{name}_sc` (needed when C or the resolution changes); it
    reads the first ReLU's output, as the zoo's code does, not the raw input.
    add_name names the elementwise add of branch and shortcut.
    """
    body, pre_activated = data, None
    for index, (divisor, kernel, strided) in enumerate(
            _BOTTLENECK_CONVS if bottleneck else _BASIC_CONVS, start=1):
        body = _batch_norm(body, f'{name}_bn{index}')
        body = mx.sym.Activation(body, act_type='relu', name=f'{name}_relu{index}')
        if index == 1:
            pre_activated = body
        body = _conv(body, num_filter // divisor, kernel, stride if strided else 1,
                     f'{name}_conv{index}', workspace)
    shortcut = data
    if project:
        shortcut = _conv(pre_activated, num_filter, 1, stride, f'{name}_sc', workspace)
    return mx.sym.elemwise_add(body, shortcut, name=add_name)


def _parse_image_shape(image_shape):
    """(channels, height, width) ints from a tuple/list or a "3,224,224" string."""
    parts = image_shape.split(',') if isinstance(image_shape, str) else image_shape
    try:
        shape = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f'image_shape={image_shape!r} is not channels,height,width; '
                         'e.g. (3, 224, 224) or "3,224,224"')
    return shape


def _imagenet_layout(num_layers):
    if num_layers not in _IMAGENET_DEPTHS:
        valid = ', '.join(str(depth) for depth in sorted(_IMAGENET_DEPTHS))
        raise ValueError(f'num_layers={num_layers} is not supported for inputs taller than '
                         f'{SMALL_INPUT_MAX_HEIGHT} px; valid: {valid}')
    bottleneck, units = _IMAGENET_DEPTHS[num_layers]
    filters = _BOTTLENECK_FILTERS if bottleneck else _BASIC_FILTERS
    return Layout(units, filters, bottleneck, small_input=False)


def _small_input_layout(num_layers):
    for family in _SMALL_INPUT_FAMILIES:
        step = 3 * family.convs_per_unit  # one more unit in each of the 3 stages
        upper = num_layers if family.max_depth is None else family.max_depth
        if family.min_depth <= num_layers <= upper and (num_layers - 2) % step == 0:
            units = ((num_layers - 2) // step,) * 3
            return Layout(units, family.filters, family.bottleneck, small_input=True)
    raise ValueError(f'num_layers={num_layers} is not supported for inputs up to '
                     f'{SMALL_INPUT_MAX_HEIGHT} px tall; valid: {_small_input_depths()}')


def _small_input_depths():
    """Readable rule for the valid small-input depths, for error messages."""
    rules = []
    for family in _SMALL_INPUT_FAMILIES:
        upper = 'up' if family.max_depth is None else f'to {family.max_depth}'
        rules.append(f'{3 * family.convs_per_unit}n+2 from {family.min_depth} {upper}')
    named = ', '.join(map(str, SMALL_INPUT_NAMED_DEPTHS))
    return ' or '.join(rules) + f' (e.g. {named})'


def _batch_norm(data, name, fix_gamma=False):
    return mx.sym.BatchNorm(data, fix_gamma=fix_gamma, eps=BN_EPS, momentum=BN_MOMENTUM,
                            name=name)


def _conv(data, num_filter, kernel, stride, name, workspace):
    """Square conv, 'same' padding for odd kernels. No bias: a BatchNorm with its own
    beta follows every conv, directly or after the residual add."""
    return mx.sym.Convolution(data, num_filter=num_filter, kernel=(kernel, kernel),
                              stride=(stride, stride), pad=(kernel // 2, kernel // 2),
                              no_bias=True, workspace=workspace, name=name)


def _stem(data, num_filter, small_input, workspace):
    """(N, C, H, W) -> (N, num_filter, H, W) for small inputs, else (N, num_filter, H/4, W/4).

    The small stem stops at conv0: stage1_unit1_bn1 is its BatchNorm and ReLU.
    """
    if small_input:
        return _conv(data, num_filter, 3, 1, 'conv0', workspace)
    body = _conv(data, num_filter, 7, 2, 'conv0', workspace)
    body = _batch_norm(body, 'bn0')
    body = mx.sym.Activation(body, act_type='relu', name='relu0')
    return mx.sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type='max',
                          name='pooling0')


def _stages(body, layout, workspace):
    """Residual stages; each after the first halves H and W. Adds are `_plus0`, `_plus1`...
    in build order, the names the zoo's symbol files carry."""
    add_index = 0
    for stage, (num_units, num_filter) in enumerate(zip(layout.units, layout.filters[1:]),
                                                    start=1):
        for unit in range(1, num_units + 1):
            # The zoo projects in every stage's first unit, even where the width does
            # not change (ResNet-18/34 stage 1), so its checkpoints hold those weights.
            first = unit == 1
            body = residual_unit(body, num_filter, stride=2 if first and stage > 1 else 1,
                                 project=first, name=f'stage{stage}_unit{unit}',
                                 add_name=f'_plus{add_index}', bottleneck=layout.bottleneck,
                                 workspace=workspace)
            add_index += 1
    return body


def _head(body, num_classes, dtype):
    """(N, C, h, w) -> SoftmaxOutput over (N, num_classes), float32 in both dtypes."""
    body = _batch_norm(body, 'bn1')
    body = mx.sym.Activation(body, act_type='relu', name='relu1')
    # global_pool ignores the kernel; (7, 7) is what the zoo's symbol files record
    body = mx.sym.Pooling(body, global_pool=True, kernel=(7, 7), pool_type='avg', name='pool1')
    body = mx.sym.Flatten(body, name='flatten0')
    body = mx.sym.FullyConnected(body, num_hidden=num_classes, name='fc1')
    if dtype == 'float16':
        # softmax, its gradient and the metrics stay in float32, as in the zoo's code
        body = mx.sym.Cast(body, dtype='float32', name='fc1_float32')
    return mx.sym.SoftmaxOutput(body, name='softmax')
