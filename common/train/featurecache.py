"""Cached backbone features (train_caltech.py --mode last-layer --cache-features).

In last-layer mode the backbone and its BatchNorm statistics never change, so
every epoch would compute the same features again. They are computed once per
set with the validation pipeline (center crop; with --cache-mirror also its
mirror image, for the training set) and kept under --feature-cache as

  ROLE-KEY.npy   (N, D) float32, one row per record in file order
  ROLE-KEY.json  the fingerprint the KEY hashes, and the .npy's SHA-256

KEY hashes everything the rows depend on: the backbone's symbol and every
array it reads, the layer, the set's .rec and .idx bytes, the input shape, the
pipeline, the mirror and the dtype. Another checkpoint, set or preprocessing
is another KEY, so a stale cache is never read; a .npy whose bytes no longer
match its .json is computed again, with a warning.
"""
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from ..cli import WriteFailed, progress
from ..evaluate import set_outputs
from ..fsutil import atomic_output, file_digest, read_json, text_digest, write_json_atomic
from ..transforms import record_iter

log = logging.getLogger(__name__)

VERSION = 1  # of the rows' recipe: a change to how they are computed changes every KEY
PIPELINE = "validation iterator: packed images, center crop to the input shape, RGB 0-255, no mean/std"


@dataclasses.dataclass
class Features:
    """The cached rows of a run: train (N, D) and val (M, D) float32, in file order;
    train_mirror (N, D) of the mirrored crops, or None."""
    train: np.ndarray
    val: np.ndarray
    train_mirror: object = None

    @property
    def width(self):
        return self.train.shape[1]


def add_cache_args(group):
    """--cache-features, --cache-mirror, --feature-cache."""
    group.add_argument("--cache-features", action="store_true",
                       help="--mode last-layer: compute the backbone's features once (validation crop), "
                            "cache them, and train the head on them; writes the usual full checkpoints")
    group.add_argument("--cache-mirror", action="store_true",
                       help="--cache-features: also cache the mirrored crop of each training image; each "
                            "epoch then takes one of the two at random (the uncached run's mirroring)")
    group.add_argument("--feature-cache", metavar="DIR",
                       help="where cached features are kept (default: MODEL_DIR/feature-cache); shared by "
                            "runs, folds and heads, each file named by its fingerprint")


def backbone_fingerprint(symbol, arg_params, aux_params, *, layer, image_shape, dtype):
    """What the features depend on besides the set: {symbol, params sha256, layer, shape, ...}.

    symbol: the backbone cut at `layer` (its output is the features); the params
    digest covers every array it reads, by name, shape and bytes.
    """
    used = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    digest = hashlib.sha256()
    for name, array in sorted({**arg_params, **aux_params}.items()):
        if name in used:
            value = array.asnumpy()
            digest.update(f"{name}\0{value.dtype}\0{value.shape}\0".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return {"version": VERSION, "symbol_sha256": text_digest(symbol.tojson()),
            "params_sha256": digest.hexdigest(), "layer": layer, "image_shape": list(image_shape),
            "dtype": dtype, "pipeline": PIPELINE}


def set_fingerprint(backbone, record_set, mirror):
    """The full fingerprint of one set's rows: the backbone's, the set's files and the mirror."""
    return dict(backbone, rec=os.path.abspath(record_set.rec), rec_sha256=file_digest(record_set.rec),
                idx_sha256=file_digest(record_set.idx), records=len(record_set), mirror=bool(mirror))


def cache_paths(cache_dir, role, fingerprint):
    """(ROLE-KEY.npy, ROLE-KEY.json); KEY: 20 hex digits of the fingerprint's SHA-256.

    The .rec's path is left out of KEY: the same bytes elsewhere give the same rows.
    """
    content = {k: v for k, v in fingerprint.items() if k != "rec"}
    key = text_digest(json.dumps(content, sort_keys=True))[:20]
    stem = os.path.join(cache_dir, f"{role}-{key}")
    return f"{stem}.npy", f"{stem}.json"


def load_cached(cache_dir, role, fingerprint):
    """The cached rows for `fingerprint`, or None (absent, or its bytes do not match: warned)."""
    npy, meta = cache_paths(cache_dir, role, fingerprint)
    recorded = read_json(meta)
    if not isinstance(recorded, dict) or not os.path.exists(npy):
        return None
    theirs = {k: v for k, v in recorded.get("fingerprint", {}).items() if k != "rec"}
    if theirs != {k: v for k, v in fingerprint.items() if k != "rec"} or file_digest(npy) != recorded.get("sha256"):
        log.warning("feature cache %s does not match its description %s: computing it again", npy, meta)
        return None
    rows = np.load(npy)
    log.info("%s features: %d x %d from the cache %s", role, rows.shape[0], rows.shape[1], npy)
    return rows


def store(cache_dir, role, fingerprint, rows):
    """Write ROLE-KEY.npy, then its .json (the .json is what makes the .npy count)."""
    npy, meta = cache_paths(cache_dir, role, fingerprint)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_output(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rows)
        write_json_atomic(meta, {"fingerprint": fingerprint, "sha256": file_digest(npy),
                                 "shape": list(rows.shape), "dtype": str(rows.dtype)})
    except OSError as exc:
        raise WriteFailed(f"--feature-cache {cache_dir}: cannot write {os.path.basename(npy)} "
                          f"({exc.strerror}); nothing cached") from None
    log.info("%s features: %d x %d cached in %s", role, rows.shape[0], rows.shape[1], npy)


def compute_rows(module, record_set, *, image_shape, batch_size, threads, mirror, desc):
    """(N, D) float32: the bound backbone's output for every record, in file order.

    mirror: flip each center crop left-right first (what rand_mirror does to a crop).
    Each batch's output is copied out before the next forward (set_outputs).
    """
    import mxnet as mx
    batches = record_iter(record_set, image_shape=image_shape, batch_size=batch_size, train=False,
                          threads=threads)
    if mirror:
        batches = (mx.io.DataBatch(data=[mx.nd.flip(b.data[0], axis=3)], label=b.label, pad=b.pad)
                   for b in batches)
    rows, have = np.empty((len(record_set), 0), np.float32), 0
    with progress(total=len(record_set), desc=desc, unit="img") as bar:
        for out in set_outputs(module, batches, record_set.labels):
            out = out.reshape(len(out), -1).astype(np.float32)
            if have == 0:
                rows = np.empty((len(record_set), out.shape[1]), np.float32)
            rows[have:have + len(out)] = out
            have += len(out)
            bar.update(len(out))
    return rows


def rows_for(role, record_set, *, backbone, cache_dir, mirror, compute):
    """The rows of one set: from the cache when its fingerprint matches, else compute(mirror) and store."""
    fingerprint = set_fingerprint(backbone, record_set, mirror)
    rows = load_cached(cache_dir, role, fingerprint)
    if rows is None:
        rows = compute(record_set, mirror)
        store(cache_dir, role, fingerprint, rows)
    return rows
