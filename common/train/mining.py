"""--hard-mining FRACTION: the training images with the highest loss after an epoch are
seen twice in the next one.

After epoch E (its parameters final and validated) every training image is
scored once with the validation pipeline (center crop, no mirror:
common.evaluate.image_losses), so that its loss depends on the parameters alone,
not on that epoch's random crops. The top FRACTION of them are epoch E+1's hard
set: common.train.sampling.hard_order shows each of them twice and leaves as
many other images out, so the epoch stays N images and the schedule's updates
per epoch hold. That is why FRACTION is at most one half: each hard image takes
the place of another one. Epoch 1 is the plain order; nothing is mined after
the last epoch.

The hard set is recorded in epoch E's manifest and in the mid-epoch manifest of
epoch E+1 ("hard_mining": its epoch, positions, loss threshold), so a resumed
run trains on exactly the order an unbroken one did without scoring again. A run
continued past its last epoch (a larger --num-epochs) finds none recorded and
mines from the checkpoint it loads, which is what an unbroken run would have
mined from.
"""
import logging
import time

import numpy as np

from ..cli import UserError, float_range

log = logging.getLogger(__name__)

MAX_FRACTION = 0.5  # each hard image takes the place of another: at most half can be hard


def add_mining_args(group):
    group.add_argument("--hard-mining", metavar="FRACTION", type=float_range(0, MAX_FRACTION, low_open=True),
                       help="after each epoch, the FRACTION of training images with the highest loss "
                            "are seen twice in the next epoch, in place of as many others")


def check_mining_args(hard_mining, *, balanced, kv_store, cache):
    """UserError (one line, naming the options) for what --hard-mining does not combine with."""
    if not hard_mining:
        return
    if balanced:
        raise UserError("--hard-mining and --balanced-sampling cannot be combined: each decides on its own "
                        "which images an epoch repeats; give one of them")
    if kv_store.startswith("dist"):
        raise UserError(f"--hard-mining scores the whole training set in one process: use --kv-store device "
                        f"or local (--kv-store {kv_store} was given)")
    if cache:
        raise UserError("--hard-mining needs the training images, not cached features: drop --cache-features "
                        "(and --head)")


def pick_hard(losses, fraction):
    """(sorted positions of the floor(fraction * N) highest losses, at least 1 and at most
    N // 2; the lowest loss among them, or None for no image)."""
    count = min(max(1, int(fraction * len(losses))), len(losses) // 2)
    # stable: ties at the threshold go to the earlier record, the same in every run
    top = np.argsort(-np.asarray(losses), kind="stable")[:count]
    return np.sort(top), (float(losses[top[-1]]) if count else None)


class HardMiner:
    """The epoch-end callback and the manifest fields of --hard-mining.

    score(module): the (N,) losses of the training images, in record order.
    labels: their (N,) labels (for the log). last_epoch: the run's final epoch.
    """

    def __init__(self, fraction, score, *, labels, last_epoch):
        self.fraction, self.score, self.labels, self.last_epoch = fraction, score, labels, last_epoch
        self.current = None  # the latest hard set, as manifests record it

    def resume(self, start, module):
        """Take the hard set of epoch start.epoch + 1 from start's manifest (resume.Start),
        or mine it from the loaded `module` when an epoch's checkpoint records none."""
        if start.epoch == 0:
            return  # epoch 1 is the plain order
        recorded = start.manifest.get("hard_mining")
        if recorded and recorded["epoch"] == start.epoch + 1:
            self.current = recorded
            log.info("hard mining: epoch %d's hard set (%d images) from the checkpoint", recorded["epoch"],
                     len(recorded["positions"]))
        elif start.batch:
            raise UserError(f"the mid-epoch checkpoint of epoch {start.epoch + 1} records no hard set; "
                            f"pass --load-epoch {start.epoch} to continue from its last committed epoch")
        else:
            self.mine(module, start.epoch + 1)

    def hard_for(self, epoch):
        """The positions epoch `epoch` sees twice, or None."""
        current = self.current
        return current["positions"] if current and current["epoch"] == epoch else None

    def epoch_end(self, end):
        if end.epoch < self.last_epoch:
            self.mine(end.module, end.epoch + 1)
        else:
            self.current = None  # no next epoch: its manifest records no hard set

    def mine(self, module, epoch):
        """Score every training image with `module` and keep the hard set of `epoch`."""
        tic = time.time()
        losses = self.score(module)
        positions, threshold = pick_hard(losses, self.fraction)
        self.current = {"epoch": epoch, "fraction": self.fraction, "threshold": threshold,
                        "positions": positions.tolist()}
        log.info("%s (scored in %.1f s)", describe(losses, positions, self.labels, epoch), time.time() - tic)

    def fields(self):
        """What a manifest records: the hard set of the epoch being trained or next."""
        return {"hard_mining": self.current} if self.current else {}


def describe(losses, positions, labels, epoch):
    """One log line: how many images were mined, the loss threshold, their classes."""
    if not len(positions):
        return f"hard mining: {len(losses)} training images are too few to mine; epoch {epoch} is plain"
    classes = np.bincount(labels[positions])
    top = np.argsort(-classes, kind="stable")[:3]
    return (f"hard mining for epoch {epoch}: the {len(positions)} of {len(losses)} training images with "
            f"loss >= {losses[positions].min():.4f} (their mean {losses[positions].mean():.4f}, all images' "
            f"{losses.mean():.4f}) are seen twice, as many others sit out; labels (images): "
            + ", ".join(f"{c} ({classes[c]})" for c in top if classes[c])
            + (f" and {np.count_nonzero(classes) - 3} more" if np.count_nonzero(classes) > 3 else ""))
