"""prepare_data.sh end to end on generated trees: split, lists, RecordIO, reruns, misuse."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

from common.prep import main as prepare
from common.prep.imagefolder import read_lst
from tools.imagegen import add_problem_files, make_class_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "prepare_data.sh")
COUNTS = [9, 12, 7, 10]  # images per object class


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A Caltech-like tree: 4 object classes, a clutter class, an empty folder, problem files."""
    root = tmp_path_factory.mktemp("caltech") / "256_ObjectCategories"
    make_class_tree(str(root), COUNTS, min_side=30, max_side=150)
    make_class_tree(str(root), [5], names=["257.clutter"], seed=3)
    os.makedirs(root / "005.empty")
    decodable, undecodable = add_problem_files(str(root / "002.class1"))
    return {"root": root, "decodable": decodable, "undecodable": undecodable}


def run_prepare(src_root, out, *extra):
    prepare.main(["--src", str(src_root), "--out", str(out), "--train-per-class", "5",
                  "--resize", "32", "--num-thread", "1", *extra])


def tree_digest(root):
    """Hash of every path, size and byte under root: proves the source was not modified."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files) + ["/" + d for d in dirs]:
            path = os.path.join(folder, name.lstrip("/"))
            digest.update(os.path.relpath(path, root).encode())
            if os.path.isfile(path):
                digest.update(open(path, "rb").read())
    return digest.hexdigest()


def read_records(out, set_name, prefix="caltech256"):
    """[(label, id, decoded HxWx3 image)] of a packed set, via MXNet's own reader."""
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(out, f"{prefix}-{set_name}.idx"),
                                           os.path.join(out, f"{prefix}-{set_name}.rec"), "r")
    records = []
    for key in reader.keys:
        header, image = mx.recordio.unpack_img(reader.read_idx(key), cv2.IMREAD_UNCHANGED)
        records.append((header.label, header.id, image))
    reader.close()
    return records


