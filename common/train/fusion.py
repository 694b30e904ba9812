"""Model fusion: two or more trained checkpoints as the backbones of one network.

Each source checkpoint is cut at --layer-before-fullc (default flatten0, its
classifier's input) and every layer, parameter and BatchNorm statistic of it is
renamed with its backbone's prefix (net0_, net1_, ...), so no name occurs
twice. One `data` input feeds every backbone; their outputs are concatenated
along the feature axis by a Concat called flatten0, the name every tool here
takes for the classifier's input (train_caltech.py, extract_features.py,
draw_net.py --cut), and a FullyConnected fc1 + SoftmaxOutput softmax go on top,
as in a model-zoo checkpoint. fc1 starts at zero: fine-tuning replaces it with
a fresh fc_new anyway, and zeros make the fused file depend on its sources only.

The Concat carries the attribute __fusion__ (the backbones' prefixes), which
survives training: train_caltech.py reads it to default to --mode last-layer,
so the backbones stay frozen unless --mode full (or --freeze-until net0) says
otherwise.

Before the fused checkpoint is committed, its parameter file is read back and
every array each backbone reads must be there under its prefix with its name,
shape, dtype and bytes unchanged; anything else is an error and nothing is
written under the final names.
"""
import contextlib
import dataclasses
import io
import json
import logging
import os

from . import modelzoo, surgery
from .. import checkpoint
from ..checkpoint import load_checkpoint, match_params
from ..cli import UserError, mxnet_reason
from ..fsutil import file_digest, write_json_atomic, write_text_atomic
from ..records import read_classes

log = logging.getLogger(__name__)

MARK = "__fusion__"  # attribute of the Concat: the backbones' prefixes, comma-separated
FUSED_LAYER = "flatten0"
HEAD = "fc1"
EPOCH = 0  # a fused checkpoint is an epoch-0 checkpoint, as the zoo's are
DEFAULT_IMAGE_SHAPE = (3, 224, 224)  # a source without PREFIX-args.json: the zoo's input


def tag(index):
    """The prefix of backbone `index`: net0_, net1_, ..."""
    return f"net{index}_"


class FusionMismatch(UserError):
    """The fused parameters are not the sources' arrays under their prefixes (a bug, said loudly)."""


@dataclasses.dataclass
class Backbone:
    """One source, cut and renamed: symbol (its features, input `data`), arg_params and
    aux_params under the prefix, width (features per image), dropped (the source's
    arrays the cut network does not read: its old head)."""
    prefix: str
    epoch: int
    tag: str
    symbol: object
    arg_params: dict
    aux_params: dict
    width: int
    dropped: list


def renamed(symbol, prefix):
    """`symbol` with `prefix` before the name of every node but the `data` input."""
    def edit(node):
        if not (node["op"] == "null" and node["name"] == "data"):
            node["name"] = prefix + node["name"]
    return surgery.edit_nodes(symbol, edit)


def load_backbone(prefix, epoch, index, layer, image_shape):
    """Backbone `index` from checkpoint PREFIX at EPOCH, cut at `layer`, fed (C, H, W) images.

    Raises UserError (MissingFile) for a missing or corrupt checkpoint, a layer it
    lacks, or an array the cut network reads that is missing or of another shape.
    """
    import mxnet as mx
    symbol, arg_params, aux_params = load_checkpoint(prefix, epoch)
    features = surgery.cast_input(surgery.cut(symbol, layer), "float32")  # a float16 run's Cast goes
    try:
        # MXNet prints its arguments to stdout before raising: keep stdout for the result line
        with contextlib.redirect_stdout(io.StringIO()):
            arg_shapes, (out_shape,), aux_shapes = features.infer_shape(data=(1,) + tuple(image_shape))
    except mx.base.MXNetError as exc:
        raise UserError(f"--model-prefix {prefix}: its layer {layer} does not take input "
                        f"{','.join(map(str, image_shape))}: {mxnet_reason(exc)}") from None
    expected = {n: s for n, s in zip(features.list_arguments(), arg_shapes) if n != "data"}
    what = f"checkpoint {prefix} epoch {epoch}"
    args = match_params(expected, arg_params, "argument", what)
    aux = match_params(dict(zip(features.list_auxiliary_states(), aux_shapes)), aux_params, "auxiliary state", what)
    if len(out_shape) != 2:
        raise UserError(f"--layer-before-fullc {layer}: {prefix} gives {tuple(out_shape)} per batch there; "
                        f"fusion concatenates (N, D) features: cut at a flattened layer such as flatten0")
    dropped = sorted((set(arg_params) - set(args)) | (set(aux_params) - set(aux)))
    name = tag(index)
    return Backbone(prefix, epoch, name, renamed(features, name), {name + k: v for k, v in args.items()},
                    {name + k: v for k, v in aux.items()}, int(out_shape[1]), dropped)


