"""A folder of images plus a labels CSV (file id, class name), instead of class folders.

The CSV is read with the csv module (a UTF-8 BOM, quoted fields and CRLF line ends
are all fine); two named columns give each row's file id and class name. An id is
a path relative to the image folder, with or without its extension: it is tried as
given, then with each image extension the project accepts. Every row that does not
give one image one label, and every image the CSV does not list, is reported with
its reason; none is dropped silently. The classes then go the class-folder way
(main.py): sorted names give labels 0..C-1, split per class with the same keyed
shuffle, keyed on the file's path.
"""
import argparse
import collections
import csv
import dataclasses
import hashlib
import io
import os
import posixpath

from ..cli import MissingFile, UserError
from ..transforms import IMAGE_EXTENSIONS
from .imagefolder import Scan, not_an_image, walk_images

# What can be wrong with a row; the summary counts problems by these kinds.
EMPTY_ID, EMPTY_LABEL, BAD_ROW = "empty id", "empty label", "malformed row"
UNKNOWN_ID, NO_SUCH_FILE, AMBIGUOUS, NOT_AN_IMAGE = "unknown id", "no such file", "ambiguous id", "not an image"
DUPLICATE, CONFLICT = "duplicate", "conflicting labels"
NOT_LISTED = "not listed in the labels CSV"


@dataclasses.dataclass
class Row:
    """One data row: its first line in the file, the id and label (stripped), and,
    once resolved, the image path (relative, '/'-separated) or the problem's kind and reason."""
    line: int
    id: str
    label: str
    path: str = None
    kind: str = None
    reason: str = None


@dataclasses.dataclass
class Labels:
    """What the CSV said about the image folder, for the summary and the report.

    rows: every data row, in file order (problem rows have `kind` set);
    unlisted: [(image path, reason)] for images no row names.
    """
    file: str
    sha256: str
    id_column: str
    label_column: str
    rows: list
    unlisted: list

    def record(self):
        """PREFIX-summary.json's 'labels_csv' section: counts, then every problem."""
        problems = [r for r in self.rows if r.kind]
        return {"file": os.path.abspath(self.file), "sha256": self.sha256,
                "id_column": self.id_column, "label_column": self.label_column,
                "rows": len(self.rows), "labelled_images": sum(r.path is not None and not r.kind for r in self.rows),
                "problems_by_kind": dict(collections.Counter(r.kind for r in problems)),
                "problems": [{"line": r.line, "id": r.id, "label": r.label, "kind": r.kind, "reason": r.reason}
                             for r in problems],
                "unlisted": [{"path": rel, "reason": why} for rel, why in self.unlisted]}


def add_labels_args(parser):
    """The --labels-csv group of prepare_data.sh's options."""
    group = parser.add_argument_group("labels CSV (instead of class folders)")
    group.add_argument("--labels-csv", metavar="FILE",
                       help="classes from this CSV (file id, class name): --src is then one folder of "
                            "images; an id is a path relative to it, with or without the image extension")
    group.add_argument("--csv-id-column", metavar="NAME", default="id", type=_column_arg,
                       help="--labels-csv column holding the file id")
    group.add_argument("--csv-label-column", metavar="NAME", default="label", type=_column_arg,
                       help="--labels-csv column holding the class name")


