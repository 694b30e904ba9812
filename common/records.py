"""The RecordIO sets prepare_data.sh wrote: found, read and checked.

Before MXNet reads a .rec, every record header is read here through the .idx:
a truncated or corrupt .rec can kill the process natively inside MXNet (SIGABRT,
SIGFPE), and SoftmaxOutput trains silently wrong on a label >= num_classes. So
labels, record bounds and counts are all checked first, in Python.
"""
import dataclasses
import logging
import os
import struct

import cv2
import numpy as np

from .cli import MissingFile, UserError, positive_int, progress
from .fsutil import read_json
from .transforms import image_shape as image_shape_type

log = logging.getLogger(__name__)

_MAGIC = 0xCED7230A  # dmlc RecordIO record start
_LENGTH_MASK = (1 << 29) - 1
_IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: mx.recordio.IRHeader
_TRAIN_SUFFIX = "-train.rec"
CHECKS = ("headers", "full")
_SET_SUFFIXES = (_TRAIN_SUFFIX, "-val.rec")


def add_data_args(parser):
    """The data argument group (files, shapes, loader threads)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", metavar="DIR", default="data",
                      help="folder prepare_data.sh wrote")
    data.add_argument("--prefix", help="prepare_data.sh's --prefix: the sets are DATA_DIR/PREFIX-train.rec "
                      "and -val.rec (default: the one dataset in --data-dir)")
    data.add_argument("--data-train", metavar="REC", help="training .rec (default: DATA_DIR/PREFIX-train.rec)")
    data.add_argument("--data-val", metavar="REC", help="validation .rec (default: DATA_DIR/PREFIX-val.rec)")
    data.add_argument("--classes", metavar="FILE", help="class names, one per line "
                      "(default: PREFIX-classes.txt beside the training .rec)")
    data.add_argument("--num-classes", metavar="N", type=positive_int, help="must match the data when given")
    data.add_argument("--num-examples", metavar="N", type=positive_int,
                      help="training images; must match the .idx when given")
    data.add_argument("--image-shape", metavar="C,H,W", type=image_shape_type, default="3,224,224",
                      help="network input C,H,W; images are cropped to H,W")
    data.add_argument("--data-nthreads", metavar="N", type=positive_int,
                      help="decoding threads per iterator (default: the most MXNet 1.9.1 uses, half the "
                           "cores; a larger N is lowered to it)")
    data.add_argument("--check-data", choices=CHECKS, default="headers",
                      help="before training: read every record header (offsets, framing, labels, counts), "
                           "or also decode every image (full)")
    return data


@dataclasses.dataclass
class RecordSet:
    """A checked .rec/.idx pair: path, idx path, and its labels in record order.

    subset_of: (RecordSet, positions) when its records are byte copies of another
    set's at those positions (write_subset), so what is computed per record of
    that set serves this one (the K-fold sets share the training set's cached features).
    """
    rec: str
    idx: str
    labels: np.ndarray
    subset_of: tuple = None

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    """Training and validation sets with their class names (and the file listing them)."""
    train: RecordSet
    val: RecordSet
    classes: list
    classes_file: str

    @property
    def num_classes(self):
        return len(self.classes)


def find_prefix(data_dir, prefix=None, data_train=None):
    """The dataset prefix: `prefix`, else the name of --data-train, else the one dataset in data_dir.

    Raises UserError when data_dir holds no PREFIX-train.rec, or several (naming them).
    """
    if prefix:
        return prefix
    if data_train:
        name = os.path.basename(data_train)
        return name[:-len(_TRAIN_SUFFIX)] if name.endswith(_TRAIN_SUFFIX) else os.path.splitext(name)[0]
    try:
        found = sorted(n[:-len(_TRAIN_SUFFIX)] for n in os.listdir(data_dir) if n.endswith(_TRAIN_SUFFIX))
    except OSError as exc:
        error = MissingFile if isinstance(exc, FileNotFoundError) else UserError
        raise error(f"--data-dir {data_dir}: {exc.strerror} (prepare_data.sh --out DIR writes the "
                    f"sets there)") from None
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"--data-dir {data_dir} holds no PREFIX{_TRAIN_SUFFIX} (prepare_data.sh --out "
                        f"{data_dir} writes one), or name the sets with --data-train/--data-val")
    raise UserError(f"--data-dir {data_dir} holds {len(found)} datasets ({', '.join(found)}); "
                    f"choose one with --prefix")


def load_dataset(data_dir, prefix, *, data_train=None, data_val=None, classes=None,
                 num_classes=None, num_examples=None, decode=False):
    """Find, check and describe the train/val sets.

    Raises UserError for a missing file, a corrupt record, a label outside
    [0, num_classes), or --num-classes/--num-examples that disagree with the data;
    decode: also for an image that does not decode (--check-data full).
    """
    train_rec = data_train or os.path.join(data_dir, f"{prefix}-train.rec")
    val_rec = data_val or os.path.join(data_dir, f"{prefix}-val.rec")
    class_file = classes or class_list_path(train_rec)
    names = read_classes(class_file)
    if num_classes is not None and num_classes != len(names):
        raise UserError(f"--num-classes {num_classes} does not match the data: "
                        f"{class_file} lists {len(names)} classes")
    train = check_record_set(train_rec, len(names), "--data-train" if data_train else None, decode=decode)
    if num_examples is not None and num_examples != len(train):
        raise UserError(f"--num-examples {num_examples} does not match the data: "
                        f"{train.idx} indexes {len(train)} records")
    check_same_classes(val_rec, names, class_file, "--data-val" if data_val else None)
    val = check_record_set(val_rec, len(names), "--data-val" if data_val else None, decode=decode)
    return Dataset(train, val, names, class_file)


def check_same_classes(rec, names, names_file, option=None):
    """UserError if the class list prepare_data.sh wrote for `rec` is not `names`.

    A set of another dataset (or the same classes in another order) has labels
    that mean other classes. names_file: where `names` come from, for the message;
    option: the flag that named `rec`. Returns the set's list, or None when it has
    none (nothing could be checked).
    """
    own = class_list_path(rec)
    if not os.path.isfile(own):
        return None
    theirs = read_classes(own)
    if theirs == names:
        return own
    detail = (f"{len(theirs)} classes against {len(names)}" if len(theirs) != len(names) else
              next(f"label {i} is {a!r} there and {b!r} here"
                   for i, (a, b) in enumerate(zip(theirs, names)) if a != b))
    raise UserError(f"{f'{option} ' if option else ''}{rec} is labelled by {own}, which is not the "
                    f"class list {names_file} ({detail}); use sets of one dataset")


def dataset_file(rec, name):
    """The file `name` (classes.txt, summary.json) prepare_data.sh wrote for the set `rec`.

    It writes one per dataset, PREFIX-NAME beside PREFIX-train.rec and PREFIX-val.rec,
    so that several datasets can share a folder; a folder without it but with a
    plain NAME (one dataset, prepared before) gives that.
    """
    folder, base = os.path.split(rec)
    prefix = next((base[:-len(s)] for s in _SET_SUFFIXES if base.endswith(s)), os.path.splitext(base)[0])
    own, plain = os.path.join(folder, f"{prefix}-{name}"), os.path.join(folder, name)
    return plain if not os.path.isfile(own) and os.path.isfile(plain) else own


def class_list_path(rec):
    """The class list of the set `rec`: PREFIX-classes.txt beside it (see dataset_file)."""
    return dataset_file(rec, "classes.txt")


def read_classes(path):
    """Class names, one per line (line i names label i)."""
    if not os.path.isfile(path):
        raise MissingFile(f"class list {path} not found (prepare_data.sh writes PREFIX-classes.txt "
                        f"beside the .rec files)")
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    if not names:
        raise UserError(f"class list {path} is empty")
    return names


def check_record_set(rec, num_classes, option=None, decode=False):
    """Read every record header of `rec` (via its .idx) and check its label.

    Also compares the count with the .lst beside it, when there is one.
    option: the flag that named `rec`, for messages. decode: also decode every
    image (OpenCV, as MXNet's iterator does), naming the first that fails.
    """
    idx = require_record_files(rec, option)
    labels = read_labels(rec, idx)
    if decode:
        check_images(rec, idx, len(labels))
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes) | (labels != np.round(labels)))
    if bad.size:
        raise UserError(f"{rec}: record {bad[0]} has label {labels[bad[0]]:g}, outside the "
                        f"{num_classes} classes [0, {num_classes - 1}] ({bad.size} such records)")
    lst = os.path.splitext(rec)[0] + ".lst"
    if os.path.isfile(lst):
        with open(lst, encoding="utf-8") as f:
            lines = sum(1 for line in f if line.strip())
        if lines != len(labels):
            raise UserError(f"{lst} lists {lines} images but {idx} indexes {len(labels)} records")
    return RecordSet(rec, idx, labels.astype(np.int64))


def require_record_files(rec, option=None):
    """The .idx path of `rec`; UserError naming whichever of the two is missing.

    option: the flag that named `rec` (e.g. '--data-val'), for the message.
    """
    stem, ext = os.path.splitext(rec)
    idx = stem + ".idx"
    named = f"{option} {rec}" if option else rec
    if ext in (".lst", ".idx"):
        raise UserError(f"{named}: that is the set's {ext[1:]} file; pass its .rec, {stem}.rec")
    if not os.path.isfile(rec):
        raise MissingFile(f"{named}: no such file (prepare_data.sh writes the .rec, .idx and .lst of a set)")
    if not os.path.isfile(idx):
        raise MissingFile(f"{named}: its index {idx} is missing (prepare_data.sh writes both)")
    return idx


def packed_resize(rec):
    """(shorter side the images of `rec` were packed at, summary.json path), or None.

    Read from the PREFIX-summary.json prepare_data.sh writes beside its .rec files.
    """
    path = dataset_file(rec, "summary.json")
    summary = read_json(path, {})
    options = summary.get("options") if isinstance(summary, dict) else None
    resize = options.get("resize") if isinstance(options, dict) else None
    return (resize, path) if isinstance(resize, int) and resize >= 0 else None


def warn_if_upscaled(rec, image_shape):
    """Warn when the packed images are smaller than the crop: MXNet enlarges them silently."""
    found = packed_resize(rec)
    if found and 0 < found[0] < max(image_shape[1:]):
        log.warning("%s was packed at a shorter side of %d px (%s), smaller than the %dx%d crop: "
                    "MXNet enlarges such images; repack with prepare_data.sh --resize %d or more",
                    rec, found[0], found[1], image_shape[1], image_shape[2], max(image_shape[1:]))


def read_labels(rec, idx):
    """Labels of all records in .idx order, reading only record headers.

    Raises UserError for a record that starts at a bad offset, runs past the end
    of the file (truncated .rec) or carries more than one label.
    """
    offsets = _read_idx(idx)
    size = os.path.getsize(rec)
    if size % 4:
        raise UserError(f"{rec}: {size} bytes is not a whole number of 4-byte words (truncated file?)")
    labels = np.empty(len(offsets), dtype=np.float64)
    with open(rec, "rb") as f:
        for i, (key, offset) in enumerate(offsets):
            head, _ = _record_extent(f, offset, size)
            if head is None or len(head) < _IRHEADER.size:
                raise UserError(f"{rec}: record {key} at byte {offset} is corrupt or truncated")
            flag, label, _, _ = _IRHEADER.unpack(head[:_IRHEADER.size])
            if flag != 0:
                raise UserError(f"{rec}: record {key} has {flag} labels; one label per image is supported")
            labels[i] = label
    return labels


def read_keys(idx):
    """The record ids of a set in .idx order (im2rec's index, the first column of the .lst)."""
    return np.array([key for key, _ in _read_idx(idx)], dtype=np.int64)


def write_subset(record_set, positions, stem):
    """Copy the records at `positions` (indexes into record_set's .idx order) into
    stem.rec/.idx, byte for byte, in that order; returns their RecordSet."""
    offsets = _read_idx(record_set.idx)
    size = os.path.getsize(record_set.rec)
    with open(record_set.rec, "rb") as src, open(stem + ".rec", "wb") as rec, \
            open(stem + ".idx", "w", encoding="utf-8") as idx:
        for position in positions:
            key, offset = offsets[position]
            head, end = _record_extent(src, offset, size)
            if head is None:
                raise UserError(f"{record_set.rec}: record {key} at byte {offset} is corrupt or truncated")
            src.seek(offset)
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(src.read(end - offset))
    return subset_record_set(record_set, positions, stem)


class RecordWriter:
    """Writes a .rec/.idx pair as mx.recordio.MXIndexedRecordIO's write_idx of
    mx.recordio.pack(IRHeader(0, label, key, 0), payload) does, byte for byte
    (tests/test_records_writer.py compares them), without importing MXNet:
    prepare_data.sh saves the 1.5-2 s that import costs."""

    def __init__(self, rec_path, idx_path):
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="utf-8")

    def write(self, key, label, payload):
        """Append one record: its idx line is its key and the byte it starts at."""
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(record_bytes(_IRHEADER.pack(0, float(label), key, 0) + payload))

    def close(self):
        self._rec.close()
        self._idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_bytes(data):
    """`data` framed as one dmlc RecordIO record (what MXRecordIO.write writes).

    A payload holding the magic word at a 4-byte boundary is cut there into parts
    (continuation flags 1, 2..., last 3) with those words dropped, so that a reader
    resynchronising on the magic word cannot land inside a record; the record is
    padded with zeros to 4 bytes (_record_parts reads it back).
    """
    aligned = len(data) // 4 * 4
    words = np.frombuffer(data, dtype="<u4", count=aligned // 4)
    cuts = (np.flatnonzero(words == _MAGIC) * 4).tolist()
    chunks, start = [], 0
    for index, cut in enumerate(cuts):
        chunks.append(_part_head(1 if index == 0 else 2, cut - start) + data[start:cut])
        start = cut + 4
    chunks.append(_part_head(3 if cuts else 0, len(data) - start) + data[start:])
    chunks.append(b"\0" * (-len(data) % 4))
    return b"".join(chunks)


def _part_head(flag, length):
    return struct.pack("<II", _MAGIC, flag << 29 | length)


def subset_record_set(record_set, positions, stem):
    """The RecordSet of stem.rec/.idx, which write_subset filled from record_set's `positions`."""
    positions = np.asarray(positions, dtype=np.int64)
    return RecordSet(stem + ".rec", stem + ".idx", record_set.labels[positions], subset_of=(record_set, positions))


def check_images(rec, idx, count):
    """Decode every image of `rec` (`count` records); UserError naming the first that does not decode."""
    for _ in progress(iter_images(rec, idx), total=count, desc=f"decode {os.path.basename(rec)}", unit="img"):
        pass


def iter_images(rec, idx):
    """Yield (key, decoded BGR image) of every record of a header-checked set, in .idx order,
    decoded as MXNet's iterator decodes them (OpenCV, 3 channels).

    Raises UserError naming the first record that does not decode.
    """
    size = os.path.getsize(rec)
    with open(rec, "rb") as f:
        for key, offset in _read_idx(idx):
            parts, _ = _record_parts(f, offset, size) or ([], None)
            payload = _read_payload(f, parts)[_IRHEADER.size:]
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) if payload else None
            if image is None or image.size == 0:
                raise UserError(f"{rec}: the image of record {key} (byte {offset}) does not decode; "
                                f"repack the set with prepare_data.sh")
            yield key, image


def _record_extent(f, offset, size):
    """(the first IRHeader-size payload bytes of the record at `offset`, the byte
    after its last part), or (None, None) for a corrupt or truncated record."""
    found = _record_parts(f, offset, size)
    if found is None:
        return None, None
    parts, end = found
    return _read_payload(f, parts, _IRHEADER.size), end


def _record_parts(f, offset, size):
    """([(payload position, length) of each part], the byte after the last part) of the
    record at `offset`, or None if it starts badly or runs past `size`.

    dmlc RecordIO splits a record whose payload holds the magic word at a 4-byte
    boundary into parts (continuation flag 1, then 2..., last 3), dropping those
    magic words; every part is walked and bound-checked, since MXNet would only
    fail mid-epoch on a part cut short.
    """
    parts, pos = [], offset
    while True:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return None
        magic, lrecord = struct.unpack("<II", head)
        length, part = lrecord & _LENGTH_MASK, lrecord >> 29
        end = pos + 8 + (length + 3) // 4 * 4  # parts are padded to 4 bytes
        if magic != _MAGIC or end > size or (pos == offset) != (part in (0, 1)):
            return None
        parts.append((pos + 8, length))
        if part in (0, 3):
            return parts, end
        pos = end


def _read_payload(f, parts, limit=None):
    """The payload of a record's _record_parts, the dropped magic words put back between
    parts; only its first `limit` bytes when given."""
    payload = b""
    for index, (pos, length) in enumerate(parts):
        if limit is not None and len(payload) >= limit:
            break
        f.seek(pos)
        joint = struct.pack("<I", _MAGIC) if index else b""
        payload += joint + f.read(length if limit is None else min(length, limit))
    return payload


def _read_idx(idx):
    rows = []
    with open(idx, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                rows.append((int(parts[0]), int(parts[1])))
            except (IndexError, ValueError):
                raise UserError(f"{idx}:{number}: expected 'key<TAB>offset', got {line.strip()!r}") from None
    if not rows:
        raise UserError(f"{idx} is empty: the set has no images")
    return rows
