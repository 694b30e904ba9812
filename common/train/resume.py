"""Where a run starts: fresh, after its newest committed checkpoint, or mid-epoch.

Rerunning the same command continues the run under --model-prefix: from the
newest checkpoint whose manifest verifies (a corrupt newest one falls back to
the one before, with a warning naming the file), or from the mid-epoch
checkpoint a preempted run committed. A checkpoint of another run (another
network, mode, class list, dataset or input shape) is refused in one line;
--restart starts over, after moving the old run's files aside (nothing is
overwritten silently). Retention keeps the newest --keep checkpoints and the
best one by validation accuracy.
"""
import dataclasses
import glob
import logging
import os
import shutil
import time

from .. import checkpoint
from ..cli import UserError
from ..fsutil import file_digest, text_digest, write_json_atomic

log = logging.getLogger(__name__)

# What makes a checkpoint part of a run: another value is another run.
IDENTITY = ("network", "mode", "num_classes", "classes_sha256", "data_sha256", "image_shape", "sampling", "fold")


@dataclasses.dataclass
class Start:
    """Where training begins.

    epoch: the last finished epoch (0: none). batch: batches of epoch + 1 already
    trained (a mid-epoch checkpoint), else 0. tag: the checkpoint to load (an
    epoch, checkpoint.RESUME, or None for a fresh start); manifest: its manifest.
    """
    epoch: int = 0
    batch: int = 0
    tag: object = None
    manifest: dict = None


def sampling_label(balanced=False, hard_mining=None):
    """The identity's "sampling": None (every image once an epoch), 'balanced', or
    'hard-mining F' (F the fraction: another fraction is another run)."""
    if hard_mining:
        return f"hard-mining {hard_mining:g}"
    return "balanced" if balanced else None


def run_identity(*, network, mode, dataset, image_shape, sampling=None, fold=None):
    """The IDENTITY values of a run on `dataset` (records.Dataset); sampling: sampling_label's
    (None, what manifests without the key mean, or 'balanced' or 'hard-mining F'); fold: None
    (what manifests without the key mean), or a --kfold fold's {"index", "k", "seed"}."""
    return {"network": network, "mode": mode, "num_classes": dataset.num_classes,
            "classes_sha256": text_digest("\n".join(dataset.classes)),
            "data_sha256": {"train": file_digest(dataset.train.idx), "val": file_digest(dataset.val.idx)},
            "image_shape": list(image_shape), "sampling": sampling, "fold": fold}


def choose_start(prefix, identity, *, load_epoch, restart, num_epochs, rank=0):
    """find_start for the command-line options; --restart first moves the earlier run aside.

    rank: the worker's kvstore rank. With --restart only rank 0 moves files; the
    others start fresh without looking (rank 0's weights reach them through the kvstore).
    """
    if restart and load_epoch:
        raise UserError("--restart starts over and --load-epoch continues: give one of them")
    if load_epoch and load_epoch >= num_epochs:
        raise UserError(f"--load-epoch {load_epoch} leaves nothing to train with --num-epochs {num_epochs}")
    if restart:
        if rank:
            return Start()
        move_aside(prefix)
    return find_start(prefix, identity, load_epoch=load_epoch)


def find_start(prefix, identity, *, load_epoch=None):
    """The Start of a run under `prefix` (see the module docstring).

    load_epoch: resume after exactly this committed epoch. Raises UserError for a
    checkpoint of another run, for checkpoint files no manifest vouches for, and
    for a --load-epoch that is missing or corrupt.
    """
    if load_epoch:
        manifest = _read(prefix, load_epoch, f"--load-epoch {load_epoch}")
        _check_identity(prefix, manifest, identity)
        return Start(load_epoch, 0, load_epoch, manifest)
    start = _newest_committed(prefix)
    start = _mid_epoch(prefix, after=start) or start
    if start.tag is None:
        _refuse_unvouched_files(prefix)
    else:
        _check_identity(prefix, start.manifest, identity)
    return start


