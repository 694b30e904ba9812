"""The networks this project builds, by name; `--network` takes its choices from NETWORKS.

Each module exposes get_symbol(num_classes=..., num_layers=..., image_shape=...,
dtype=...) ending in SoftmaxOutput 'softmax', and says which depths it builds.
"""
from . import resnet

# --network name -> (module, num_layers)
NETWORKS = {f"resnet-{depth}": (resnet, depth) for depth in resnet.NAMED_DEPTHS}


def get_symbol(network, *, num_classes, image_shape, dtype="float32"):
    """The symbol of `network` (a NETWORKS key) with a fresh fc1 + softmax head.

    Raises KeyError for an unknown name and ValueError (naming the valid values)
    for a depth the input size cannot take.
    """
    module, num_layers = NETWORKS[network]
    return module.get_symbol(num_classes=num_classes, num_layers=num_layers,
                             image_shape=image_shape, dtype=dtype)