def resolve_image_shape(prefixes, given):
    """(C, H, W) every backbone takes, and where it came from.

    One `data` input feeds every backbone, and each learned its features at the
    input size it was trained at, so the shapes the training runs recorded
    (PREFIX-args.json) must agree, and --image-shape must agree with them; a
    checkpoint without a record (the zoo's) takes --image-shape, else 3,224,224.
    """
    recorded = {}
    for prefix in prefixes:
        shape = checkpoint_image_shape(prefix)
        if shape is not None:
            recorded[prefix] = shape
    if len(set(recorded.values())) > 1 or (given and recorded and tuple(given) not in recorded.values()):
        said = ", ".join(f"{p} {','.join(map(str, s))}" for p, s in recorded.items())
        extra = f"; --image-shape {','.join(map(str, given))}" if given else ""
        raise UserError(f"the backbones were trained at other input shapes ({said}{extra}): one data input "
                        f"feeds them all, so fuse checkpoints trained at one input shape")
    if given:
        return tuple(given), "--image-shape"
    if recorded:
        return next(iter(recorded.values())), "PREFIX-args.json"
    return DEFAULT_IMAGE_SHAPE, "default"


def checkpoint_image_shape(prefix):
    """The (C, H, W) PREFIX-args.json records, or None (no record, or not three whole numbers)."""
    try:
        with open(f"{prefix}-args.json", encoding="utf-8") as f:
            shape = tuple(int(v) for v in json.load(f)["image_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return shape if len(shape) == 3 else None


def fused_symbol(backbones, num_classes):
    """data -> every backbone -> Concat 'flatten0' (marked) -> fc1 -> SoftmaxOutput 'softmax'."""
    import mxnet as mx
    data = mx.sym.Variable("data")
    features = mx.sym.Concat(*[b.symbol(data=data) for b in backbones], dim=1, name=FUSED_LAYER,
                             attr={MARK: ",".join(b.tag for b in backbones)})
    return surgery.attach_head(features, num_classes, HEAD)


def fuse(backbones, num_classes):
    """(symbol, arg_params, aux_params) of the fused network; the head fc1 at zero."""
    import mxnet as mx
    symbol = fused_symbol(backbones, num_classes)
    names = symbol.list_arguments() + symbol.list_auxiliary_states()
    assert len(names) == len(set(names)), "a name occurs twice in the fused network"
    args = {k: v for b in backbones for k, v in b.arg_params.items()}
    aux = {k: v for b in backbones for k, v in b.aux_params.items()}
    width = sum(b.width for b in backbones)
    args[f"{HEAD}_weight"] = mx.nd.zeros((num_classes, width))
    args[f"{HEAD}_bias"] = mx.nd.zeros((num_classes,))
    return symbol, args, aux


def check_saved(path, symbol, backbones, image_shape):
    """FusionMismatch unless the params file at `path` holds exactly what `symbol` reads at
    `image_shape` (names, shapes) and each backbone's arrays bit-identical under its prefix;
    returns the number of backbone arrays compared."""
    import mxnet as mx
    args, aux = checkpoint.split_params(mx.nd.load(path), path)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1,) + tuple(image_shape))
    expected = {n: s for n, s in zip(symbol.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    try:
        match_params(expected, args, "argument", "the fused parameter file")
        match_params(dict(zip(symbol.list_auxiliary_states(), aux_shapes)), aux, "auxiliary state",
                     "the fused parameter file")
    except UserError as exc:
        raise FusionMismatch(str(exc)) from None
    extra = sorted(set(args) - set(expected) | set(aux) - set(symbol.list_auxiliary_states()))
    changed = [f"{name} of {b.prefix}" for b in backbones
               for saved, source in ((args, b.arg_params), (aux, b.aux_params))
               for name, array in source.items() if not _same(saved.get(name), array)]
    if extra or changed:
        raise FusionMismatch(f"the fused parameter file is not its sources' arrays under their prefixes: "
                             f"{len(changed)} differ ({', '.join(changed[:5])}), {len(extra)} unexpected "
                             f"({', '.join(extra[:5])})")
    return sum(len(b.arg_params) + len(b.aux_params) for b in backbones)


def _same(saved, source):
    """Same name (saved is not None), shape, dtype and bytes."""
    if saved is None:
        return False
    a, b = saved.asnumpy(), source.asnumpy()
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def fuse_checkpoints(pairs, *, num_classes, out, layer=FUSED_LAYER, image_shape=None, classes=None):
    """Fuse the checkpoints [(prefix, epoch)] into checkpoint OUT (epoch 0); returns OUT-fusion.json's dict.

    image_shape: --image-shape or None (resolve_image_shape); classes: a class list
    file to copy as OUT-classes.txt (it must name num_classes classes).
    """
    if len(pairs) < 2:
        raise UserError(f"fusion needs two or more checkpoints: give --model-prefix/--epoch again "
                        f"({len(pairs)} given)")
    for prefix, _ in pairs:
        if os.path.abspath(prefix) == os.path.abspath(out):
            raise UserError(f"--out {out} is the prefix of a source checkpoint: it would be overwritten")
    names = read_classes(classes) if classes else None
    if names is not None and len(names) != num_classes:
        raise UserError(f"--classes {classes} lists {len(names)} classes but --num-classes is {num_classes}")
    shape, shape_from = resolve_image_shape([p for p, _ in pairs], image_shape)
    backbones = [load_backbone(prefix, epoch, i, layer, shape) for i, (prefix, epoch) in enumerate(pairs)]
    symbol, args, aux = fuse(backbones, num_classes)
    checked = write_fused(out, symbol, args, aux, backbones, shape)
    if names is not None:
        write_text_atomic(f"{out}-classes.txt", "\n".join(names) + "\n")
    summary = describe(out, backbones, layer, shape, shape_from, num_classes, checked)
    write_json_atomic(f"{out}-fusion.json", summary)  # last: the record of a complete fusion
    return summary


def write_fused(out, symbol, args, aux, backbones, image_shape):
    """OUT-0000.params (read back and checked before it is renamed), OUT-symbol.json and
    OUT-args.json (the input shape, for score.py and predict.py); returns check_saved's count."""
    import mxnet as mx
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    arrays = {**{f"arg:{k}": v for k, v in args.items()}, **{f"aux:{k}": v for k, v in aux.items()}}
    checked = []

    def write(tmp):
        mx.nd.save(tmp, arrays)
        checked.append(check_saved(tmp, symbol, backbones, image_shape))
    checkpoint.save_file_atomic(checkpoint.params_path(out, EPOCH), write)
    checkpoint.save_file_atomic(checkpoint.symbol_path(out), symbol.save)
    write_json_atomic(f"{out}-args.json", {"image_shape": list(image_shape), "fusion": f"{out}-fusion.json"})
    return checked[0]


def describe(out, backbones, layer, image_shape, shape_from, num_classes, checked):
    """OUT-fusion.json: what was fused (each source's files and digests), how, and what was checked."""
    return {
        "checkpoint": {"prefix": os.path.abspath(out), "epoch": EPOCH},
        "backbones": [{"prefix": os.path.abspath(b.prefix), "epoch": b.epoch, "tag": b.tag, "layer": layer,
                       "features": b.width, "arguments": len(b.arg_params), "auxiliary_states": len(b.aux_params),
                       "dropped": b.dropped,
                       "sha256": {os.path.basename(p): file_digest(p) for p in
                                  (checkpoint.symbol_path(b.prefix), checkpoint.params_path(b.prefix, b.epoch))}}
                      for b in backbones],
        "image_shape": list(image_shape), "image_shape_from": shape_from,
        "fused_layer": FUSED_LAYER, "features": sum(b.width for b in backbones),
        "head": HEAD, "num_classes": num_classes, "head_init": "zeros",
        "checked": f"{checked} backbone arrays bit-identical under their prefixes; every array the fused "
                   f"network reads present with its shape, and no other",
    }


def fused_backbones(pretrained):
    """The backbone prefixes of a fused checkpoint PREFIX (its symbol's mark), [] for any other
    checkpoint or a zoo name; reads PREFIX-symbol.json only (a missing one is reported later)."""
    if not pretrained or pretrained in modelzoo.MODELS:
        return []
    try:
        with open(checkpoint.symbol_path(pretrained), encoding="utf-8") as f:
            nodes = json.load(f)["nodes"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    marks = [node.get("attrs", {}).get(MARK) for node in nodes if node.get("op") == "Concat"]
    return next((mark.split(",") for mark in marks if mark), [])


def default_mode(mode, pretrained):
    """--mode as given, else last-layer for a fused --pretrained-model (its backbones stay
    frozen) and full for any other."""
    if mode:
        return mode
    tags = fused_backbones(pretrained)
    if not tags:
        return "full"
    log.info("--pretrained-model %s fuses %d backbones (%s): --mode last-layer, the backbones frozen "
             "(--mode full trains them too, --freeze-until %s keeps one frozen)", pretrained, len(tags),
             ", ".join(tags), tags[0].rstrip("_"))
    return "last-layer"
