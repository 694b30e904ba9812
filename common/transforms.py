"""The one image pipeline, side by side: packing, the iterators, and predict.py.

An image reaches the network through two paths that must agree exactly:

  packed:  decode_resized -> JPEG in a .rec                       (prepare_data.sh)
           -> record_iter: decode, center crop (validation)       (training, score.py)
  direct:  preprocess = decode_resized -> fit_to_crop -> center_crop
                                                                  (predict.py)

Both end in raw 0-255 RGB floats, (C, H, W): no mean/std, the zoo's ResNets
normalize with their bn_data layer. tests/test_rules.py feeds the same images
through both and compares. Training alone adds random crops and mirrors, and an
Augment's (--random-resized-crop, --color-jitter): neither path above has them.

Nothing here imports MXNet at module level: prepare_data.sh's spawned workers
use this module and must stay light (record_iter imports it when called).
"""
import argparse
import dataclasses

import cv2
import numpy as np

from .cli import UserError, float_range

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})


class UnreadableImage(UserError):
    """An image file that cannot be read or decoded; the message names it and why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def image_shape(text):
    """argparse type: 'C,H,W' -> (C, H, W) ints."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[0] not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected channels,height,width like 3,224,224, got {text!r}")
    return shape


def decode_image(path):
    """Decode an image file as a 3-channel BGR uint8 array.

    Grayscale, CMYK, 16-bit and alpha images all come back as 3 channels.
    Returns (array, None) or (None, reason).
    """
    data, reason = read_bytes(path)
    return (None, reason) if reason else decode_bytes(data)


def read_bytes(path):
    """(a file's bytes as a uint8 array, None), or (None, the reason it cannot be read)."""
    try:
        return np.fromfile(path, dtype=np.uint8), None
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"


