"""An image-folder dataset: find its classes and images, check them, split them.

Layout: one subfolder per class under a root (Caltech-256's
`256_ObjectCategories/001.ak47/001_0001.jpg`). Labels 0..C-1 follow the sorted
folder names; images in nested folders belong to their top-level class folder.
The root is only read, never modified.
"""
import dataclasses
import hashlib
import os

from ..transforms import IMAGE_EXTENSIONS

# Files operating systems leave in image folders.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
CLUTTER_SUFFIX = ".clutter"


@dataclasses.dataclass
class Scan:
    """What a dataset root holds.

    classes: [(folder name, [image paths relative to the root, '/'-separated])],
             sorted by name; label i is classes[i].
    ignored: [(relative path, reason)] for files that are not images.
    excluded: [(folder name, number of image files, reason)] for class folders left out.
    """
    classes: list
    ignored: list
    excluded: list


def scan_tree(root, include_clutter=False):
    """List the classes and candidate image files under `root` (no decoding)."""
    classes, ignored, excluded = [], [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            ignored.append((entry.name, "hidden"))
        elif not entry.is_dir():
            ignored.append((entry.name, "not inside a class folder"))
        else:
            files = walk_images(root, ignored, entry.name)
            if not files:
                excluded.append((entry.name, 0, "no image files"))
            elif entry.name.endswith(CLUTTER_SUFFIX) and not include_clutter:
                excluded.append((entry.name, len(files), "clutter class (use --include-clutter)"))
            else:
                classes.append((entry.name, files))
    return Scan(classes, ignored, excluded)


def walk_images(root, ignored, sub=""):
    """Image files under root/sub, recursively, as '/'-separated paths relative to
    root, sorted folder by folder; hidden folders and non-images go to `ignored`."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(root, sub)):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if rel_folder == "." else f"{rel_folder}/"  # sub="": the root itself
        for hidden in [d for d in dirs if d.startswith(".")]:
            ignored.append((f"{prefix}{hidden}", "hidden"))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for filename in sorted(files):
            rel = f"{prefix}{filename}"
            reason = not_an_image(filename)
            if reason:
                ignored.append((rel, reason))
            else:
                found.append(rel)
    return found


def not_an_image(filename):
    """Why `filename` is not listed as an image, or None."""
    if filename.startswith("."):
        return "hidden"
    if filename.lower() in SYSTEM_FILES:
        return "system file"
    if os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
        return "not an image extension"
    if "\t" in filename or "\n" in filename or "\r" in filename:
        return "name contains a tab or line break (the .lst format cannot hold it)"
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    return None


def split_class(files, class_name, seed, train_per_class, val_per_class=None):
    """Split one class's usable files into (train, val, unused) lists.

    The order is a keyed shuffle: files are sorted by SHA-256 of
    (seed, class name, path), which depends on nothing but those strings, so the
    split is the same on every machine and Python version, and adding a file
    moves no other file between sets. `train_per_class` files go to training, the
    rest (at most `val_per_class`) to validation. A class with too few files keeps
    one for validation (train gets n-1); a class of one file trains on it and has
    no validation image. Each returned list is sorted by path.
    """
    order = sorted(files, key=lambda rel: _shuffle_key(seed, class_name, rel))
    if len(order) > train_per_class:
        n_train = train_per_class
    elif len(order) >= 2:
        n_train = len(order) - 1  # keep one image to validate on
    else:
        n_train = len(order)  # 0 or 1 image: nothing to validate on
    train, rest = order[:n_train], order[n_train:]
    val = rest if val_per_class is None else rest[:val_per_class]
    unused = rest[len(val):]
    return sorted(train), sorted(val), sorted(unused)


def _shuffle_key(seed, class_name, rel):
    return hashlib.sha256(f"{seed}\0{class_name}\0{rel}".encode("utf-8")).digest()


def lst_text(items):
    """im2rec's .lst format for [(label, relative path)]: 'index\\tlabel\\tpath' lines."""
    return "".join(f"{index}\t{float(label):f}\t{rel}\n" for index, (label, rel) in enumerate(items))


def read_lst(path):
    """Parse a .lst file into [(index, label, relative path)]."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            index, label, rel = line.rstrip("\n").split("\t", 2)
            rows.append((int(index), float(label), rel))
    return rows