@pytest.fixture(scope="module")
def prepared(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    before = tree_digest(src["root"])
    run_prepare(src["root"], out, "--num-thread", "2")
    assert tree_digest(src["root"]) == before, "the source folder was modified"
    return out


def test_counts_classes_and_summary(prepared, src):
    summary = json.loads((prepared / "summary.json").read_text())
    assert (prepared / "classes.txt").read_text().split() == [f"{i + 1:03d}.class{i}" for i in range(4)]
    assert summary["num_classes"] == 4
    usable = [COUNTS[0], COUNTS[1] + len(src["decodable"]), COUNTS[2], COUNTS[3]]
    assert [c["train"] for c in summary["classes"]] == [5] * 4
    assert [c["val"] for c in summary["classes"]] == [n - 5 for n in usable]
    assert summary["train_images"] == 20 and summary["val_images"] == sum(usable) - 20
    skipped = {entry["path"] for entry in summary["skipped"]}
    assert skipped == {f"002.class1/{name}" for name in src["undecodable"]}
    assert {c["name"] for c in summary["excluded_classes"]} == {"257.clutter", "005.empty"}
    for set_name in ("train", "val"):
        lst = prepared / f"caltech256-{set_name}.lst"
        assert summary["lists"][set_name]["lst_sha256"] == hashlib.sha256(lst.read_bytes()).hexdigest()


def test_records_match_lists_with_three_channels_and_resized_shorter_side(prepared, src):
    for set_name in ("train", "val"):
        rows = read_lst(str(prepared / f"caltech256-{set_name}.lst"))
        records = read_records(prepared, set_name)
        assert len(records) == len(rows)
        for (index, label, rel), (rec_label, rec_id, image) in zip(rows, records):
            assert (rec_id, rec_label) == (index, label)
            assert image.ndim == 3 and image.shape[2] == 3
            assert min(image.shape[:2]) == 32
            assert rel.startswith(f"{int(label) + 1:03d}.")  # label follows the class folder
            # Long side scaled like im2rec: floor(long * 32 / short).
            h, w = cv2.imread(str(src["root"] / rel), cv2.IMREAD_COLOR).shape[:2]
            assert max(image.shape[:2]) == max(h, w) * 32 // min(h, w)


def test_image_record_iter_reads_the_packed_set(prepared):
    it = mx.io.ImageRecordIter(path_imgrec=str(prepared / "caltech256-val.rec"),
                               path_imgidx=str(prepared / "caltech256-val.idx"),
                               data_shape=(3, 28, 28), batch_size=4, round_batch=False)
    labels = np.concatenate([batch.label[0].asnumpy() for batch in it])
    expected = [label for _, label, _ in read_lst(str(prepared / "caltech256-val.lst"))]
    # The first pass of a fresh iterator yields the records in file order (the
    # last batch is filled up with other data, whatever batch.pad says).
    assert labels[: len(expected)].tolist() == expected


def test_lists_are_byte_identical_for_a_copy_elsewhere_and_change_with_the_seed(prepared, src, tmp_path):
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(src["root"], copy)
    run_prepare(copy, tmp_path / "again")
    run_prepare(copy, tmp_path / "seed1", "--seed", "1")
    for set_name in ("train", "val"):
        name = f"caltech256-{set_name}.lst"
        assert (tmp_path / "again" / name).read_bytes() == (prepared / name).read_bytes()
        assert (tmp_path / "seed1" / name).read_bytes() != (prepared / name).read_bytes()


def test_rerun_skips_finished_sets_and_force_repacks(src, tmp_path):
    out = tmp_path / "out"
    run_prepare(src["root"], out)
    rec = out / "caltech256-train.rec"
    first = rec.stat().st_mtime_ns
    run_prepare(src["root"], out)
    assert rec.stat().st_mtime_ns == first
    run_prepare(src["root"], out, "--quality", "80")  # another option: repacked
    second = rec.stat().st_mtime_ns
    assert second != first
    run_prepare(src["root"], out, "--quality", "80", "--force")
    assert rec.stat().st_mtime_ns != second


def test_a_rec_without_its_finish_stamp_is_not_taken_as_finished(src, tmp_path):
    out = tmp_path / "out"
    run_prepare(src["root"], out)
    # What a run killed between writing .rec and its stamp leaves behind.
    (out / ".caltech256-val-done.json").unlink()
    (out / "caltech256-val.rec").write_bytes(b"truncated")
    run_prepare(src["root"], out)
    assert len(read_records(out, "val")) == len(read_lst(str(out / "caltech256-val.lst")))


def test_a_truncated_rec_under_a_valid_stamp_is_repacked(src, tmp_path):
    out = tmp_path / "out"
    run_prepare(src["root"], out)
    rec = out / "caltech256-train.rec"
    rec.write_bytes(rec.read_bytes()[:100])
    run_prepare(src["root"], out)
    assert len(read_records(out, "train")) == 20


def test_tiny_classes_keep_labels_and_a_validation_image(tmp_path):
    root = tmp_path / "src"
    make_class_tree(str(root), [8, 1, 3, 8])
    run_prepare(root, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(c["train"], c["val"]) for c in summary["classes"]] == [(5, 3), (1, 0), (2, 1), (5, 3)]
    assert any("NO validation image" in w and "002.class1" in w for w in summary["warnings"])
    val_labels = {label for _, label, _ in read_lst(str(tmp_path / "out" / "caltech256-val.lst"))}
    # Class 1 has no validation image, and the labels after it are not shifted.
    assert val_labels == {0.0, 2.0, 3.0}


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHON=sys.executable, TQDM_DISABLE="1")
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


@pytest.mark.parametrize("case", ["missing_src", "no_class_folders", "no_images", "unknown_option",
                                  "non_numeric", "unwritable_out", "zero_train"])
def test_bad_input_is_one_line_and_non_zero(case, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"x")
    no_images = tmp_path / "noimg"
    (no_images / "001.a").mkdir(parents=True)
    (no_images / "002.b").mkdir()
    (no_images / "001.a" / "readme.txt").write_text("x")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    src = tmp_path / "ok"
    make_class_tree(str(src), [2, 2])
    args, expected = {
        "missing_src": (["--src", str(tmp_path / "nope")], "no such folder"),
        "no_class_folders": (["--src", str(flat)], "no class subfolders"),
        "no_images": (["--src", str(no_images)], "no image files"),
        "unknown_option": (["--src", str(src), "--bogus"], "--bogus"),
        "non_numeric": (["--src", str(src), "--train-per-class", "sixty"], "'sixty'"),
        "unwritable_out": (["--src", str(src), "--out", str(blocker / "sub")], "--out"),
        "zero_train": (["--src", str(src), "--train-per-class", "0"], ">= 1"),
    }[case]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = cli(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("prepare_data.sh: error:"), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out" / "summary.json").exists()
