"""A small real-photograph classification task, from photographs that installed packages ship.

Caltech-256 cannot be downloaded here, and a generated colour-per-class set tells two
training recipes apart by nothing (both reach 1.0). Photographs can: each one is cut
into a GRID x GRID grid of regions, and a region is a class. An image of a class is a
crop centred at a random point of its region, of random size and shape, so crops of
neighbouring regions overlap and regions of sky or blurred background look alike: a
task with real textures, colours and ambiguity, whose accuracy is short of 1.0.

Pretraining on the regions of some photographs and fine-tuning on those of others is
then what a zoo checkpoint and Caltech-256 are, in miniature. No MXNet here: this is
data preparation (OpenCV and NumPy only).
"""
import importlib.util
import os

import cv2
import numpy as np

# name: (package, path inside it). scikit-image's photographs come with the package's
# wheel (requirements-bench.txt); the others with packages the runtime installs anyway.
PHOTOS = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    **{name: ("skimage", f"data/{name}.{ext}") for name, ext in (
        ("astronaut", "png"), ("chelsea", "png"), ("coffee", "png"), ("rocket", "jpg"),
        ("hubble_deep_field", "jpg"), ("ihc", "png"), ("retina", "jpg"), ("motorcycle_left", "png"),
        ("camera", "png"), ("brick", "png"), ("grass", "png"), ("gravel", "png"), ("moon", "png"),
        ("coins", "png"), ("cell", "png"))},
}
# The default split: fine-tuning on colour photographs of everyday scenes that the
# pretraining never saw; pretraining on the other 12 (colour and grey).
FINETUNE = ("china", "flower", "grace_hopper", "coffee", "chelsea", "rocket")
PRETRAIN = tuple(name for name in PHOTOS if name not in FINETUNE)
MAX_SIDE = 640  # photographs are first shrunk to this, so that regions are of like scale
CROP_SCALE = (0.5, 1.1)  # crop side, in units of the region's shorter side
CROP_ASPECT = (3 / 4, 4 / 3)


def photo_path(name):
    """The file of photograph `name` (a PHOTOS key). FileNotFoundError naming the
    package to install when its package is missing; KeyError for an unknown name."""
    package, relative = PHOTOS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    path = os.path.join(spec.submodule_search_locations[0], relative) if spec else None
    if path is None or not os.path.isfile(path):
        wheel = {"sklearn": "scikit-learn", "skimage": "scikit-image"}.get(package, package)
        raise FileNotFoundError(f"photograph {name!r} comes with {wheel}, which is not installed "
                                f"(pip install -r requirements-bench.txt)")
    return path


def available(names):
    """The names of `names` whose photograph is installed."""
    found = []
    for name in names:
        try:
            photo_path(name)
        except FileNotFoundError:
            continue
        found.append(name)
    return found


def load_photo(name):
    """Photograph `name` as a BGR uint8 array (grey ones as three equal channels, alpha
    dropped), shrunk to MAX_SIDE on its longer side."""
    image = cv2.imread(photo_path(name), cv2.IMREAD_COLOR)
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def regions(shape, grid):
    """[(top, left, height, width)] of a grid x grid cut of an image of `shape`, row by row."""
    rows = np.linspace(0, shape[0], grid + 1).astype(int)
    cols = np.linspace(0, shape[1], grid + 1).astype(int)
    return [(rows[i], cols[j], rows[i + 1] - rows[i], cols[j + 1] - cols[j])
            for i in range(grid) for j in range(grid)]


def region_crop(rng, image, region, side):
    """One image of `region`: a crop centred at a uniform point of it, of side
    CROP_SCALE x the region's shorter side and aspect CROP_ASPECT (shifted to lie inside
    the photograph), resized to side x side."""
    top, left, height, width = region
    size = min(height, width) * rng.uniform(*CROP_SCALE)
    aspect = np.exp(rng.uniform(*np.log(CROP_ASPECT)))
    crop_h = int(min(image.shape[0], max(8, size / np.sqrt(aspect))))
    crop_w = int(min(image.shape[1], max(8, size * np.sqrt(aspect))))
    centre_y, centre_x = top + rng.uniform(0, height), left + rng.uniform(0, width)
    y = int(np.clip(centre_y - crop_h / 2, 0, image.shape[0] - crop_h))
    x = int(np.clip(centre_x - crop_w / 2, 0, image.shape[1] - crop_w))
    # Enlarging small crops smooths them as a camera's lower resolution would.
    return cv2.resize(image[y:y + crop_h, x:x + crop_w], (side, side), interpolation=cv2.INTER_AREA
                      if crop_h > side else cv2.INTER_LINEAR)


def make_photo_classes(root, photos, *, grid, per_class, side, seed=0, quality=92):
    """Write one class folder per region of each photograph under root (Caltech's
    'NNN.name' folders, named PHOTO-rROWcCOL), per_class JPEGs of side x side px each.
    Returns the folder names in label order."""
    rng = np.random.default_rng(seed)
    names = []
    for photo in photos:
        image = load_photo(photo)
        for k, region in enumerate(regions(image.shape, grid)):
            name = f"{len(names) + 1:03d}.{photo}-r{k // grid}c{k % grid}"
            folder = os.path.join(root, name)
            os.makedirs(folder, exist_ok=True)
            for j in range(per_class):
                path = os.path.join(folder, f"{len(names) + 1:03d}_{j + 1:04d}.jpg")
                cv2.imwrite(path, region_crop(rng, image, region, side), [cv2.IMWRITE_JPEG_QUALITY, quality])
            names.append(name)
    return names
