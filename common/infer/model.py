"""A checkpoint loaded for inference: bound, every parameter checked, fed a batch at a time.

A checkpoint is PREFIX-symbol.json + PREFIX-EPOCH.params, ours (with .sha256
files, verified) or the model zoo's (without). Its one output must be (N, C)
class probabilities.
"""
import contextlib
import dataclasses
import io
import json
import logging

import numpy as np

from .. import checkpoint
from ..checkpoint import match_params
from ..cli import UserError, mxnet_reason
from ..devices import per_device_batch

log = logging.getLogger(__name__)

# Output operators whose (N, C) output is a probability distribution per image.
PROBABILITY_OPS = frozenset({"SoftmaxOutput", "softmax", "SoftmaxActivation"})


def output_classes(symbol, data_shape):
    """Number of classes C of a symbol whose one output is (N, C) probabilities.

    Raises UserError for a symbol without a 'data' input, with several outputs, or
    whose output is not a softmax over a 2-D (N, C) array.
    """
    import mxnet as mx
    if "data" not in symbol.list_arguments():
        raise UserError(f"the checkpoint has no 'data' input "
                        f"(inputs: {', '.join(symbol.list_arguments()[:5])})")
    graph = json.loads(symbol.tojson())
    if len(graph["heads"]) != 1:
        raise UserError(f"the checkpoint has {len(graph['heads'])} outputs "
                        f"({', '.join(symbol.list_outputs())}); expected one softmax")
    head = graph["nodes"][graph["heads"][0][0]]
    if head["op"] not in PROBABILITY_OPS:
        raise UserError(f"the checkpoint's output {head['name']!r} is a {head['op']}, not a softmax: "
                        f"expected one of {', '.join(sorted(PROBABILITY_OPS))} giving probabilities")
    try:
        # MXNet prints its arguments to stdout before raising: keep stdout for results
        with contextlib.redirect_stdout(io.StringIO()):
            _, (shape,), _ = symbol.infer_shape(data=data_shape)
    except mx.base.MXNetError as exc:
        raise UserError(f"the checkpoint does not take input {','.join(map(str, data_shape[1:]))}: "
                        f"{mxnet_reason(exc)} (check --image-shape)") from None
    if len(shape) != 2:
        raise UserError(f"the checkpoint's output has shape {tuple(shape)} for a batch of "
                        f"{data_shape[0]}; expected (N, C) class probabilities")
    return int(shape[1])


def _label_names(symbol):
    return [name for name in symbol.list_arguments() if name.endswith("_label")]


def bind_module(symbol, arg_params, aux_params, contexts, batch_size, image_shape):
    """An inference Module with every parameter loaded and its name and shape checked.

    batch_size: total over `contexts`; image_shape: (C, H, W).
    """
    import mxnet as mx
    data_shape = (batch_size,) + tuple(image_shape)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
    labels = _label_names(symbol)
    expected = {name: shape for name, shape in zip(symbol.list_arguments(), arg_shapes)
                if name != "data" and name not in labels}
    what = f"checkpoint at --image-shape {','.join(map(str, image_shape))}"
    args = match_params(expected, arg_params, "argument", what)
    aux = match_params(dict(zip(symbol.list_auxiliary_states(), aux_shapes)), aux_params,
                       "auxiliary state", what)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=labels, context=contexts)
    module.bind(data_shapes=[("data", data_shape)],
                label_shapes=[(name, (batch_size,)) for name in labels] or None, for_training=False)
    module.set_params(args, aux, allow_missing=False, allow_extra=False)
    unused = sorted((set(arg_params) - set(args)) | (set(aux_params) - set(aux)))
    if unused:
        log.info("checkpoint arrays the network does not use: %s", ", ".join(unused))
    return module


@dataclasses.dataclass
class Model:
    """A bound inference module. batch_size: images per forward (all devices);
    num_classes: None for a network cut before its softmax (extract_features.py)."""
    module: object
    prefix: str
    epoch: int
    num_classes: int
    image_shape: tuple
    batch_size: int


def inference_batch(batch_size, num_images, num_devices):
    """Images per forward pass: --batch-size, but no larger than `num_images` needs.

    The total must split evenly over the devices (UserError otherwise).
    """
    per_device = per_device_batch(batch_size, num_devices)
    needed = -(-max(num_images, 1) // num_devices)  # ceil
    return num_devices * min(per_device, needed)


def load_model(prefix, epoch, image_shape, contexts, batch_size):
    """Load PREFIX at EPOCH (verified when digests exist) and bind it for inference."""
    per_device_batch(batch_size, len(contexts))
    symbol, arg_params, aux_params = checkpoint.load_checkpoint(prefix, epoch, note=ZOO_NOTE)
    num_classes = output_classes(symbol, (1,) + tuple(image_shape))
    module = bind_module(symbol, arg_params, aux_params, contexts, batch_size, image_shape)
    return Model(module, prefix, epoch, num_classes, tuple(image_shape), batch_size)


# Said when --model-prefix is not there: a zoo name is not downloaded by inference.
ZOO_NOTE = " (model-zoo checkpoints are downloaded by train_caltech.py into its --model-dir, e.g. model/NAME)"


def forward(model, images):
    """The first output for images (n, C, H, W), n <= model.batch_size (zero-padded):
    (n, C) probabilities for a classifier, (n, ...) for a cut network (features)."""
    import mxnet as mx
    count = len(images)
    batch = np.zeros((model.batch_size,) + model.image_shape, dtype=np.float32)
    batch[:count] = images
    model.module.forward(mx.io.DataBatch(data=[mx.nd.array(batch)]), is_train=False)
    return model.module.get_outputs()[0].asnumpy()[:count]
