"""Pack images into MXNet RecordIO (.rec + .idx) with im2rec's record layout.

Each record is `mx.recordio.pack(IRHeader(flag=0, label, id=index, id2=0), jpeg)`,
as `im2rec.py` writes it, so `mx.io.ImageRecordIter` and
`mx.recordio.MXIndexedRecordIO` read the files unchanged; records.RecordWriter
writes them without MXNet. Images are stored as JPEG of the BGR array (MXNet's
decoder turns them back into RGB).
"""
import logging
import os

import cv2

from .parallel import parallel_map
from ..cli import UserError
from ..fsutil import atomic_output, remove_file
from ..records import RecordWriter, read_keys, read_labels
from ..transforms import load_image

log = logging.getLogger(__name__)


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


class Spool:
    """Records encoded while checking (check_images), kept on disk until the packs
    take them, so that each image is decoded once. A hidden file beside the output,
    about the packs' size; removed on close.

    Each entry keeps the file's (size, mtime) from before it was read: a file
    changed since is encoded again from what it holds now (holds is False).
    """

    def __init__(self, path):
        self.path = path
        self._file = open(path, "w+b")
        self._where = {}

    def put(self, rel, info, payload):
        self._file.seek(0, os.SEEK_END)
        self._where[rel] = (self._file.tell(), len(payload), info.st_size, info.st_mtime_ns)
        self._file.write(payload)

    def holds(self, root, rel):
        """True if `rel` is spooled and the file is as it was when it was read."""
        if rel not in self._where:
            return False
        try:
            info = os.stat(os.path.join(root, rel))
        except OSError:
            return False  # gone: the encode from the file reports why
        return (info.st_size, info.st_mtime_ns) == self._where[rel][2:]

    def read(self, rel):
        offset, length = self._where[rel][:2]
        self._file.seek(offset)
        return self._file.read(length)

    def close(self):
        self._file.close()
        remove_file(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pack_set(root, items, rec_path, idx_path, *, resize, quality, workers, desc, spool=None):
    """Write `items` [(label, path relative to root)] as records 0..n-1.

    workers: a process count or a WorkerPool (parallel_map). spool: a Spool of
    records already encoded with this resize and quality; the items it lacks are
    encoded here. Both files are written under temporary names; the record count
    is checked against `items` before they are renamed. An image that no longer
    decodes (it changed since it was checked) aborts the set with UserError: a
    record is never silently dropped.
    """
    # Compared once, here: a file changed after this point no longer matches the
    # stamp's files_digest either (taken before), so the next run repacks it.
    spooled = [spool is not None and spool.holds(root, rel) for _, rel in items]
    jobs = [(os.path.join(root, rel), resize, quality) for (_, rel), done in zip(items, spooled) if not done]
    if spool is not None:
        log.info("%s: %d records, %d encoded while checking", desc, len(items), len(items) - len(jobs))
    encoded = parallel_map(encode_record, jobs, workers, desc)
    with atomic_output(idx_path) as tmp_idx, atomic_output(rec_path) as tmp_rec:
        with RecordWriter(tmp_rec, tmp_idx) as writer:
            for index, ((label, rel), done) in enumerate(zip(items, spooled)):
                payload, reason = (spool.read(rel), None) if done else next(encoded)
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