def decode_bytes(data):
    """decode_image for encoded bytes (a uint8 array or bytes): (BGR array, None) or (None, reason)."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if data.size == 0:
        return None, "empty file (0 bytes)"
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None, "OpenCV cannot decode it"
    return image, None


# A JPEG can be decoded already shrunk by 2, 4 or 8: libjpeg scales in its inverse
# DCT, each output pixel standing for a 2x2, 4x4 or 8x8 block, so the decode does a
# fraction of the work. Its filter is not INTER_AREA's box: reduced to just above the
# target, fine detail came out 2-4 grey levels (mean absolute difference) off the
# full decode's INTER_AREA result, and 1-2 when the reduced image stayed at least
# twice the target. It is reduced only while it stays at least 4 times the target,
# so that INTER_AREA does most of the averaging: within 1 grey level on the sources
# measured (2026-12-03, 256 px targets, 8-32x sources: 0.3-1.0), 1.4-4x faster.
# Largest factor first.
_REDUCED_DECODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                    (2, cv2.IMREAD_REDUCED_COLOR_2))
# Frame headers (SOF0-SOF15) carry the size; C4, C8 and CC are other markers.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data):
    """(height, width) from a JPEG's frame header (a uint8 array), before any EXIF
    rotation; None if `data` is not a JPEG or has no frame header."""
    buf = data.tobytes()
    if buf[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while pos + 9 <= len(buf) and buf[pos] == 0xFF:
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _SOF_MARKERS:
            return int.from_bytes(buf[pos + 5:pos + 7], "big"), int.from_bytes(buf[pos + 7:pos + 9], "big")
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(buf[pos + 2:pos + 4], "big")
    return None


def load_image(path, size):
    """An image file decoded (3-channel BGR) with its shorter side resized to `size` px
    (0: unchanged): (array, None) or (None, reason), as decode_image then resize_shorter."""
    data, reason = read_bytes(path)
    return (None, reason) if reason else decode_resized(data, size)


def decode_resized(data, size):
    """decode_bytes then resize_shorter(image, size), for encoded bytes (a uint8 array).

    A JPEG whose shorter side is at least 8, 16 or 32 times `size` is decoded already
    reduced by 2, 4 or 8 (the largest that leaves at least 4 times `size`;
    _REDUCED_DECODES), and INTER_AREA shrinks it from there to the size computed from
    the full image's: the same shape, within 1 grey level (mean absolute difference)
    of the full decode's INTER_AREA result, 1.4-4x faster on such images
    (tests/test_prepare_resize.py; bench/README.md). Smaller images take the full decode.
    """
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    image = _decode_reduced(data, size) if size > 0 else None
    if image is not None:
        return image, None
    image, reason = decode_bytes(data)
    return (None, reason) if reason else (resize_shorter(image, size), None)


def _decode_reduced(data, size):
    """decode_resized's reduced path, or None where it does not apply."""
    header = jpeg_size(data)
    if header is None:
        return None
    height, width = header
    factor, flag = next(((f, flag) for f, flag in _REDUCED_DECODES if min(height, width) >= 4 * f * size),
                        (1, None))
    if flag is None:
        return None
    image = cv2.imdecode(data, flag)
    if image is None or image.size == 0:
        return None  # the full decode reports why
    # imdecode applies the EXIF orientation, as the full decode does: the reduced
    # shape says whether it turned the image (a square-ish one that could be
    # either, on rounding, takes the full path).
    upright, turned = (-(-height // factor), -(-width // factor)), (-(-width // factor), -(-height // factor))
    if image.shape[:2] == upright and upright != turned:
        target = _shorter_side_shape(height, width, size)
    elif image.shape[:2] == turned and upright != turned:
        target = _shorter_side_shape(width, height, size)
    elif height == width and image.shape[:2] == upright:
        target = (size, size)
    else:
        return None
    if image.shape[:2] == target:
        return image
    return cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)


def _shorter_side_shape(height, width, size):
    """(h, w) with the shorter side `size` and the longer floor(long * size / short), as im2rec."""
    if height <= width:
        return size, max(1, width * size // height)
    return max(1, height * size // width), size


# Shrinking by at most this factor, INTER_LINEAR is as faithful as INTER_AREA and
# 4-6x faster (1.0-1.5 ms of an image's 2.5 ms packing at Caltech's sizes). Measured
# (2026-12-03) on the photographs scikit-learn and matplotlib ship (china, flower,
# grace_hopper), against each one area-shrunk from its full resolution
# straight to the target, the source first area-shrunk to f x the target: mean
# absolute difference at f = 1.2 / 1.4 / 1.5 / 1.6 / 2.0, linear 2.66 2.27 2.07 2.06
# 1.67, area 2.77 2.31 2.12 2.02 0.87 (china; flower and grace_hopper favour linear
# up to 1.7). Beyond 1.5 linear starts to alias and INTER_AREA averages instead.
LINEAR_SHRINK_LIMIT = 1.5
RESIZE_FILTER = f"linear up to {LINEAR_SHRINK_LIMIT}x smaller, else area"  # in each pack's stamp


def resize_shorter(image, size):
    """Resize an HxWxC image so its shorter side is `size` px (0: unchanged).

    Like im2rec, the longer side is floor(long * size / short). INTER_LINEAR when
    enlarging or shrinking by at most LINEAR_SHRINK_LIMIT, INTER_AREA (it averages
    instead of aliasing) when shrinking more.
    """
    height, width = image.shape[:2]
    if size <= 0 or min(height, width) == size:
        return image
    new_h, new_w = _shorter_side_shape(height, width, size)
    area = min(height, width) > LINEAR_SHRINK_LIMIT * size
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def fit_to_crop(image, height, width):
    """Enlarge an HxWx3 image smaller than the crop, as MXNet 1.9.1's ImageRecordIter does.

    The versions of the augmenter's source we could read (src/io/image_aug_default.cc)
    stop there with a CHECK 'input image size smaller than input shape'; the 1.9.1
    wheel does not fail but resizes (bilinear) an image shorter than `height` to that
    height, its width scaled and floored, then one narrower than `width` to that width,
    its height scaled and floored. Measured, and checked for square and non-square
    crops by the tests. Images at least the crop's size are returned as is.
    """
    rows, cols = image.shape[:2]
    if rows < height:
        cols = cols * height // rows
        rows = height
        image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_LINEAR)
    if cols < width:
        rows = rows * width // cols
        image = cv2.resize(image, (width, rows), interpolation=cv2.INTER_LINEAR)
    return image


def center_crop(image, height, width):
    """The height x width window at offset ((h-height)//2, (w-width)//2), as rand_crop=False does."""
    rows, cols = image.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    return image[top:top + height, left:left + width]


def preprocess(path, resize, image_shape):
    """The (C, H, W) float32 RGB 0-255 array validation would feed for this image file.

    resize: shorter side in px before cropping (0: keep), as prepare_data.sh packs.
    image_shape: (3, H, W). Raises UnreadableImage naming the file and the reason.
    """
    _, height, width = image_shape
    image = load_resized(path, resize, image_shape)
    return network_input(center_crop(fit_to_crop(image, height, width), height, width))


def load_resized(path, resize, image_shape):
    """An image file decoded (BGR) and resized as packing does, before any crop: what
    preprocess crops, and what test-time augmentation takes its views of."""
    channels, height, width = image_shape
    if channels != 3:
        raise UserError(f"--image-shape {channels},{height},{width}: only 3-channel (RGB) input "
                        f"is supported for image files")
    image, reason = load_image(path, resize)
    if reason:
        raise UnreadableImage(path, reason)
    return image


def network_input(crop):
    """An HxWx3 BGR uint8 crop as the network takes it: (3, H, W) float32 RGB 0-255."""
    # copy: the crop is a view into the whole image
    return np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


def corner_crop(image, height, width, corner):
    """The height x width window at a corner: 'tl', 'tr', 'bl', 'br' (or 'center')."""
    if corner == "center":
        return center_crop(image, height, width)
    rows, cols = image.shape[:2]
    top = 0 if corner[0] == "t" else rows - height
    left = 0 if corner[1] == "l" else cols - width
    return image[top:top + height, left:left + width]


TTA_CROPS = ("center", "tl", "tr", "bl", "br")


def tta_views(image, image_shape, *, scales=(1.0,), crops=TTA_CROPS, mirror=True):
    """The test-time views of a decoded BGR image (already resized as packed), as network inputs.

    For each scale (of the shorter side), the image is enlarged to the crop if
    needed (as the iterator does), then each crop, then its mirror. The first
    view is the center crop at the scale 1.0 given first: validation's input.
    """
    _, height, width = image_shape
    views = []
    for scale in scales:
        scaled = image if scale == 1.0 else resize_shorter(image, max(1, round(min(image.shape[:2]) * scale)))
        scaled = fit_to_crop(scaled, height, width)
        for corner in crops:
            crop = corner_crop(scaled, height, width, corner)
            views.append(network_input(crop))
            if mirror:
                views.append(network_input(crop[:, ::-1]))
    return views


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training-only augmentation beyond the random crop + mirror, by ImageRecordIter's own
    augmenters (MXNet 1.9.1 src/io/image_aug_default.cc).

    resized_crop: RandomResizedCrop, a random window of `area` (min, max: fractions of the
    image's area) and `aspect` (min, max: width/height) resized to the input shape, instead
    of a fixed-size random crop. color: brightness, contrast and saturation each jittered
    by a random value in [-color, color] (0: off).
    """
    resized_crop: bool = False
    area: tuple = (0.35, 1.0)
    aspect: tuple = (0.75, 4 / 3)
    color: float = 0.0

    def iter_params(self):
        """The ImageRecordIter keyword arguments (empty for no augmentation)."""
        params = {}
        if self.resized_crop:  # MXNet 1.9.1 refuses it together with rand_crop (image_aug_default.cc:352)
            params.update(rand_crop=False, random_resized_crop=True, min_random_area=self.area[0],
                          max_random_area=self.area[1],
                          min_aspect_ratio=self.aspect[0], max_aspect_ratio=self.aspect[1])
        if self.color:
            params.update(brightness=self.color, contrast=self.color, saturation=self.color)
        return params


def number_pair(low, high=None):
    """argparse type factory: 'A,B' -> (A, B) with low < A <= B (<= high when given)."""
    wanted = f"two numbers MIN,MAX with {low:g} < MIN <= MAX" + (f" <= {high:g}" if high is not None else "")

    def parse(text):
        try:
            pair = tuple(float(part) for part in text.split(","))
        except ValueError:
            pair = ()
        if (len(pair) != 2 or not all(np.isfinite(pair)) or not low < pair[0] <= pair[1]
                or (high is not None and pair[1] > high)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return pair
    parse.__name__ = wanted
    return parse


def add_augment_args(parser):
    """The training-augmentation group (validation is never augmented). The flags have a
    --no- form, so that an explicit one can switch off what a --recipe turns on."""
    group = parser.add_argument_group("augmentation (training only)")
    group.add_argument("--random-resized-crop", dest="random_resized_crop", action="store_true", default=False,
                       help="random window of --crop-area and --crop-aspect resized to --image-shape, instead "
                            "of a fixed-size random crop (default: off; on with --recipe modern)")
    group.add_argument("--no-random-resized-crop", dest="random_resized_crop", action="store_false",
                       help="the fixed-size random crop, --recipe classic's (default): switches off "
                            "--recipe modern's --random-resized-crop")
    group.add_argument("--crop-area", metavar="MIN,MAX", type=number_pair(0, 1), default=Augment.area,
                       help="--random-resized-crop: the window's area, as fractions of the image's, in (0, 1] "
                            "(default: 0.35,1)")
    group.add_argument("--crop-aspect", metavar="MIN,MAX", type=number_pair(0), default=Augment.aspect,
                       help="--random-resized-crop: the window's width/height, > 0 (default: 0.75,1.333)")
    group.add_argument("--color-jitter", metavar="X", type=float_range(0, 1), default=0.0,
                       help="brightness, contrast and saturation each moved by a random value in [-X, X], "
                            "X in [0, 1] (0: off)")
    return group


def record_iter(record_set, *, image_shape, batch_size, train, threads, seed=0, augment=None):
    """An ImageRecordIter with the project's one preprocessing recipe.

    Training: true global shuffle through the .idx, random crop and mirror, and
    `augment`'s (an Augment, or None) augmenters.
    Validation/scoring: file order and center crop; `augment` must be None. Use a fresh iterator per pass
    and keep only the first N outputs: MXNet 1.9.1 misreports the padding of the
    last batch (see common/evaluate.py).
    seed: shuffle and augmentation seed; give each epoch its own for an exact resume.
    """
    import mxnet as mx
    assert train or augment is None, "validation is never augmented"
    params = dict(
        path_imgrec=record_set.rec, path_imgidx=record_set.idx, label_width=1,
        data_name="data", label_name="softmax_label", data_shape=tuple(image_shape),
        batch_size=batch_size, shuffle=train, rand_crop=train, rand_mirror=train,
        round_batch=train, preprocess_threads=threads, seed=seed, seed_aug=seed,
        verbose=False)
    params.update(augment.iter_params() if augment else {})
    return mx.io.ImageRecordIter(**params)
