"""common/data.py: the RecordIO sets are checked in Python before MXNet reads them.

SoftmaxOutput trains silently wrong on a label >= num_classes, and a truncated or
corrupt .rec can kill the process natively inside MXNet, so load_dataset reads
every record header itself and every failure is a one-line UserError naming the
file. Uses a tiny packed set (tests/trainkit.prepare_dataset) and hand-written
records; no network, no MXNet iterators.
"""
import argparse
import math
import os
import shutil
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest

from common import records as data, transforms
from common.cli import UserError
from common.prep.imagefolder import read_lst
from tests import trainkit
from tools.imagegen import class_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "caltech256"  # prepare_data.sh's default, which load_dataset looks for
COUNTS = (12, 12, 12, 12)  # images per class in the packed set
TRAIN_PER_CLASS = 8
MAGIC = struct.pack("<I", 0xCED7230A)  # dmlc RecordIO's record start


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A packed set, made once; tests that damage it work on a copy (`data_dir`)."""
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("packed")), counts=COUNTS,
                                    train_per_class=TRAIN_PER_CLASS)


@pytest.fixture
def data_dir(packed, tmp_path):
    return shutil.copytree(packed, str(tmp_path / "data"))


def path(data_dir, name):
    return os.path.join(data_dir, name)


def load(data_dir, **kwargs):
    return data.load_dataset(data_dir, PREFIX, **kwargs)


def idx_rows(idx):
    with open(idx, encoding="utf-8") as f:
        return [tuple(int(v) for v in line.split()) for line in f if line.strip()]


def jpeg(seed):
    """A small real JPEG (its content does not matter to the header checks)."""
    image = class_image(np.random.default_rng(seed), seed % 10, 20, 20)
    return cv2.imencode(".jpg", image)[1].tobytes()


def write_records(data_dir, name, labels, payloads=None):
    """NAME.rec/.idx with one record per label, written as im2rec does."""
    writer = mx.recordio.MXIndexedRecordIO(path(data_dir, f"{name}.idx"),
                                           path(data_dir, f"{name}.rec"), "w")
    for i, label in enumerate(labels):
        payload = payloads[i] if payloads else jpeg(i)
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, label, i, 0), payload))
    writer.close()


def crafted(tmp_path, train_labels, val_labels=(0, 1), num_classes=4, train_payloads=None):
    """A data folder with hand-written records and num_classes names in classes.txt."""
    data_dir = str(tmp_path / "crafted")
    os.makedirs(data_dir)
    with open(path(data_dir, f"{PREFIX}-classes.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i:03d}.class{i}\n" for i in range(num_classes))
    write_records(data_dir, f"{PREFIX}-train", train_labels, train_payloads)
    write_records(data_dir, f"{PREFIX}-val", val_labels)
    return data_dir


def truncate(file, size):
    with open(file, "r+b") as f:
        f.truncate(size)


# ---------------------------------------------------------------- a good set

def test_counts_and_classes(packed):
    dataset = load(packed)
    with open(path(packed, f"{PREFIX}-classes.txt"), encoding="utf-8") as f:
        assert dataset.classes == f.read().split()
    assert dataset.num_classes == len(COUNTS)
    assert dataset.classes_file == path(packed, f"{PREFIX}-classes.txt")
    assert len(dataset.train) == len(COUNTS) * TRAIN_PER_CLASS
    assert len(dataset.val) == sum(COUNTS) - len(COUNTS) * TRAIN_PER_CLASS
    assert dataset.train.rec == path(packed, f"{PREFIX}-train.rec")
    assert dataset.val.idx == path(packed, f"{PREFIX}-val.idx")


@pytest.mark.parametrize("split", ["train", "val"])
def test_labels_are_the_lst_labels_in_idx_order(packed, split):
    record_set = getattr(load(packed), split)
    lst = {index: label for index, label, _ in read_lst(path(packed, f"{PREFIX}-{split}.lst"))}
    keys = [key for key, _ in idx_rows(record_set.idx)]
    assert record_set.labels.dtype == np.int64
    np.testing.assert_array_equal(record_set.labels, [lst[key] for key in keys])
    # Every class is present (a label bug that maps all to 0 would not be).
    assert set(record_set.labels.tolist()) == set(range(len(COUNTS)))


def test_labels_match_what_mxnet_reads(packed):
    # An independent reader: MXNet's own record unpacking, through the .idx.
    record_set = load(packed).train
    reader = mx.recordio.MXIndexedRecordIO(record_set.idx, record_set.rec, "r")
    try:
        mxnet_labels = [mx.recordio.unpack(reader.read_idx(key))[0].label
                        for key, _ in idx_rows(record_set.idx)]
    finally:
        reader.close()
    np.testing.assert_array_equal(record_set.labels, mxnet_labels)


# ---------------------------------------------------------------- labels

def test_label_beyond_the_classes_names_label_and_range(tmp_path):
    data_dir = crafted(tmp_path, [0, 1, 4, 2], num_classes=4)
    with pytest.raises(UserError) as error:
        load(data_dir)
    message = str(error.value)
    assert "label 4" in message and "[0, 3]" in message
    assert path(data_dir, f"{PREFIX}-train.rec") in message


def test_label_in_the_validation_set_is_checked_too(tmp_path):
    data_dir = crafted(tmp_path, [0, 1], val_labels=[0, 7], num_classes=4)
    with pytest.raises(UserError, match="label 7") as error:
        load(data_dir)
    assert path(data_dir, f"{PREFIX}-val.rec") in str(error.value)


@pytest.mark.parametrize("label, shown", [(-1.0, "-1"), (1.5, "1.5"), (math.nan, "nan")])
def test_negative_or_fractional_label_is_an_error(tmp_path, label, shown):
    data_dir = crafted(tmp_path, [0, label, 1], num_classes=4)
    with pytest.raises(UserError) as error:
        load(data_dir)
    assert f"label {shown}" in str(error.value)


def test_highest_valid_label_is_accepted(tmp_path):
    # The range check is [0, num_classes): the last class is not off by one.
    assert load(crafted(tmp_path, [3, 0], num_classes=4)).train.labels.tolist() == [3, 0]


def test_multi_label_record_is_an_error(tmp_path):
    data_dir = crafted(tmp_path, [0, 1])
    writer = mx.recordio.MXIndexedRecordIO(path(data_dir, f"{PREFIX}-train.idx"),
                                           path(data_dir, f"{PREFIX}-train.rec"), "w")
    # flag 2: two float labels before the image (label_width 2); we train with one.
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, np.array([0.0, 1.0]), 0, 0), jpeg(0)))
    writer.close()
    with pytest.raises(UserError, match="2 labels"):
        load(data_dir)


# ---------------------------------------------------------------- damaged files

@pytest.mark.parametrize("where", ["payload", "header", "length"])
def test_truncated_rec_is_a_user_error(data_dir, where):
    rec = path(data_dir, f"{PREFIX}-train.rec")
    last = idx_rows(path(data_dir, f"{PREFIX}-train.idx"))[-1][1]
    # payload: mid-image; header: inside the IRHeader; length: inside the length word.
    cut = {"payload": (last + os.path.getsize(rec)) // 2, "header": last + 12, "length": last + 6}[where]
    truncate(rec, cut)
    with pytest.raises(UserError) as error:
        load(data_dir)  # reaching the next line at all means no native crash
    assert rec in str(error.value) and "truncated" in str(error.value)


def test_idx_offset_off_a_record_start_is_corrupt(data_dir):
    idx = path(data_dir, f"{PREFIX}-train.idx")
    rows = idx_rows(idx)
    rows[3] = (rows[3][0], rows[3][1] + 4)  # points into record 3, not at its magic
    with open(idx, "w", encoding="utf-8") as f:
        f.writelines(f"{key}\t{offset}\n" for key, offset in rows)
    with pytest.raises(UserError, match="corrupt"):
        load(data_dir)


@pytest.mark.parametrize("line", ["garbage here", "7", "3\tnot-a-number"])
def test_garbage_idx_line_names_file_and_line(data_dir, line):
    idx = path(data_dir, f"{PREFIX}-val.idx")
    with open(idx, encoding="utf-8") as f:
        lines = f.readlines()
    lines[2] = line + "\n"
    with open(idx, "w", encoding="utf-8") as f:
        f.writelines(lines)
    with pytest.raises(UserError) as error:
        load(data_dir)
    assert f"{idx}:3" in str(error.value)


def test_empty_idx_is_an_error(data_dir):
    idx = path(data_dir, f"{PREFIX}-train.idx")
    truncate(idx, 0)
    with pytest.raises(UserError, match="empty") as error:
        load(data_dir)
    assert idx in str(error.value)


@pytest.mark.parametrize("name", [f"{PREFIX}-train.rec", f"{PREFIX}-train.idx", f"{PREFIX}-val.rec",
                                  f"{PREFIX}-val.idx", f"{PREFIX}-classes.txt"])
def test_missing_file_is_named(data_dir, name):
    os.remove(path(data_dir, name))
    with pytest.raises(UserError) as error:
        load(data_dir)
    message = str(error.value)
    assert path(data_dir, name) in message
    assert any(word in message for word in ("no such file", "missing", "not found")), message


def test_lst_and_idx_counts_must_agree(data_dir):
    lst = path(data_dir, f"{PREFIX}-train.lst")
    with open(lst, encoding="utf-8") as f:
        lines = f.readlines()
    with open(lst, "w", encoding="utf-8") as f:
        f.writelines(lines[:-1])
    with pytest.raises(UserError) as error:
        load(data_dir)
    message = str(error.value)
    assert lst in message and f"{len(lines) - 1} images" in message and f"{len(lines)} records" in message


# ---------------------------------------------------------------- options that must agree

def test_num_classes_must_match_classes_txt(packed):
    assert load(packed, num_classes=len(COUNTS)).num_classes == len(COUNTS)
    with pytest.raises(UserError) as error:
        load(packed, num_classes=len(COUNTS) + 1)
    message = str(error.value)
    assert f"--num-classes {len(COUNTS) + 1}" in message and f"{len(COUNTS)} classes" in message
    assert path(packed, f"{PREFIX}-classes.txt") in message


def test_num_examples_must_match_the_idx(packed):
    train_size = len(COUNTS) * TRAIN_PER_CLASS
    assert len(load(packed, num_examples=train_size).train) == train_size
    with pytest.raises(UserError) as error:
        load(packed, num_examples=train_size - 1)
    message = str(error.value)
    assert f"--num-examples {train_size - 1}" in message and f"{train_size} records" in message


def test_explicit_paths_override_the_defaults(packed, tmp_path):
    # --data-train/--data-val/--classes from another folder, e.g. a second dataset.
    other = str(tmp_path / "elsewhere")
    os.makedirs(other)
    for ext in ("rec", "idx"):
        shutil.copy(path(packed, f"{PREFIX}-val.{ext}"), path(other, f"v.{ext}"))
    shutil.copy(path(packed, f"{PREFIX}-classes.txt"), path(other, "names.txt"))
    dataset = data.load_dataset(str(tmp_path / "nowhere"), PREFIX,
                                data_train=path(packed, f"{PREFIX}-train.rec"),
                                data_val=path(other, "v.rec"), classes=path(other, "names.txt"))
    assert dataset.val.idx == path(other, "v.idx")
    assert dataset.classes_file == path(other, "names.txt")


# ---------------------------------------------------------------- --image-shape

def test_image_shape_parses_channels_height_width():
    assert transforms.image_shape("3,224,224") == (3, 224, 224)
    assert transforms.image_shape("1,32,48") == (1, 32, 48)


@pytest.mark.parametrize("text", ["224,224", "a,b,c", "3,0,4", "3,224,224,1", "", "2,224,224",
                                  "3,-1,4"])
def test_bad_image_shape_is_rejected(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        transforms.image_shape(text)
    assert repr(text) in str(error.value)


def test_image_shape_error_through_the_parser(capsys):
    from common.cli import OneLineArgumentParser
    parser = OneLineArgumentParser(prog="t")
    data.add_data_args(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--image-shape", "224,224"])
    assert exit_info.value.code == 2
    assert "--image-shape" in capsys.readouterr().err


# ---------------------------------------------------------------- gaps found and closed

def test_rec_cut_in_the_last_records_padding_is_a_user_error(tmp_path):
    image = jpeg(0)
    image += b"\x00" * ((4 - (len(image) + 24) % 4) % 4 + 1)  # record length 1 mod 4: 3 pad bytes
    data_dir = crafted(tmp_path, [0, 1], train_payloads=[image, image])
    rec = path(data_dir, f"{PREFIX}-train.rec")
    truncate(rec, os.path.getsize(rec) - 1)
    with pytest.raises(UserError, match="truncated"):
        load(data_dir)


def test_rec_cut_in_a_split_records_second_part_is_a_user_error(tmp_path):
    # A valid JPEG whose comment segment holds the magic word (after the 24-byte
    # IRHeader, 4 bytes of SOI + COM marker/length and 2 more: offset 32, aligned).
    image = jpeg(1)
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 12) + b"\x00\x00" + MAGIC + b"\x00" * 6
    split = image[:2] + comment + image[2:]
    data_dir = crafted(tmp_path, [0, 1], train_payloads=[image, split])
    rec = path(data_dir, f"{PREFIX}-train.rec")
    last = idx_rows(path(data_dir, f"{PREFIX}-train.idx"))[-1][1]
    with open(rec, "rb") as f:
        f.seek(last + 4)
        assert struct.unpack("<I", f.read(4))[0] >> 29 == 1, "record was not split: test is void"
    assert load(data_dir).train.labels.tolist() == [0, 1]  # whole, the split record reads fine
    truncate(rec, os.path.getsize(rec) - 100)  # deep inside the second part
    with pytest.raises(UserError, match="truncated"):
        load(data_dir)


# ---------------------------------------------------------------- full decode (--check-data full)

def test_full_check_decodes_every_image_and_names_the_one_that_does_not(tmp_path):
    broken = jpeg(2)[:40] + b"\x00" * 200  # a JPEG start, then nothing decodable
    data_dir = crafted(tmp_path, [0, 1, 2], train_payloads=[jpeg(0), broken, jpeg(3)])
    assert load(data_dir).train.labels.tolist() == [0, 1, 2]  # the headers are fine
    with pytest.raises(UserError, match=r"caltech256-train.rec: the image of record 1 \(byte \d+\) does not decode"):
        load(data_dir, decode=True)


def test_full_check_reads_split_records_whole(tmp_path):
    """A record whose JPEG holds the magic word is stored in parts; joined, it decodes."""
    image = jpeg(1)
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 12) + b"\x00\x00" + MAGIC + b"\x00" * 6
    data_dir = crafted(tmp_path, [0, 1], train_payloads=[image, image[:2] + comment + image[2:]])
    assert load(data_dir, decode=True).train.labels.tolist() == [0, 1]


def test_full_check_through_the_training_command(tmp_path):
    import subprocess
    import sys
    broken = jpeg(2)[:40] + b"\x00" * 200
    data_dir = crafted(tmp_path, [0, 1, 2, 3], train_payloads=[jpeg(0), jpeg(1), broken, jpeg(3)])
    cmd = [sys.executable, os.path.join(REPO, "train_caltech.py"), "--data-dir", data_dir, "--network", "resnet-20",
           "--image-shape", "3,16,16", "--mode", "scratch", "--cpus", "1", "--batch-size", "2",
           "--model-prefix", str(tmp_path / "run"), "--check-data", "full"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 1 and "the image of record 2" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "run-args.json")
