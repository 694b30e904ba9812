"""draw_net.py's work: a network from symbols/ or a checkpoint, optionally through the
head surgery of fine-tuning (--cut), summarized and drawn with Graphviz.

It lives in tools/ rather than common/infer/ because --cut runs the surgery of
common.train.surgery itself (the drawing shows what training does, not a copy of
it), and inference code imports no training code (tests/test_rules.py). What
needs no training code (layers, parameter counts, the .gv source, rendering) is
common/infer/graph.py, which extract_features.py uses too.
"""
import collections
import dataclasses
import os

import numpy as np

from common import checkpoint, records
from common.cli import UserError, WriteFailed, mxnet_reason
from common.fsutil import CannotCreate, output_folder, write_text_atomic
from common.infer import graph, settings
from common.train import modes, surgery

# --network with --cut draws the surgery of the network's zoo checkpoint, whose
# head classifies ImageNet-1k (train_caltech.py's default --pretrained-model).
PRETRAINED_CLASSES = 1000
DEFAULT_IMAGE_SHAPE = (3, 224, 224)

# A parameter array's shape, where the drawing has only the symbol: surgery.build
# reads nothing of a checkpoint's arrays but their names and .shape.
_Shape = collections.namedtuple("_Shape", "shape")


@dataclasses.dataclass
class Drawing:
    """What draw_net.py prints and draws: the layer table (graph.Layer, marked for
    --cut), its Totals, what they were checked against, the picture's title."""
    table: list
    totals: graph.Totals
    check: str
    title: str


@dataclasses.dataclass
class Source:
    """The network to draw: its symbol, the checkpoint's arrays (None: symbol only),
    its name for titles, the input shape (C, H, W), and the checkpoint's prefix and
    epoch whose arrays were read."""
    symbol: object
    arrays: tuple
    name: str
    image_shape: tuple
    prefix: str = None
    epoch: int = None


def network_source(network, num_classes, image_shape):
    """A --network of symbols/ with a `num_classes` head (None: PRETRAINED_CLASSES)."""
    shape = tuple(image_shape or DEFAULT_IMAGE_SHAPE)
    symbol = modes.network_symbol(network, num_classes or PRETRAINED_CLASSES, shape)
    return Source(symbol, None, network, shape)


def checkpoint_source(prefix, epoch, image_shape):
    """PREFIX-symbol.json, and with `epoch` PREFIX-EPOCH.params (verified), as a Source."""
    import mxnet as mx
    shape = settings.resolve_image_shape(image_shape, settings.recorded_args(prefix))
    if epoch is not None:
        symbol, args, aux = checkpoint.load_checkpoint(prefix, epoch)
        return Source(symbol, (args, aux), f"{prefix} epoch {epoch}", shape.value, prefix, epoch)
    if not os.path.isfile(checkpoint.symbol_path(prefix)):
        checkpoint.require_checkpoint(prefix, 0)  # raises, naming the checkpoints there
    checkpoint.verify_digest(checkpoint.symbol_path(prefix))
    try:
        symbol = mx.sym.load(checkpoint.symbol_path(prefix))
    except mx.base.MXNetError as exc:
        raise UserError(f"{checkpoint.symbol_path(prefix)} cannot be read: {mxnet_reason(exc)}") from None
    return Source(symbol, None, prefix, shape.value)


def dataset_classes(data_dir, prefix):
    """The class count of the dataset prepare_data.sh wrote in data_dir (train_caltech.py's)."""
    prefix = records.find_prefix(data_dir, prefix)
    return len(records.read_classes(records.class_list_path(os.path.join(data_dir, f"{prefix}-train.rec"))))


def _shapes(symbol, data_shape):
    args, aux, _ = graph.infer_shapes(symbol, data_shape)
    return ({name: _Shape(s) for name, s in args.items() if name != "data" and not name.endswith("_label")},
            {name: _Shape(s) for name, s in aux.items()})


def draw(source, cut_classes=None, layer="flatten0"):
    """The Drawing of `source`, or with cut_classes of the fine-tuning network
    surgery.build makes of it (cut at `layer`, a new head of cut_classes)."""
    data_shape = (1,) + tuple(source.image_shape)
    table = graph.layers(source.symbol, data_shape)
    shape_text = ",".join(map(str, source.image_shape))
    title = f"{source.name}, input {shape_text}"
    if cut_classes is None:
        counted = graph.totals(table, source.symbol, data_shape)
        return Drawing(table, counted, _check(source, counted), title)
    args, aux = source.arrays or _shapes(source.symbol, data_shape)
    cut = surgery.build(source.symbol, args, aux, cut_classes, layer, data_shape)
    table = graph.surgery_view(table, graph.layers(cut.symbol, data_shape))
    counted = graph.totals(table, cut.symbol, data_shape)
    old = [row.name for row in table if row.mark == graph.OLD and row.op != graph.INPUT]
    title += (f"\ncut at {layer}: {', '.join(old)} (grey) replaced by {cut.head[0].rsplit('_', 1)[0]} "
              f"with {cut_classes} classes (red)")
    return Drawing(table, counted, _cut_check(source, cut, counted), title)


def _check(source, counted):
    if source.arrays is None:
        return "the layers' counts add up to the arrays MXNet allocates for this symbol"
    args, aux = source.arrays
    data_shape = (1,) + tuple(source.image_shape)
    expected_args, expected_aux = _shapes(source.symbol, data_shape)
    what = f"{source.name} at --image-shape {','.join(map(str, source.image_shape))}"
    used = checkpoint.match_params({k: v.shape for k, v in expected_args.items()}, args, "argument", what)
    checkpoint.match_params({k: v.shape for k, v in expected_aux.items()}, aux, "auxiliary state", what)
    held = sum(int(array.size) for array in used.values())
    assert held == counted.params, (held, counted.params)
    unused = len(args) + len(aux) - len(expected_args) - len(expected_aux)
    return (f"{checkpoint.params_path(source.prefix, source.epoch)} holds these arrays with these shapes"
            + (f" (and {unused} the network does not use)" if unused else ""))


def _cut_check(source, cut, counted):
    fresh = counted.params - sum(_size(v) for v in cut.loaded_args.values())
    where = "the checkpoint's arrays" if source.arrays else "the pretrained network"
    return (f"{len(cut.loaded_args)} backbone arguments and {len(cut.loaded_aux)} auxiliary states come "
            f"from {where} with their shapes (surgery.build); {', '.join(cut.head)} ({fresh:,} "
            f"parameters) are fresh")


def _size(array):
    return int(np.prod(array.shape))


def write_picture(drawing, out, fmt, last=None):
    """OUT.gv always, then OUT.FORMAT (graph.FORMATS), each atomically, OUT's folder
    created if missing; returns (picture path, renderer), or (None, None) when
    there is no Graphviz to draw with. last: graph.dot_source's."""
    source = graph.dot_source(drawing.table, drawing.title, last)
    try:
        with output_folder(os.path.dirname(out) or "."):
            write_text_atomic(f"{out}.gv", source)
            return f"{out}.{fmt}", graph.render(source, f"{out}.{fmt}", fmt)
    except graph.NoRenderer:
        return None, None
    except CannotCreate as exc:
        raise WriteFailed(f"--out {out}: cannot create its folder ({exc.strerror})") from None
