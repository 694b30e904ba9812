"""Networks and the fine-tuning modes: which symbol to train, from which weights.

Modes (--mode):
  full        every layer trains; pretrained layers at lr * --lr-mult-pretrained
  last-layer  only the new head trains; the backbone, including its BatchNorm
              statistics, stays exactly as pretrained
  scratch     the same network from random weights, for comparison
The fourth use of a pretrained network, predicting without training, is predict.py.
"""
import dataclasses
import logging

import symbols
from . import modelzoo, surgery
from ..checkpoint import load_checkpoint
from ..cli import UserError, float_range, nonnegative_int
from ..devices import DTYPES

log = logging.getLogger(__name__)

MODES = ("full", "last-layer", "scratch")


def add_model_args(parser):
    """The model argument group (network, pretrained weights, mode).

    --network and --layer-before-fullc have no default here: the entry script's
    recipe sets them (train_caltech.py RECIPE).
    """
    model = parser.add_argument_group("model")
    model.add_argument("--network", choices=list(symbols.NETWORKS), metavar="NAME",
                       help="symbols/ network (" + ", ".join(symbols.NETWORKS) + "): used by --mode "
                            "scratch, and to pick the default --pretrained-model and --model-prefix")
    model.add_argument("--mode", choices=MODES,
                       help="what trains (see README; default: full, but last-layer when --pretrained-model "
                            "is a fused checkpoint of fuse_models.py, whose backbones then stay frozen)")
    model.add_argument("--pretrained-model", metavar="NAME|PREFIX",
                       help="model-zoo name (" + ", ".join(modelzoo.MODELS) + ") or a local "
                            "checkpoint prefix (default: imagenet1k-NETWORK)")
    model.add_argument("--pretrained-epoch", metavar="N", type=nonnegative_int, default=0,
                       help="epoch of a local pretrained checkpoint (zoo names know theirs)")
    model.add_argument("--model-dir", metavar="DIR", default="model",
                       help="where zoo checkpoints are downloaded")
    model.add_argument("--layer-before-fullc", metavar="LAYER",
                       help="cut the pretrained network at this layer's output")
    model.add_argument("--freeze-until", metavar="LAYER",
                       help="--mode full: freeze this layer and all it depends on (a name, or a prefix such "
                            "as stage3 for a whole stage), BatchNorm statistics included; the rest trains")
    model.add_argument("--lr-mult-pretrained", metavar="X", type=float_range(0), default=1.0,
                       help="--mode full: learning-rate multiplier of pretrained layers (e.g. 0.1)")
    model.add_argument("--label-smoothing", metavar="ALPHA", type=float_range(0, 1, high_open=True), default=0.0,
                       help="train the new head against 1 - ALPHA on the label and ALPHA spread over the other "
                            "classes (SoftmaxOutput smooth_alpha), ALPHA in [0, 1); predictions are unchanged")
    model.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="compute type; float16 keeps float32 master weights (multi_precision)")
    return model


@dataclasses.dataclass
class Model:
    """A symbol to train and where its parameters start from.

    arg_params/aux_params: arrays to load; fresh: argument names to initialize;
    fixed: argument names that must not change (the backbone in last-layer
    mode; in every mode the gammas BatchNorm ignores, see surgery.fixed_gammas).
    """
    symbol: object
    arg_params: dict
    aux_params: dict
    fresh: list
    fixed: list


def network_symbol(network, num_classes, image_shape, dtype="float32"):
    """The symbols/ network called `network` ('resnet-50') with a fresh fc1/softmax."""
    if network not in symbols.NETWORKS:
        raise UserError(f"--network {network}: valid: {', '.join(symbols.NETWORKS)}")
    try:
        return symbols.get_symbol(network, num_classes=num_classes, image_shape=image_shape, dtype=dtype)
    except ValueError as exc:
        raise UserError(f"--network {network} with --image-shape {','.join(map(str, image_shape))}: {exc}") from None


