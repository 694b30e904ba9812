"""Which training images an epoch sees: its own part for each dist worker, class-balanced
draws, hard examples seen twice.

By default a single process walks the whole training .rec once an epoch (the
iterator shuffles it through the .idx). Three things change that, and each is a
list of record positions per epoch, copied into a .rec of its own:

- with a dist kvstore, worker r of W takes its own N // W positions of a
  permutation seeded by the epoch (common.train.dist says why not num_parts);
- with --balanced-sampling, the epoch's N positions are drawn with replacement:
  a class uniformly among those with training images, then an image of it
  uniformly, so that every class is seen about as often whatever its size;
- with --hard-mining, the epoch's hard set (common.train.mining) is seen twice,
  and as many other images sit out, so that the epoch stays N images.

The draw depends only on the epoch's seed (and its recorded hard set): a resumed
run sees the same images.
"""
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from .. import records

log = logging.getLogger(__name__)


def balanced_draw(labels, seed, count=None):
    """`count` (default len(labels)) positions: a class uniformly among those present, then
    one of its images uniformly; with replacement, seeded."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    picked = rng.choice(classes, size=len(labels) if count is None else count)
    return np.array([members[c][rng.integers(len(members[c]))] for c in picked], dtype=np.int64)


def hard_order(total, hard, seed):
    """`total` positions that show each of `hard` (distinct positions, at most total // 2)
    twice and total - 2 * len(hard) of the others once, those chosen at random by `seed`:
    len(hard) of the others sit out, different ones each epoch."""
    hard = np.asarray(hard, dtype=np.int64)
    assert len(hard) <= total // 2 and len(np.unique(hard)) == len(hard), "a hard set is at most half, distinct"
    others = np.setdiff1d(np.arange(total), hard)
    kept = np.random.default_rng(seed).choice(others, size=total - 2 * len(hard), replace=False)
    return np.concatenate([hard, hard, kept])


def epoch_order(labels, seed, *, balanced=False, hard=None):
    """The positions of one epoch over a set with these (N,) labels: a class-balanced draw,
    the hard set twice (hard_order), or a permutation of all N."""
    if balanced:
        return balanced_draw(labels, seed)
    if hard is not None:
        return hard_order(len(labels), hard, seed)
    return np.random.default_rng(seed).permutation(len(labels))


class EpochParts:
    """Each epoch's RecordSet for worker `rank` of `num_workers` (a context manager: the
    parts are files in a temporary folder, removed at exit).

    N % W images sit out each epoch of a dist job, different ones every time.
    """

    def __init__(self, record_set, *, rank=0, num_workers=1, balanced=False):
        self.record_set, self.rank, self.num_workers, self.balanced = record_set, rank, num_workers, balanced
        self.folder = None

    @property
    def needed(self):
        """False when every epoch is the whole set as it is (one process, plain order)."""
        return self.balanced or self.num_workers > 1

    def __enter__(self):
        self.folder = tempfile.mkdtemp(prefix=f"finetune-worker{self.rank}-")
        count, rest = divmod(len(self.record_set), self.num_workers)
        if self.num_workers > 1:
            log.info("worker %d of %d: %d of the %d training images each epoch%s", self.rank, self.num_workers,
                     count, len(self.record_set),
                     f" ({rest} sit out each epoch, different ones each time)" if rest else "")
        if self.balanced:
            sizes = np.bincount(self.record_set.labels)
            log.info("class-balanced sampling: each epoch draws %d images, classes uniformly (training images "
                     "per class: %d to %d)", len(self.record_set), sizes[sizes > 0].min(), sizes.max())
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.folder, ignore_errors=True)

    def epoch(self, seed, hard=None):
        """The RecordSet this worker trains on in the epoch with iterator seed `seed`; hard:
        the epoch's hard set (positions seen twice), or None. Without a part to make (one
        process, plain order, no hard set) it is the whole set as it is."""
        if not self.needed and hard is None:
            return self.record_set
        tic = time.time()
        order = epoch_order(self.record_set.labels, seed, balanced=self.balanced, hard=hard)
        count = len(self.record_set) // self.num_workers
        # Sorted: the copy reads the .rec front to back; the iterator shuffles anyway.
        mine = np.sort(order[self.rank * count:(self.rank + 1) * count])
        part = records.write_subset(self.record_set, mine, os.path.join(self.folder, "train"))
        log.debug("worker %d: its %d images copied in %.2f s", self.rank, count, time.time() - tic)
        return part
