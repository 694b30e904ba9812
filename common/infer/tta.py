"""Test-time augmentation: the softmax averaged over crops and mirrors of each image.

The views of an image are common.transforms.tta_views: the center crop and the
four corner crops, each also mirrored (10 views), at each of --tta-scales. The
image is the one validation sees before its crop: for a .rec, the packed record
decoded as MXNet's iterator decodes it; for a file, preprocess's decode and
resize. The first view is exactly validation's input, so the plain figures and
the TTA ones come from the same pixels.
"""
import argparse

import numpy as np

from .model import forward
from .. import evaluate
from ..cli import UserError, progress
from ..records import iter_images
from ..transforms import TTA_CROPS, tta_views


def scale_list(text):
    """argparse type: '1,1.15' -> (1.0, 1.15); every scale > 0, no repeats."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0 or len(set(scales)) != len(scales):
        raise argparse.ArgumentTypeError(f"expected distinct positive scales like 1,1.15, got {text!r}")
    return scales


def views_per_image(scales, crops=TTA_CROPS, mirror=True):
    return len(scales) * len(crops) * (2 if mirror else 1)


def average_views(model, images, **views):
    """(N, C) probabilities: for each decoded image, the mean softmax over its views.

    images: an iterable of BGR images; views: tta_views' keywords. The views are
    forwarded a full batch at a time.
    """
    pending, owners, sums, count = [], [], [], 0
    for index, image in enumerate(images):
        image_views = tta_views(image, model.image_shape, **views)
        pending += image_views
        owners += [index] * len(image_views)
        sums.append(np.zeros(model.num_classes, np.float64))
        count = len(image_views)
        while len(pending) >= model.batch_size:
            _add(model, pending[:model.batch_size], owners[:model.batch_size], sums)
            del pending[:model.batch_size], owners[:model.batch_size]
    if pending:
        _add(model, pending, owners, sums)
    return (np.stack(sums) / count).astype(np.float32) if sums else np.zeros((0, model.num_classes), np.float32)


def _add(model, arrays, owners, sums):
    for owner, probs in zip(owners, forward(model, np.stack(arrays))):
        sums[owner] += probs


def record_probabilities(model, record_set, **views):
    """(N, C) TTA probabilities of every record of a checked RecordSet, in .idx order."""
    images = (image for _, image in iter_images(record_set.rec, record_set.idx))
    return average_views(model, progress(images, total=len(record_set), desc="tta", unit="img"), **views)


def summarize(probs, labels, num_classes, top_k, scales):
    """score.json's "tta": the figures of TTA probabilities (N, C), with the views they averaged."""
    return dict(evaluate.summarize(probs, labels, num_classes, top_k), views=views_per_image(scales),
                scales=list(scales))


def add_tta_args(group):
    """--tta and --tta-scales (predict.py and score.py)."""
    group.add_argument("--tta", action="store_true",
                       help="also average the softmax over the center and 4 corner crops and their mirrors")
    group.add_argument("--tta-scales", metavar="S,S", type=scale_list,
                       help="with --tta: shorter-side scales of the views, e.g. 1,1.15 (default: 1)")


def resolve_scales(tta, scales):
    """The scales to use (None: no TTA); --tta-scales without --tta is an error, not ignored."""
    if scales and not tta:
        raise UserError(f"--tta-scales {','.join(map(str, scales))} needs --tta")
    return (scales or (1.0,)) if tta else None
