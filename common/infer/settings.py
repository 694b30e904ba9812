"""What an inference run uses, and where each value came from.

A training run leaves PREFIX-args.json (its resolved settings) and
PREFIX-classes.txt beside its checkpoints; when they are there they supply the
defaults: the input shape, the images' resize and the class names. A model-zoo
checkpoint has neither, and gets the ImageNet conventions. Each resolved value is
a Setting that says its source, which predict.py and score.py print.
"""
import argparse
import dataclasses
import os

from ..fsutil import read_json
from ..cli import HelpFormatter, MissingFile, OneLineArgumentParser, UserError, nonnegative_int, positive_int
from ..devices import add_device_args
from ..records import packed_resize, read_classes
from ..transforms import image_shape as image_shape_type

DEFAULT_IMAGE_SHAPE = (3, 224, 224)
# Without a recorded resize: the ImageNet convention, 256-px images for a 224 crop
# (the crop is 7/8 of the shorter side). As a fraction: 16 -> 18, 224 -> 256.
RESIZE_PER_CROP = (8, 7)


def base_parser(prog, description, top_k_default, top_k_help, add_help=True, several=False):
    """The parser predict.py and score.py share: checkpoint options and --top-k.

    several: --model-prefix and --epoch may be repeated (lists; see add_checkpoint_args).
    """
    parser = OneLineArgumentParser(prog=prog, description=description, add_help=add_help,
                                   formatter_class=HelpFormatter)
    add_checkpoint_args(parser, several=several)
    parser.add_argument("--top-k", metavar="K", type=positive_int,
                        help=f"{top_k_help} (default: {top_k_default}, or all classes if fewer)")
    return parser


def add_checkpoint_args(parser, classes=True, several=False):
    """The checkpoint argument group the inference scripts share (model, input, devices).

    classes: also --classes (the names of the model's outputs). several: each of
    --model-prefix and --epoch may be given again (an ensemble) and parses to a list,
    the i-th --epoch belonging to the i-th --model-prefix.
    """
    group = parser.add_argument_group("checkpoint")
    again = dict(action="append") if several else {}
    more = "; repeat for an ensemble, each --model-prefix followed by its --epoch" if several else ""
    group.add_argument("--model-prefix", metavar="PREFIX", required=True, **again,
                       help=f"checkpoint prefix: PREFIX-symbol.json and PREFIX-EPOCH.params{more}")
    group.add_argument("--epoch", metavar="N", type=nonnegative_int, required=True, **again,
                       help="checkpoint epoch (0 for the model zoo's files)")
    if classes:
        group.add_argument("--classes", metavar="FILE",
                           help="class names, one per line (default: PREFIX-classes.txt; "
                                "without either, label indices are shown)")
    group.add_argument("--image-shape", metavar="C,H,W", type=image_shape_type,
                       help="network input C,H,W (default: the training run's, from "
                            "PREFIX-args.json, else 3,224,224)")
    group.add_argument("--batch-size", metavar="N", type=positive_int, default=32,
                       help="images per forward pass, over all devices")
    add_device_args(group)
    return group


def add_resize_arg(group):
    """--resize: the shorter side image files are resized to before the center crop."""
    group.add_argument("--resize", metavar="N", type=nonnegative_int,
                       help="image files: shorter side in px before the center crop, 0 keeps the size "
                            "(default: the training data's --resize, else 8/7 of the crop, e.g. 256 for 224)")


@dataclasses.dataclass
class Setting:
    """A resolved value and where it came from (said in the output)."""
    value: object
    source: str


def recorded_args(prefix):
    """PREFIX-args.json of the training run as a dict ({} for zoo checkpoints)."""
    recorded = read_json(f"{prefix}-args.json", {})
    return recorded if isinstance(recorded, dict) else {}


def resolve_image_shape(given, recorded):
    """Setting((C, H, W)): --image-shape, else the training run's, else 3,224,224."""
    if given is not None:
        return Setting(tuple(given), "--image-shape")
    shape = recorded.get("image_shape")
    try:
        return Setting(image_shape_type(",".join(str(int(v)) for v in shape)), "PREFIX-args.json")
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return Setting(DEFAULT_IMAGE_SHAPE, "default")


def recorded_resize(recorded):
    """(resize, summary.json path) prepare_data.sh packed the run's data with, or None."""
    for key in ("data_val", "data_train"):
        rec = recorded.get(key)
        found = packed_resize(rec) if isinstance(rec, str) else None
        if found is not None:
            return found
    return None


def resolve_resize(given, recorded, image_shape):
    """Setting(shorter side in px, 0 = keep): --resize, the data's, else 8/7 of the crop."""
    if given is not None:
        return Setting(given, "--resize")
    found = recorded_resize(recorded)
    if found is not None:
        return Setting(found[0], f"the training data's {found[1]}")
    crop = max(image_shape[1:])
    return Setting(crop * RESIZE_PER_CROP[0] // RESIZE_PER_CROP[1], "default: 8/7 of the crop")


def resolve_classes(classes_file, prefix, num_classes):
    """Setting(names or None): --classes, else PREFIX-classes.txt, else None (indices).

    Raises UserError if the list does not have one name per output of the model.
    """
    if classes_file is not None and not os.path.isfile(classes_file):
        raise MissingFile(f"--classes {classes_file}: no such file")
    path = classes_file or f"{prefix}-classes.txt"
    if not os.path.isfile(path):
        return Setting(None, f"none (no {path}, no --classes): showing label indices")
    names = read_classes(path)
    if len(names) != num_classes:
        raise UserError(f"{path} lists {len(names)} class names but the checkpoint predicts "
                        f"{num_classes} classes")
    return Setting(names, path)