def _column_arg(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a column name, got an empty one")
    return text.strip()  # header names are compared stripped too


def stamp_key(labels):
    """What a pack's finish stamp records of the CSV (None without one): its bytes and columns.

    The .lst already follows from them; they are recorded too so that a rerun sees
    any edit of the CSV or of the column options, not only one that moves an image
    (the price: a repack after an edit the lists do not show).
    """
    if labels is None:
        return None
    return {"sha256": labels.sha256, "id_column": labels.id_column, "label_column": labels.label_column}


def scan_labelled(root, csv_path, id_column, label_column):
    """(Scan, Labels) for an image folder labelled by a CSV.

    The Scan is what scan_tree gives for class folders: classes sorted by name,
    each with its images' paths (sorted), and the non-image files ignored.
    Raises MissingFile / UserError for a CSV that cannot be used at all.
    """
    digest, rows = read_rows(csv_path, id_column, label_column)
    ignored = []
    index = FileIndex(root, walk_images(root, ignored))
    for row in rows:
        # Also a bad row's file: it is named, so it is not reported a second time as unlisted.
        path, kind, reason = index.resolve(row.id) if row.id else (None, None, None)
        row.path = path
        if not row.kind:
            row.kind, row.reason = kind, reason
    _mark_repeats(rows)
    unlisted = [(rel, NOT_LISTED) for rel in sorted(index.images - index.named)]
    classes = collections.defaultdict(list)
    for row in rows:
        if not row.kind:
            classes[row.label].append(row.path)
    scan = Scan(sorted((name, sorted(files)) for name, files in classes.items()), ignored, [])
    labels = Labels(csv_path, digest, id_column, label_column, rows, unlisted)
    _require_two_classes(csv_path, scan, labels)
    return scan, labels


def _require_two_classes(csv_path, scan, labels):
    if not scan.classes:
        kinds = labels.record()["problems_by_kind"]
        found = ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "no data rows"
        raise UserError(f"--labels-csv {csv_path}: no row names an image of the folder with a label ({found})")
    if len(scan.classes) == 1:
        raise UserError(f"--labels-csv {csv_path}: every usable row has the label {scan.classes[0][0]!r}; "
                        f"a classifier needs at least two classes")


def read_rows(path, id_column, label_column):
    """(SHA-256 of the file, [Row]) of a labels CSV; rows with a wrong field count,
    an empty id or an empty label come back with their problem set.

    Raises MissingFile if there is no such file, UserError if it is not UTF-8, is
    empty, or lacks a named column (the message names the columns it has).
    """
    data = _read_bytes(path)
    # skipinitialspace: 'a.jpg, "cat, black"' (a space after the comma) is still quoted.
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""), skipinitialspace=True)
    try:
        width, id_at, label_at = _header(path, reader, id_column, label_column)
        rows, start = [], reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line is no row
                rows.append(_row(start, fields, width, id_at, label_at))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"--labels-csv {path} line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise UserError(f"--labels-csv {path}: a header but no data rows")
    return hashlib.sha256(data).hexdigest(), rows


