"""Packing's decode-and-resize shortcuts give what the full decode gives.

decode_resized decodes a JPEG at least 8x the target already reduced (libjpeg's scaled
inverse DCT) before INTER_AREA, and that decode is also the check of whether an image
is usable. It must keep the full decode's results: the same shapes (EXIF rotation
included) within 1 grey level, and the same verdicts. Shrinks up to 1.5x are linear.
"""
import io

import cv2
import numpy as np
import pytest

from common import transforms
from common.prep.pack import encode_record
from common.transforms import decode_bytes, decode_resized, resize_shorter
from tools.imagegen import add_problem_files, class_image

TARGET = 32  # shorter side after resizing, px
QUALITY_BOUND = 1.0  # mean absolute difference from the full decode's INTER_AREA result, grey levels


def jpeg(image, quality=95):
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]


def photo(rng, height, width):
    """Coloured noise blurred by 1.5 px (per-pixel noise is JPEG's own loss), with a sharp-edged block."""
    image = cv2.GaussianBlur(class_image(rng, 3, height, width), (0, 0), 1.5)
    image[height // 4:height // 2, width // 3:width // 2] = (250, 250, 250)
    return image


@pytest.fixture
def decodes(monkeypatch):
    """The flags of every cv2.imdecode call transforms makes."""
    flags, real = [], cv2.imdecode
    monkeypatch.setattr(transforms.cv2, "imdecode", lambda data, flag: flags.append(flag) or real(data, flag))
    return flags


@pytest.mark.parametrize("scale, flag", [(8, cv2.IMREAD_REDUCED_COLOR_2), (9, cv2.IMREAD_REDUCED_COLOR_2),
                                         (16, cv2.IMREAD_REDUCED_COLOR_4), (33, cv2.IMREAD_REDUCED_COLOR_8)])
def test_a_large_jpeg_is_decoded_reduced_within_one_grey_level(scale, flag, decodes):
    rng = np.random.default_rng(scale)
    data = jpeg(photo(rng, TARGET * scale + 7, TARGET * scale * 4 // 3))
    full = resize_shorter(decode_bytes(data)[0], TARGET)
    decodes.clear()
    image, reason = decode_resized(data, TARGET)
    assert reason is None and decodes == [flag]  # the reduced path, and no full decode after it
    assert image.shape == full.shape
    assert np.abs(image.astype(np.int16) - full).mean() <= QUALITY_BOUND


def test_below_eight_times_the_target_the_full_decode_is_used_unchanged(decodes):
    data = jpeg(photo(np.random.default_rng(0), TARGET * 8 - 1, TARGET * 9))
    image, _ = decode_resized(data, TARGET)
    assert decodes == [cv2.IMREAD_COLOR]
    assert np.array_equal(image, resize_shorter(decode_bytes(data)[0], TARGET))


def test_a_png_takes_the_full_decode(decodes):
    data = cv2.imencode(".png", photo(np.random.default_rng(0), TARGET * 16, TARGET * 17))[1]
    image, _ = decode_resized(data, TARGET)
    assert decodes == [cv2.IMREAD_COLOR]
    assert np.array_equal(image, resize_shorter(decode_bytes(data)[0], TARGET))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_exif_orientation_is_applied_as_the_full_decode_applies_it(orientation, decodes):
    from PIL import Image
    rgb = cv2.cvtColor(photo(np.random.default_rng(orientation), TARGET * 16, TARGET * 22), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = np.frombuffer(buf.getvalue(), np.uint8)
    full = resize_shorter(decode_bytes(data)[0], TARGET)
    decodes.clear()
    image, _ = decode_resized(data, TARGET)
    assert decodes == [cv2.IMREAD_REDUCED_COLOR_4]
    assert image.shape == full.shape  # turned (6, 8) or not (1, 3), as the full decode
    assert np.abs(image.astype(np.int16) - full).mean() <= QUALITY_BOUND


def test_the_check_gives_the_full_decodes_verdict_on_damaged_jpegs(tmp_path, decodes):
    # The check is packing's decode (encode_record), reduced for a JPEG >= 8x the target.
    data = jpeg(photo(np.random.default_rng(1), 90, 120)).tobytes()
    rng = np.random.default_rng(2)
    damaged = {f"cut{n}.jpg": data[:n] for n in (0, 2, 3, 20, 100, 300, len(data) // 2, len(data) - 2)}
    for k in range(8):  # bytes overwritten at random places, headers included
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), size=4):
            flipped[pos] = int(rng.integers(0, 256))
        damaged[f"flip{k}.jpg"] = bytes(flipped)
    for name, payload in damaged.items():
        (tmp_path / name).write_bytes(payload)
    add_problem_files(str(tmp_path))
    files = [p for p in sorted(tmp_path.iterdir()) if p.is_file()]
    for path in files:
        assert encode_record((str(path), 8, 90))[1] == decode_bytes(np.fromfile(str(path), np.uint8))[1], path.name
    assert cv2.IMREAD_REDUCED_COLOR_2 in decodes  # the JPEGs took the reduced decode


@pytest.mark.parametrize("shorter, filter_", [(40, cv2.INTER_LINEAR), (48, cv2.INTER_LINEAR),
                                              (49, cv2.INTER_AREA), (80, cv2.INTER_AREA), (20, cv2.INTER_LINEAR)])
def test_shrinks_up_to_one_and_a_half_times_are_linear_larger_ones_area(shorter, filter_):
    # Up to 1.5x (48 -> 32 px) INTER_LINEAR was measured as faithful as INTER_AREA and
    # 4-6x faster (transforms.LINEAR_SHRINK_LIMIT); enlargements were always linear.
    width = shorter * 3 // 2
    image = photo(np.random.default_rng(shorter), shorter, width)
    expected = cv2.resize(image, (width * TARGET // shorter, TARGET), interpolation=filter_)
    assert np.array_equal(resize_shorter(image, TARGET), expected)
