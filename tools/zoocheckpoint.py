"""Checkpoints in the model zoo's format with random weights, for the tests and benchmarks.

The zoo's weights cannot be downloaded here; what these stand in for is their file
layout and layer names (fc1, flatten0, bn_data, ...), which the head surgery needs.
"""
import os

import mxnet as mx
import numpy as np

from symbols import resnet

IMAGE_SHAPE = (3, 16, 16)  # the tests' input (tests/trainkit.py)

def random_params(symbol, image_shape=IMAGE_SHAPE, seed=0):
    """(arg_params, aux_params): He-scaled random weights of the inferred shapes.

    BatchNorm statistics near (0, 1) keep activations in range, so a forward
    pass through them is meaningful.
    """
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1,) + tuple(image_shape))
    args = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), size=shape)
        elif name.endswith("_gamma"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        args[name] = mx.nd.array(value, dtype="float32")
    aux = {}
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        value = (0.1 * rng.standard_normal(shape) if name.endswith("_moving_mean")
                 else 1 + 0.1 * rng.random(shape))
        aux[name] = mx.nd.array(value, dtype="float32")
    return args, aux


def make_pretrained(prefix, num_classes=7, num_layers=20, image_shape=IMAGE_SHAPE, epoch=0, seed=0):
    """Save a zoo-format checkpoint (fc1 + softmax head, random weights) at prefix.

    Written with mx.model.save_checkpoint, as the zoo's files were. Returns
    (prefix, symbol, arg_params, aux_params).
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    symbol = resnet.get_symbol(num_classes=num_classes, num_layers=num_layers, image_shape=image_shape)
    args, aux = random_params(symbol, image_shape, seed)
    mx.model.save_checkpoint(prefix, epoch, symbol, args, aux)
    return prefix, symbol, args, aux
