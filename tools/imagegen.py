"""Small generated image-folder datasets for the tests.

`make_class_tree` writes class folders of real JPEGs with varied sizes; each
class has its own dominant colour, so a network can learn the classes.
`add_problem_files` adds the files a careful pipeline must handle.
`flatten_class_tree` and `write_labels_csv` turn a class tree into the other
layout: one folder of images plus a labels CSV. `packed_dataset` packs a class
tree as prepare_data.sh does, with a training set of any size per class.
"""
import csv
import os
import shutil

import cv2
import numpy as np

# BGR base colours; a class's images are this colour plus noise.
_PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200),
            (40, 200, 200), (120, 120, 120), (240, 240, 240), (20, 20, 20), (120, 60, 0)]


def class_image(rng, label, height, width):
    """An HxWx3 uint8 BGR image whose mean colour identifies `label`."""
    base = np.array(_PALETTE[label % len(_PALETTE)], dtype=np.int16)
    noise = rng.integers(-40, 41, size=(height, width, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_class_tree(root, counts, seed=0, min_side=40, max_side=120, names=None):
    """Write len(counts) class folders under root with counts[i] JPEGs each.

    Folder names follow Caltech's 'NNN.name' pattern unless `names` is given.
    Returns the folder names, in label order.
    """
    rng = np.random.default_rng(seed)
    names = names or [f"{i + 1:03d}.class{i}" for i in range(len(counts))]
    for label, (name, count) in enumerate(zip(names, counts)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for j in range(count):
            height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            path = os.path.join(root, name, f"{name.split('.')[0]}_{j + 1:04d}.jpg")
            cv2.imwrite(path, class_image(rng, label, height, width))
    return names


def packed_dataset(root, train_counts, *, val_per_class=10, resize=18, seed=0):
    """A data folder (returned: root/data) with training images of len(train_counts) classes,
    train_counts[i] of class i (an imbalanced set, say), and val_per_class of each for
    validation: prepare_data.sh's files, prefix caltech256, images packed at `resize` px."""
    from common import records
    from common.prep import main as prepare
    most = max(train_counts)
    make_class_tree(os.path.join(root, "src"), [most + val_per_class] * len(train_counts), seed=seed,
                    min_side=18, max_side=30)
    full, data = os.path.join(root, "full"), os.path.join(root, "data")
    prepare.main(["--src", os.path.join(root, "src"), "--out", full, "--train-per-class", str(most),
                  "--val-per-class", str(val_per_class), "--resize", str(resize), "--num-thread", "1",
                  "--prefix", "caltech256"])
    os.makedirs(data)
    for name in ("classes.txt", "val.rec", "val.idx", "val.lst", "summary.json"):
        shutil.copy(os.path.join(full, f"caltech256-{name}"), os.path.join(data, f"caltech256-{name}"))
    train = records.check_record_set(os.path.join(full, "caltech256-train.rec"), len(train_counts))
    keep = np.concatenate([np.flatnonzero(train.labels == c)[:n] for c, n in enumerate(train_counts)])
    records.write_subset(train, np.sort(keep), os.path.join(data, "caltech256-train"))
    return data


def add_problem_files(class_dir, rng_seed=1):
    """Add decodable odd images and undecodable files to one class folder.

    Returns (decodable relative names, {undecodable relative name: kind}).
    """
    from PIL import Image  # Pillow writes the CMYK JPEG that OpenCV cannot
    rng = np.random.default_rng(rng_seed)
    good_jpeg = cv2.imencode(".jpg", class_image(rng, 0, 50, 70))[1].tobytes()
    rgba = np.dstack([class_image(rng, 0, 45, 60), np.full((45, 60), 128, np.uint8)])
    png_alpha = cv2.imencode(".png", rgba)[1].tobytes()
    files = {
        "gray.jpg": cv2.imencode(".jpg", class_image(rng, 0, 50, 60)[:, :, 0])[1].tobytes(),
        "alpha.png": png_alpha,
        "png_named.jpg": png_alpha,
        "upper.JPG": good_jpeg,
        "long.jpeg": good_jpeg,
        "empty.jpg": b"",
        "truncated.jpg": good_jpeg[:20],
        "text.jpg": b"this is not an image\n",
        "random.jpg": rng.integers(0, 256, size=4000, dtype=np.uint8).tobytes(),
        ".hidden.jpg": good_jpeg,
        "Thumbs.db": b"\x00" * 64,
        "notes.txt": b"not an image",
    }
    for name, data in files.items():
        with open(os.path.join(class_dir, name), "wb") as f:
            f.write(data)
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(os.path.join(class_dir, "cmyk.jpg"))
    os.makedirs(os.path.join(class_dir, "empty_sub"), exist_ok=True)
    decodable = ["gray.jpg", "alpha.png", "png_named.jpg", "upper.JPG", "long.jpeg", "cmyk.jpg"]
    undecodable = {"empty.jpg": "empty", "truncated.jpg": "truncated header",
                   "text.jpg": "text", "random.jpg": "random bytes"}
    return decodable, undecodable


def flatten_class_tree(tree, flat):
    """Copy the files of a class tree into one folder as CLASS-FILENAME (a labels-CSV
    dataset of the same images); returns [(file name in `flat`, class)], sorted.
    Hidden files stay behind: renamed, they would no longer be hidden."""
    os.makedirs(flat, exist_ok=True)
    rows = []
    for name in sorted(os.listdir(tree)):
        folder = os.path.join(tree, name)
        for filename in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if os.path.isfile(os.path.join(folder, filename)) and not filename.startswith("."):
                shutil.copy2(os.path.join(folder, filename), os.path.join(flat, f"{name}-{filename}"))
                rows.append((f"{name}-{filename}", name))
    return rows


def write_labels_csv(path, rows, header=("id", "label"), line_end="\r\n", bom=False):
    """Write `rows` (tuples of fields) under `header` with the csv module, as a
    spreadsheet program would: CRLF line ends by default, a UTF-8 BOM if asked."""
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator=line_end)
        writer.writerow(header)
        writer.writerows(rows)