def build_model(*, mode, network, num_classes, image_shape, dtype="float32", pretrained=None,
                pretrained_epoch=0, model_dir="model", layer="flatten0", lr_mult_pretrained=1.0,
                freeze_until=None, no_wd_bn_bias=False, label_smoothing=0.0):
    """The Model for `mode`; see the module docstring.

    no_wd_bn_bias: no weight decay on BatchNorm gamma/beta and biases (surgery.no_decay_names);
    label_smoothing: the loss's smooth_alpha. Both are symbol attributes, saved with it.
    """
    model = _model(mode=mode, network=network, num_classes=num_classes, image_shape=image_shape, dtype=dtype,
                   pretrained=pretrained, pretrained_epoch=pretrained_epoch, model_dir=model_dir, layer=layer,
                   lr_mult_pretrained=lr_mult_pretrained, freeze_until=freeze_until)
    if no_wd_bn_bias:
        spared = surgery.no_decay_names(model.symbol)
        model.symbol = surgery.set_wd_mult(model.symbol, spared, 0.0)
        log.info("--no-wd-bn-bias: no weight decay on %d BatchNorm gammas/betas and biases", len(spared))
    if label_smoothing:
        model.symbol = surgery.set_label_smoothing(model.symbol, label_smoothing)
    return model


def _model(*, mode, network, num_classes, image_shape, dtype, pretrained, pretrained_epoch, model_dir, layer,
           lr_mult_pretrained, freeze_until):
    for flag, value, given in (("--lr-mult-pretrained", f"{lr_mult_pretrained:g}", lr_mult_pretrained != 1.0),
                               ("--freeze-until", freeze_until, freeze_until)):
        if given and mode != "full":
            raise UserError(f"{flag} {value} applies to --mode full only (--mode {mode} was given)")
    if mode == "scratch":
        symbol = network_symbol(network, num_classes, image_shape, dtype)
        return Model(symbol, {}, {}, fresh=_trainable(symbol), fixed=_fixed(symbol, []))
    cut, freeze = pretrained_surgery(network=network, num_classes=num_classes, image_shape=image_shape,
                                     dtype=dtype, pretrained=pretrained, pretrained_epoch=pretrained_epoch,
                                     model_dir=model_dir, layer=layer, freeze_until=freeze_until)
    symbol, frozen = cut.symbol, []
    if mode == "last-layer":
        symbol = surgery.freeze_batchnorm(symbol, surgery.operator_names(symbol, "BatchNorm"))
        frozen = cut.backbone
    elif freeze:
        symbol, frozen = _freeze_until(symbol, freeze_until, freeze)
    if lr_mult_pretrained != 1.0:
        symbol = surgery.set_lr_mult(symbol, set(cut.backbone) - set(frozen), lr_mult_pretrained)
    return Model(symbol, cut.loaded_args, cut.loaded_aux, fresh=cut.head, fixed=_fixed(symbol, frozen))


def _freeze_until(symbol, layer, freeze):
    """(symbol with the frozen part's BatchNorm on its moving statistics, frozen argument names).

    freeze: surgery.frozen_until's (argument names, BatchNorm names) for `layer`."""
    frozen, norms = freeze
    training = sorted(set(symbol.list_arguments()) - frozen - {"data", "softmax_label"})
    log.info("--freeze-until %s: %d arguments and %d BatchNorm layers frozen; training %d: %s", layer,
             len(frozen), len(norms), len(training), ", ".join(training))
    return surgery.freeze_batchnorm(symbol, norms), sorted(frozen)


def _fixed(symbol, frozen):
    return sorted(set(frozen) | surgery.fixed_gammas(symbol))


def pretrained_surgery(*, network, num_classes, image_shape, dtype, pretrained, pretrained_epoch,
                       model_dir, layer, freeze_until=None):
    """Load the pretrained checkpoint (zoo or local) and fit it with a new head; returns
    (surgery.Surgery, surgery.frozen_until's result for freeze_until, or None).

    A bad --freeze-until is found before anything is logged: one line, like every misuse.
    """
    name = pretrained or modelzoo.default_pretrained(network)
    if name is None:
        raise UserError(f"--network {network} has no model-zoo checkpoint; pass --pretrained-model "
                        f"PREFIX (or --mode scratch)")
    prefix, epoch = modelzoo.resolve_pretrained(name, pretrained_epoch, model_dir)
    flags = {} if name in modelzoo.MODELS else modelzoo.pretrained_flags()
    symbol, args, aux = load_checkpoint(prefix, epoch, **flags)
    cut = surgery.build(symbol, args, aux, num_classes, layer, (1,) + tuple(image_shape), dtype)
    freeze = surgery.frozen_until(cut.symbol, freeze_until) if freeze_until else None
    if freeze and freeze[0] & set(cut.head):
        raise UserError(f"--freeze-until {freeze_until} freezes the new head too: nothing would train; "
                        f"name a layer before --layer-before-fullc")
    log.info("pretrained model %s (epoch %d), cut at %s", prefix, epoch, layer)
    surgery.log_surgery(cut)
    return cut, freeze


def _trainable(symbol):
    return [name for name in symbol.list_arguments() if name not in ("data", "softmax_label")]
