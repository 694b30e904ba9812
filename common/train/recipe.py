"""Training recipes (--recipe): named presets of the options that shape training.

  classic  the published Caltech-256 recipe, the entry script's defaults: SGD lr 0.01,
           no momentum, no weight decay, random crop + mirror, step schedule
           without steps. A run without --recipe is a classic one.
  modern   momentum and weight decay (none on BatchNorm and biases), a tenth of
           the learning rate for pretrained layers, cosine decay after a warm-up
           epoch, label smoothing, RandomResizedCrop and colour jitter (MODERN).

Each piece is also an option of its own, so one can be taken alone
(--label-smoothing 0.1), and an option given on the command line always wins over
the preset (--recipe modern --mom 0.5, --recipe modern --no-random-resized-crop):
the preset fills only the options the command line leaves out. PREFIX-args.json
records the resolved values, `recipe` and `recipe_filled` (what the preset set).

--mixup, --ema and --multi-scale (common.train.mixup, .ema, .multiscale) are not in
MODERN. On bench/bench_recipe.py's photograph task (README "Recipe log": ResNet-20 at 32 px,
96 regions of 6 photographs, 8 epochs, seeds 0-2, 2026-12-03) modern alone ended at 0.409
(0.407-0.429) validation accuracy; with --mixup 0.2 at 0.370, with --ema 0.99 at 0.413 and
with --multi-scale 0.75,1.25 at 0.411, each within or below the seeds' spread: no evidence
that they help a short fine-tuning run, so each stays a flag of its own.
"""
import argparse
import logging

from ..cli import UserError

log = logging.getLogger(__name__)

# What --recipe modern fills in, by argparse dest. Units: lr multipliers and rates are
# factors, warmup_epochs in epochs, crop_area in fractions of the image's area.
MODERN = {
    "mom": 0.9,
    "wd": 1e-4,
    "no_wd_bn_bias": True,
    "lr_mult_pretrained": 0.1,  # --mode full only (the option applies to nothing else)
    "lr_schedule": "cosine",
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "random_resized_crop": True,
    "crop_area": (0.35, 1.0),
    "crop_aspect": (3 / 4, 4 / 3),
    "color_jitter": 0.2,
}
PRESETS = {"classic": {}, "modern": MODERN}
# Every option a preset may fill: the ones whose absence from the command line is noted.
OPTIONS = sorted(set().union(*PRESETS.values()))
AUGMENT = ("random_resized_crop", "color_jitter")  # what cached features cannot have
_CROP_SHAPE = ("crop_area", "crop_aspect")  # what only --random-resized-crop uses


class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()


def add_recipe_args(parser):
    group = parser.add_argument_group("recipe")
    group.add_argument("--recipe", choices=sorted(PRESETS), default="classic",
                       help="preset of training options; explicit options win (see common/train/recipe.py, README)")
    return group


def parse_args(parser, argv):
    """(parser.parse_args(argv), the OPTIONS the command line gave)."""
    namespace = argparse.Namespace(**{dest: _UNSET for dest in OPTIONS})
    args = parser.parse_args(argv, namespace)
    given = {dest for dest in OPTIONS if getattr(args, dest) is not _UNSET}
    for dest in set(OPTIONS) - given:
        setattr(args, dest, parser.get_default(dest))
    return args, given


def apply(args, given):
    """Fill the preset's options the command line did not give (args.mode resolved first:
    the preset's --lr-mult-pretrained applies to --mode full only, augmentation not to
    cached features); records args.recipe_filled. UserError for a crop shape given
    without --random-resized-crop or augmentation with cached features."""
    cached = args.cache_features or args.head != "fc"
    skip = ({"lr_mult_pretrained"} if args.mode != "full" else set()) | (set(AUGMENT) if cached else set())
    filled = {dest: value for dest, value in PRESETS[args.recipe].items() if dest not in given | skip}
    for dest, value in filled.items():
        setattr(args, dest, value)
    args.recipe_filled = sorted(filled)
    if filled:
        log.info("--recipe %s: %s", args.recipe, ", ".join(f"{dest}={_shown(filled[dest])}" for dest in sorted(filled)))
    for dest in _CROP_SHAPE:
        if dest in given and not args.random_resized_crop:
            raise UserError(f"--{dest.replace('_', '-')} {_shown(getattr(args, dest))} applies with "
                            f"--random-resized-crop only")
    if cached and (args.random_resized_crop or args.color_jitter):
        raise UserError("--random-resized-crop and --color-jitter augment the training images, which "
                        "--cache-features (or a scikit-learn --head) computes once, unaugmented: give one or the other")
    return args


def _shown(value):
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def augment(args):
    """The transforms.Augment of the resolved options, or None for none."""
    from ..transforms import Augment
    if not (args.random_resized_crop or args.color_jitter):
        return None
    return Augment(resized_crop=args.random_resized_crop, area=tuple(args.crop_area),
                   aspect=tuple(args.crop_aspect), color=args.color_jitter)