def _read(prefix, tag, what):
    try:
        return checkpoint.read_manifest(prefix, tag)
    except checkpoint.CorruptCheckpoint as exc:
        raise UserError(f"{what}: {exc}") from None


def _newest_committed(prefix):
    """Start after the newest epoch whose manifest verifies; warns of each newer corrupt one."""
    for epoch in checkpoint.committed_epochs(prefix):
        try:
            return Start(epoch, 0, epoch, checkpoint.read_manifest(prefix, epoch))
        except checkpoint.CorruptCheckpoint as exc:
            log.warning("%s: not resuming from epoch %d; trying the checkpoint before it", exc, epoch)
    return Start()


def _mid_epoch(prefix, after):
    """The Start of the mid-epoch checkpoint if it continues right after `after`, else None.

    A mid-epoch checkpoint of an epoch committed since is stale and removed.
    """
    if not os.path.exists(checkpoint.manifest_path(prefix, checkpoint.RESUME)):
        return None
    try:
        manifest = checkpoint.read_manifest(prefix, checkpoint.RESUME)
    except checkpoint.CorruptCheckpoint as exc:
        log.warning("%s: the mid-epoch checkpoint is not used", exc)
        return None
    if manifest["epoch"] != after.epoch + 1:
        if manifest["epoch"] <= after.epoch:
            checkpoint.remove_checkpoint(prefix, checkpoint.RESUME)
        return None
    return Start(after.epoch, manifest["batch"], checkpoint.RESUME, manifest)


def _check_identity(prefix, manifest, identity):
    theirs = manifest.get("run", {})
    for key in IDENTITY:
        if theirs.get(key) != identity[key]:
            raise UserError(f"--model-prefix {prefix} holds a checkpoint of another run ({key}: "
                            f"{_shown(theirs.get(key))} there, {_shown(identity[key])} now); pass --restart "
                            f"to start over there (its files are moved aside) or another --model-prefix")


def _shown(value):
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_unvouched_files(prefix):
    """UserError if checkpoint files lie under `prefix` that no verified manifest vouches for."""
    found = checkpoint.saved_epochs(prefix) or checkpoint.committed_epochs(prefix)
    if found:
        raise UserError(f"--model-prefix {prefix} holds checkpoint files (epochs "
                        f"{', '.join(map(str, sorted(found)))}) that no verified manifest vouches for; "
                        f"pass --restart to start over there (they are moved aside) or another --model-prefix")


def move_aside(prefix):
    """--restart: move every file of the run under `prefix` into a new folder beside it.

    Returns that folder, or None when there was nothing to move.
    """
    files = [p for p in glob.glob(glob.escape(prefix) + "-*") if os.path.isfile(p)]
    hidden = glob.glob(os.path.join(glob.escape(os.path.dirname(prefix) or "."),
                                    "." + glob.escape(os.path.basename(prefix)) + "-*"))
    if not files and not hidden:
        return None
    folder = f"{prefix}-before-restart-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(folder)
    for path in files + hidden:
        shutil.move(path, os.path.join(folder, os.path.basename(path)))
    log.info("--restart: moved %d files of the earlier run to %s", len(files) + len(hidden), folder)
    return folder


def retain(prefix, keep):
    """Delete committed checkpoints beyond the newest `keep`, never the best one.

    The best is the highest validation accuracy (the earliest of equals); it is also
    named in PREFIX-best.json. Returns the best epoch.
    """
    manifests = {}
    for epoch in checkpoint.committed_epochs(prefix):
        try:
            manifests[epoch] = checkpoint.read_manifest(prefix, epoch, verify=False)
        except checkpoint.CorruptCheckpoint:
            continue  # never the best, never deleted here: resume reports it
    best = max(sorted(manifests), key=lambda e: manifests[e]["val"]["acc"])
    write_json_atomic(f"{prefix}-best.json", {"epoch": best, "val": manifests[best]["val"],
                                             "params": os.path.basename(checkpoint.params_path(prefix, best))})
    for epoch in sorted(manifests, reverse=True)[keep:]:
        if epoch != best:
            checkpoint.remove_checkpoint(prefix, epoch)
    return best
