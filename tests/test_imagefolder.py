"""Scanning, checking and splitting an image-folder tree (no packing)."""
import os

import pytest

from common.prep.imagefolder import lst_text, read_lst, scan_tree, split_class
from common.prep.pack import encode_record
from common.transforms import decode_image
from tools.imagegen import add_problem_files, make_class_tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    make_class_tree(str(root), [4, 5, 3])
    os.makedirs(root / "257.clutter")
    make_class_tree(str(root), [2], names=["257.clutter"])
    os.makedirs(root / "004.empty")
    os.makedirs(root / ".hidden_class")
    (root / "stray.jpg").write_bytes(b"x")
    return root


def test_scan_finds_sorted_classes_and_reports_everything_left_out(tree):
    add_problem_files(str(tree / "002.class1"))
    scan = scan_tree(str(tree))
    assert [name for name, _ in scan.classes] == ["001.class0", "002.class1", "003.class2"]
    files = dict(scan.classes)["002.class1"]
    # Every candidate image is listed, decodable or not: checking comes later.
    for name in ["gray.jpg", "alpha.png", "upper.JPG", "long.jpeg", "cmyk.jpg", "empty.jpg", "text.jpg"]:
        assert f"002.class1/{name}" in files
    ignored = dict(scan.ignored)
    assert ignored["002.class1/.hidden.jpg"] == "hidden"
    assert ignored["002.class1/Thumbs.db"] == "system file"
    assert ignored["002.class1/notes.txt"] == "not an image extension"
    assert ignored["stray.jpg"] == "not inside a class folder"
    assert ignored[".hidden_class"] == "hidden"
    excluded = {name: (count, reason) for name, count, reason in scan.excluded}
    assert excluded["257.clutter"][0] == 2 and "clutter" in excluded["257.clutter"][1]
    assert excluded["004.empty"] == (0, "no image files")


def test_include_clutter_keeps_the_clutter_class_last(tree):
    scan = scan_tree(str(tree), include_clutter=True)
    assert [name for name, _ in scan.classes][-1] == "257.clutter"
    assert len(scan.classes) == 4


def test_nested_images_belong_to_their_top_level_class(tree):
    nested = tree / "001.class0" / "greg"
    make_class_tree(str(tree / "001.class0"), [2], names=["greg"])
    assert nested.is_dir()
    files = dict(scan_tree(str(tree)).classes)["001.class0"]
    assert len(files) == 6 and sum(f.startswith("001.class0/greg/") for f in files) == 2


def test_check_accepts_odd_images_as_three_channels_and_rejects_garbage(tmp_path):
    decodable, undecodable = add_problem_files(str(tmp_path))
    for name in decodable:
        image, reason = decode_image(str(tmp_path / name))
        assert reason is None, name
        assert image.ndim == 3 and image.shape[2] == 3, name
    for name in undecodable:
        assert encode_record((str(tmp_path / name), 16, 90)) == (None, decode_image(str(tmp_path / name))[1]), name
        assert decode_image(str(tmp_path / name))[1] is not None, name
    assert encode_record((str(tmp_path / "empty.jpg"), 16, 90)) == (None, "empty file (0 bytes)")


def test_split_is_keyed_by_seed_and_class_not_by_input_order():
    files = [f"c/{i:03d}.jpg" for i in range(100)]
    train, val, unused = split_class(files, "c", seed=0, train_per_class=60)
    assert len(train) == 60 and len(val) == 40 and unused == []
    assert sorted(train + val) == files
    assert split_class(list(reversed(files)), "c", 0, 60) == (train, val, unused)
    assert split_class(files, "c", 1, 60)[0] != train
    assert split_class(files, "other", 0, 60)[0] != train


def test_split_adding_a_file_moves_no_other_file():
    files = [f"c/{i:03d}.jpg" for i in range(100)]
    train, val, _ = split_class(files, "c", 0, 60)
    train2, val2, _ = split_class(files + ["c/new.jpg"], "c", 0, 60)
    moved = set(train) - set(train2)
    # At most one training file gives way to the new one; nothing else changes sides.
    assert len(moved) <= 1 and set(val) - set(val2) == set()


def test_split_small_classes_keep_a_validation_image():
    train, val, unused = split_class(["a", "b", "c"], "k", 0, 60)
    assert (len(train), len(val), unused) == (2, 1, [])
    assert sorted(train + val) == ["a", "b", "c"]
    assert split_class(["only"], "k", 0, 60) == (["only"], [], [])
    assert split_class([], "k", 0, 60) == ([], [], [])


def test_val_per_class_caps_validation_and_reports_the_rest_unused():
    files = [f"{i:02d}" for i in range(20)]
    train, val, unused = split_class(files, "k", 0, 5, val_per_class=4)
    assert (len(train), len(val), len(unused)) == (5, 4, 11)
    assert sorted(train + val + unused) == files


def test_lst_round_trip_in_im2rec_format(tmp_path):
    text = lst_text([(0, "a/x.jpg"), (3, "b/y z.jpg")])
    assert text == "0\t0.000000\ta/x.jpg\n1\t3.000000\tb/y z.jpg\n"
    path = tmp_path / "x.lst"
    path.write_text(text)
    assert read_lst(str(path)) == [(0, 0.0, "a/x.jpg"), (1, 3.0, "b/y z.jpg")]
