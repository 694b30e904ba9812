"""Pack images into MXNet RecordIO (.rec + .idx) with im2rec's record layout.

Each record is `mx.recordio.pack(IRHeader(flag=0, label, id=index, id2=0), jpeg)`,
as `im2rec.py` writes it, so `mx.io.ImageRecordIter` and
`mx.recordio.MXIndexedRecordIO` read the files unchanged; records.RecordWriter
writes them without MXNet. Images are stored as JPEG of the BGR array (MXNet's
decoder turns them back into RGB).
"""
import os

import cv2

from .parallel import parallel_map
from ..cli import UserError
from ..fsutil import atomic_output
from ..records import RecordWriter, read_keys, read_labels
from ..transforms import load_image


def encode_record(job):
    """Worker: (path, resize, quality) -> (JPEG bytes, None) or (None, reason)."""
    path, resize, quality = job
    image, reason = load_image(path, resize)
    if reason:
        return None, reason
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return None, "JPEG encoding failed"
    return buf.tobytes(), None


def pack_set(root, items, rec_path, idx_path, *, resize, quality, workers, desc):
    """Write `items` [(label, path relative to root)] as records 0..n-1.

    workers: a process count or a WorkerPool (parallel_map). Both files are written
    under temporary names; the record count is checked against `items` before they
    are renamed. An image that no longer decodes (it changed since it was checked)
    aborts the set with UserError: a record is never silently dropped.
    """
    jobs = [(os.path.join(root, rel), resize, quality) for _, rel in items]
    with atomic_output(idx_path) as tmp_idx, atomic_output(rec_path) as tmp_rec:
        with RecordWriter(tmp_rec, tmp_idx) as writer:
            results = parallel_map(encode_record, jobs, workers, desc)
            for index, ((label, rel), (payload, reason)) in enumerate(zip(items, results)):
                if reason:
                    raise UserError(f"{rel} can no longer be read ({reason}); "
                                    f"it changed after it was checked: run again")
                writer.write(index, label, payload)
        verify_records(tmp_idx, tmp_rec, [label for label, _ in items])


def verify_records(idx_path, rec_path, labels):
    """Check a .rec/.idx pair holds exactly len(labels) records, ids 0..n-1, with
    these labels, each record's framing intact (records.read_labels: every header
    and part, not the images' decoding). Raises UserError on any mismatch."""
    if not labels:
        return  # an empty set's .idx is empty, which read_labels refuses
    found, keys = read_labels(rec_path, idx_path), read_keys(idx_path)
    if len(found) != len(labels):
        raise UserError(f"{rec_path}: {len(found)} records, expected {len(labels)}")
    for index, (key, label, expected) in enumerate(zip(keys, found, labels)):
        if key != index or label != float(expected):
            raise UserError(f"{rec_path}: record {index} has id {key}, label "
                            f"{label}; expected id {index}, label {expected}")