def _read_bytes(path):
    if os.path.isdir(path):
        raise UserError(f"--labels-csv {path}: is a folder, not a CSV file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingFile(f"--labels-csv {path}: no such file") from None


def _decode(path, data):
    """The CSV's text; 'utf-8-sig' drops the BOM that spreadsheet programs write."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"--labels-csv {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                        f"save it as UTF-8") from None
    if not text.strip():
        raise UserError(f"--labels-csv {path}: is empty; expected a header line naming the id and label columns")
    return text


def _header(path, reader, id_column, label_column):
    """(field count, index of the id column, index of the label column) from the first row."""
    header = [name.strip() for name in next((row for row in reader if row), [])]  # blank lines first: no header
    where = {}
    for option, name in (("--csv-id-column", id_column), ("--csv-label-column", label_column)):
        if header.count(name) != 1:
            has = ", ".join(repr(h) for h in header)
            what = "two columns named" if header.count(name) > 1 else "no column"
            raise UserError(f"--labels-csv {path}: {what} {name!r} (its columns: {has}); "
                            f"name the column with {option}")
        where[option] = header.index(name)
    return len(header), where["--csv-id-column"], where["--csv-label-column"]


def _row(line, fields, width, id_at, label_at):
    if len(fields) != width:
        # Too many fields is usually an unquoted comma: its label would be a fragment.
        return Row(line, fields[id_at].strip() if id_at < len(fields) else "",
                   fields[label_at].strip() if label_at < len(fields) else "", kind=BAD_ROW,
                   reason=f"{BAD_ROW}: {len(fields)} fields, the header has {width} (an unquoted comma?)")
    row = Row(line, fields[id_at].strip(), fields[label_at].strip())
    if not row.id:
        row.kind, row.reason = EMPTY_ID, EMPTY_ID
    elif not row.label:
        row.kind, row.reason = EMPTY_LABEL, EMPTY_LABEL
    elif "\n" in row.label or "\r" in row.label:  # PREFIX-classes.txt holds one name a line
        row.kind, row.reason = BAD_ROW, f"{BAD_ROW}: the label contains a line break"
    return row


class FileIndex:
    """The image files of a folder, looked up by id: as given, or without the extension.

    `named` collects every image a lookup pointed at, the candidates of an ambiguous
    id too: those are reported with the id's row, not a second time as unlisted.
    """

    def __init__(self, root, images):
        self.root, self.images, self.named = root, set(images), set()
        self.by_stem = collections.defaultdict(list)
        for rel in sorted(self.images):
            self.by_stem[os.path.splitext(rel)[0]].append(rel)

    def resolve(self, file_id):
        """(image path, None, None) for the one image `file_id` names, else (None, kind, reason)."""
        rel = posixpath.normpath(file_id)  # ./a.jpg and a//b.jpg name a.jpg and a/b.jpg
        if rel.startswith("/") or rel == ".." or rel.startswith("../"):
            return None, UNKNOWN_ID, f"{UNKNOWN_ID}: the path leaves the image folder"
        # As given first: 'e.jpg' is e.jpg even when e.jpg.png exists too.
        matches = [rel] if rel in self.images else self.by_stem.get(rel, [])
        self.named.update(matches)
        if len(matches) == 1:
            return matches[0], None, None
        if matches:
            return None, AMBIGUOUS, (f"{AMBIGUOUS}: matches {len(matches)} files ({', '.join(matches)}); "
                                     f"give the extension")
        return (None, *self._why_not_found(rel))

    def _why_not_found(self, rel):
        path = os.path.join(self.root, rel)
        if os.path.isdir(path):
            return NOT_AN_IMAGE, f"{NOT_AN_IMAGE}: a folder"
        if os.path.lexists(path):
            return NOT_AN_IMAGE, f"{NOT_AN_IMAGE}: {not_an_image(os.path.basename(rel)) or 'inside a hidden folder'}"
        if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS:
            return NO_SUCH_FILE, f"{NO_SUCH_FILE}: {rel}"
        return UNKNOWN_ID, f"{UNKNOWN_ID}: no file {rel}, nor {rel} with an image extension"


def _mark_repeats(rows):
    """A file named by several rows (the same id twice, or 'a' and 'a.jpg'): one label
    throughout keeps the first row and marks the others duplicates; different labels
    mark every one of them, and the image is left out (its class is unknown)."""
    by_file = collections.defaultdict(list)
    for row in rows:
        if row.path and not row.kind:
            by_file[row.path].append(row)
    for rel, named in by_file.items():
        if len({row.label for row in named}) > 1:
            said = ", ".join(f"{row.label!r} (line {row.line})" for row in named)
            for row in named:
                row.kind, row.reason = CONFLICT, f"{CONFLICT}: {rel} is labelled {said}; left out"
        else:
            for row in named[1:]:
                row.kind = DUPLICATE
                row.reason = f"{DUPLICATE}: {rel} is listed on line {named[0].line} too (same label; used once)"


def report_lines(record, at_most):
    """The console's lines for a summary's 'labels_csv' section: counts, then the
    first `at_most` problem rows and unlisted images (the summary lists all)."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in record["problems_by_kind"].items())
    lines = [f"{os.path.basename(record['file'])}: {record['rows']} rows, {record['labelled_images']} images "
             f"labelled; rows with a problem: {len(record['problems'])}{f' ({kinds})' if kinds else ''}; "
             f"images it does not list: {len(record['unlisted'])}"]
    for entry in record["problems"][:at_most]:
        lines.append(f"  line {entry['line']} (id {entry['id']!r}): {entry['reason']}")
    if len(record["problems"]) > at_most:
        lines.append(f"  ... and {len(record['problems']) - at_most} more rows")
    for entry in record["unlisted"][:at_most]:
        lines.append(f"  not in the CSV: {entry['path']}")
    if len(record["unlisted"]) > at_most:
        lines.append(f"  ... and {len(record['unlisted']) - at_most} more images")
    return lines
