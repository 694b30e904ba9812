"""--multi-scale MIN,MAX: each training batch at a random input size (multi-scale training).

Batch B of epoch E is resized, as a whole, from --image-shape's H x W to one of the
sizes whose height is a multiple of STEP pixels between MIN x H and MAX x H (the width
scaled alike and rounded to a multiple of STEP), drawn uniformly. The network sees its
objects at other scales than the iterator's crop gives them, which is what the
multi-scale training of GluonCV's detectors and of SSD/YOLO does; validation, the
checkpoint, score.py and predict.py stay at --image-shape.

What makes it work with one bound Module: every network here pools globally before its
classifier (the zoo's ResNets too: Pooling global_pool=True), so the same weights take
any input size, and Module.forward reshapes its executors when a batch's shape differs
from the bound one (about 13 ms a reshape for ResNet-18, against 0.4 s a batch on this
machine; memory stops growing after the first few sizes). After each epoch the Module is
reshaped back to the bound shape before anything is validated (restore).

The resize is MXNet's BilinearResize2D of the iterator's batch (after mixing, when
--mixup mixes it): enlarging adds no detail, shrinking below half a size would alias,
hence MIN >= 0.5 and MAX <= 2. The draw of batch B of epoch E depends on (seed, E, B,
rank) alone, so a run resumed mid-epoch resizes the rest as an unbroken run does.
Cached features (--cache-features, --head) are refused: they are computed once, at
--image-shape.
"""
import argparse
import logging

import numpy as np

from ..cli import UserError

log = logging.getLogger(__name__)

STEP = 8  # sizes are multiples of this many pixels (convolution strides divide them more evenly)
LIMITS = (0.5, 2.0)


def scale_range(text):
    """argparse type: 'MIN,MAX' -> (MIN, MAX) with 0.5 <= MIN <= MAX <= 2."""
    try:
        pair = tuple(float(part) for part in text.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2 or not LIMITS[0] <= pair[0] <= pair[1] <= LIMITS[1]:
        raise argparse.ArgumentTypeError(f"expected two factors MIN,MAX of the input size with "
                                         f"{LIMITS[0]:g} <= MIN <= MAX <= {LIMITS[1]:g}, got {text!r}")
    return pair


def add_multiscale_args(group):
    group.add_argument("--multi-scale", metavar="MIN,MAX", type=scale_range, default=None,
                       help=f"train each batch at a random input size, a multiple of {STEP} px between MIN and "
                            f"MAX times --image-shape's (factors in [{LIMITS[0]:g}, {LIMITS[1]:g}]); validation "
                            f"and checkpoints stay at --image-shape (default: off)")


def check_multiscale_args(scales, image_shape, *, cache):
    """The sizes of --multi-scale (None when off); UserError (one line) with cached features
    or for a range that holds no size."""
    if scales is None:
        return None
    if cache:
        raise UserError(f"--multi-scale {scales[0]:g},{scales[1]:g} resizes training batches, which "
                        f"--cache-features (or a scikit-learn --head) replaces by features computed once at "
                        f"--image-shape: give one or the other")
    found = sizes(image_shape, *scales)
    if not found:
        height = image_shape[1]
        raise UserError(f"--multi-scale {scales[0]:g},{scales[1]:g}: no multiple of {STEP} px lies between "
                        f"{scales[0] * height:g} and {scales[1] * height:g} (--image-shape height {height}); "
                        f"widen the range")
    return found


def sizes(image_shape, low, high):
    """[(height, width)]: heights the multiples of STEP in [low * H, high * H], widths
    height * W / H rounded to a multiple of STEP (at least STEP)."""
    _, height, width = image_shape
    first, last = int(np.ceil(low * height / STEP - 1e-9)), int(np.floor(high * height / STEP + 1e-9))
    return [(k * STEP, max(STEP, int(k * STEP * width / height / STEP + 0.5) * STEP))
            for k in range(max(first, 1), last + 1)]


class MultiScale:
    """Resizes training batches (a batch transform, as mixup.Mixup is one); sizes: the
    (height, width) to draw from; seed and rank: what the draws depend on."""

    def __init__(self, sizes, *, seed=0, rank=0):
        self.sizes, self.seed, self.rank = list(sizes), seed, rank
        self.bound = None
        log.info("--multi-scale: training batches at %s px, drawn per batch; validation at the bound size",
                 ", ".join(f"{h}x{w}" for h, w in self.sizes))

    def draw(self, epoch, nbatch):
        """The (height, width) of batch `nbatch` (0-based) of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, nbatch, self.rank, 1])
        return self.sizes[int(rng.integers(len(self.sizes)))]

    def __call__(self, batch, epoch, nbatch):
        """The batch, resized to this batch's draw."""
        import mxnet as mx
        data = batch.data[0]
        height, width = self.draw(epoch, nbatch)
        if data.shape[2:] == (height, width):
            return batch
        resized = mx.nd.contrib.BilinearResize2D(data, height=height, width=width)
        # provide_data: what Module.forward reshapes its executors to.
        return mx.io.DataBatch(data=[resized], label=batch.label, pad=batch.pad, index=batch.index,
                               provide_data=[mx.io.DataDesc("data", resized.shape, resized.dtype)],
                               provide_label=getattr(batch, "provide_label", None))

    def remember(self, module):
        """Note `module`'s bound shapes, which restore() returns it to."""
        self.bound = (module.data_shapes, module.label_shapes)

    def restore(self, module):
        """Reshape `module` back to the shapes remember() saw, if a batch changed them."""
        if [d.shape for d in module.data_shapes] != [d.shape for d in self.bound[0]]:
            module.reshape(*self.bound)


def chain(mix, scale):
    """One batch transform of train_epoch's kind, (batch, epoch, nbatch) -> (batch to train
    on, labels of the training metric), from a mixup.Mixup (which changes the labels) and a
    MultiScale (which does not), each None when off; None when both are."""
    if scale is None:
        return mix
    if mix is None:
        return lambda batch, epoch, nbatch: (scale(batch, epoch, nbatch), batch.label)

    def both(batch, epoch, nbatch):
        mixed, labels = mix(batch, epoch, nbatch)
        return scale(mixed, epoch, nbatch), labels
    return both
