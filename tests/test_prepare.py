"""prepare_data.sh end to end on generated trees: split, lists, RecordIO, reruns, misuse."""
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest

from common import transforms
from common.cli import UserError
from common.prep import main as prepare
from common.prep.imagefolder import read_lst
from tools.imagegen import add_problem_files, class_image, make_class_tree

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
    summary = json.loads((prepared / "caltech256-summary.json").read_text())
    assert (prepared / "caltech256-classes.txt").read_text().split() == [f"{i + 1:03d}.class{i}" for i in range(4)]
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
    # Caltech's folder given as --src: Caltech's name, but no download is claimed.
    assert (summary["prefix"], summary["source"]) == ("caltech256", {"folder": str(src["root"])})
    assert {"url", "md5", "download_dir"}.isdisjoint(summary["options"])
    assert summary["options"]["src"] == str(src["root"])


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
    copy = tmp_path / "elsewhere" / "256_ObjectCategories"  # the same name: the same prefix
    shutil.copytree(src["root"], copy)
    run_prepare(copy, tmp_path / "again")
    run_prepare(copy, tmp_path / "seed1", "--seed", "1")
    for set_name in ("train", "val"):
        name = f"caltech256-{set_name}.lst"
        assert (tmp_path / "again" / name).read_bytes() == (prepared / name).read_bytes()
        assert (tmp_path / "seed1" / name).read_bytes() != (prepared / name).read_bytes()


def test_split_is_byte_identical_across_processes_with_other_hash_seeds(tmp_path):
    # Python randomises str hashes per process: a split keyed on hash() or on a
    # set's order would agree with itself in one process and differ between two.
    src = tmp_path / "photos"
    make_class_tree(str(src), [40, 40, 40], min_side=8, max_side=12)
    env = dict(os.environ, PYTHONPATH=REPO, TQDM_DISABLE="1")
    hashes, lists = set(), []
    for seed in ("1", "2"):
        cwd = tmp_path / f"run{seed}"
        cwd.mkdir()
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60, cwd=cwd,
                                env=dict(env, PYTHONHASHSEED=seed))
        hashes.add(run([sys.executable, "-c", "print(hash('001.class0/001_0001.jpg'))"]).stdout)
        proc = run([sys.executable, "-m", "common.prep.main", "--src", "../photos", "--out", f"out{seed}",
                    "--train-per-class", "20", "--resize", "8", "--num-thread", "1"])
        assert proc.returncode == 0, proc.stderr
        lists.append([(cwd / f"out{seed}" / f"photos-{name}.lst").read_bytes() for name in ("train", "val")])
    assert len(hashes) == 2  # the two processes really hash strings differently
    assert lists[0] == lists[1]
    assert len(read_lst(str(tmp_path / "run1" / "out1" / "photos-train.lst"))) == 60


def write_bmp_tree(root, counts=(6, 6), seed=0):
    """Class folders of 20x24 BMPs: every BMP of that size has the same byte count."""
    rng = np.random.default_rng(seed)
    for label, count in enumerate(counts):
        os.makedirs(os.path.join(root, f"c{label}"), exist_ok=True)
        for j in range(count):
            cv2.imwrite(os.path.join(root, f"c{label}", f"{j:02d}.bmp"),
                        class_image(rng, label, 20, 24))
    return root


def repaint(path, keep_mtime=False):
    """Rewrite an image in place with other pixels and the same size in bytes."""
    info = os.stat(path)
    cv2.imwrite(path, class_image(np.random.default_rng(99), 5, 20, 24))
    assert os.path.getsize(path) == info.st_size
    if keep_mtime:  # as a tar extraction or `cp -p` restores it
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.parametrize("change", ["resize", "quality", "src", "content"])
def test_rerun_repacks_when_an_input_of_the_pack_changed(tmp_path, change):
    src = write_bmp_tree(str(tmp_path / "photos"))
    options = {"--resize": "16", "--quality": "90"}
    flags = lambda: [item for pair in options.items() for item in pair if item is not None]  # noqa: E731
    out = tmp_path / "out"
    run_prepare(src, out, "--train-per-class", "3", *flags())
    first = [(out / f"photos-{name}.rec").read_bytes() for name in ("train", "val")]
    if change == "resize":
        options["--resize"] = "18"
    elif change == "quality":
        options["--quality"] = "50"
    elif change == "src":
        # Another copy: the same names, sizes and mtimes, but one image differs.
        copy = str(tmp_path / "other" / "photos")
        shutil.copytree(src, copy)
        for name in ("train", "val"):  # every set gets a changed image
            rel = read_lst(str(out / f"photos-{name}.lst"))[0][2]
            repaint(os.path.join(copy, rel), keep_mtime=True)
        src = copy
        # Another folder of the same name would replace this dataset: refused without --force.
        with pytest.raises(UserError, match="already holds the dataset photos prepared from"):
            run_prepare(src, out, "--train-per-class", "3", *flags())
        assert [(out / f"photos-{name}.rec").read_bytes() for name in ("train", "val")] == first
        options["--force"] = None
    else:
        for name in ("train", "val"):
            repaint(os.path.join(src, read_lst(str(out / f"photos-{name}.lst"))[0][2]))
    run_prepare(src, out, "--train-per-class", "3", *flags())
    fresh = tmp_path / "fresh"
    run_prepare(src, fresh, "--train-per-class", "3", *flags())
    for index, name in enumerate(("train", "val")):
        again = (out / f"photos-{name}.rec").read_bytes()
        assert again != first[index], f"{name}: the change does not show in the packed bytes"
        assert again == (fresh / f"photos-{name}.rec").read_bytes(), f"{name}: stale pack reused"


def test_a_pack_made_with_another_resize_filter_is_repacked(tmp_path):
    # Packs of earlier versions were all INTER_AREA, and their stamps name no filter:
    # predict.py resizes with today's, so such a pack is redone, not reused.
    src = write_bmp_tree(str(tmp_path / "photos"))
    out = tmp_path / "out"
    run_prepare(src, out, "--train-per-class", "3")
    stamp_path = out / ".photos-train-done.json"
    stamp = json.loads(stamp_path.read_text())
    assert stamp["resize_filter"] == transforms.RESIZE_FILTER
    del stamp["resize_filter"]
    shutil.copy(out / "photos-val.rec", out / "photos-train.rec")  # bytes a reuse would keep
    shutil.copy(out / "photos-val.idx", out / "photos-train.idx")
    stamp.update(rec_bytes=os.path.getsize(out / "photos-train.rec"), idx_bytes=os.path.getsize(out / "photos-train.idx"))
    stamp_path.write_text(json.dumps(stamp))
    run_prepare(src, out, "--train-per-class", "3")
    assert json.loads(stamp_path.read_text())["resize_filter"] == transforms.RESIZE_FILTER
    assert (out / "photos-train.rec").read_bytes() != (out / "photos-val.rec").read_bytes()


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
    summary = json.loads((tmp_path / "out" / "src-summary.json").read_text())
    assert [(c["train"], c["val"]) for c in summary["classes"]] == [(5, 3), (1, 0), (2, 1), (5, 3)]
    assert any("NO validation image" in w and "002.class1" in w for w in summary["warnings"])
    val_labels = {label for _, label, _ in read_lst(str(tmp_path / "out" / "src-val.lst"))}
    # Class 1 has no validation image, and the labels after it are not shifted.
    assert val_labels == {0.0, 2.0, 3.0}


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHON=sys.executable, TQDM_DISABLE="1")
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


@pytest.mark.parametrize("case", ["missing_src", "src_is_a_file", "no_class_folders", "no_images",
                                  "unknown_option", "non_numeric", "unwritable_out", "zero_train"])
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
        "src_is_a_file": (["--src", str(blocker)], f"--src {blocker}: is a file, not a folder; expected"),
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
    assert not (tmp_path / "out").exists()  # made by the run, empty: removed again


def test_offline_download_fails_at_once_with_a_hint_and_leaves_no_empty_folder(tmp_path):
    started = time.monotonic()
    # .invalid never resolves (RFC 2606): a name lookup that fails, without any real DNS.
    result = cli("--url", "http://caltech.invalid/256_ObjectCategories.tar",
                 "--download-dir", str(tmp_path / "new" / "download"), "--out", str(tmp_path / "new" / "out"),
                 cwd=tmp_path)
    elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    # One line: no 'retrying' warning either (a retry would also wait 1 s, then 2, 4...).
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prepare_data.sh: error: cannot download http://caltech.invalid/")
    assert "caltech.invalid not found" in lines[0] and "pass --src DIR" in lines[0]
    assert len(lines[0]) < 250 and "Caused by" not in lines[0]
    assert elapsed < 10
    assert os.listdir(tmp_path) == []  # new/, new/download and new/out were all removed


def test_another_dataset_is_named_after_its_folder_with_an_honest_summary(tmp_path, capsys):
    src = tmp_path / "My Flowers (v2)"
    make_class_tree(str(src), [4, 4])
    out = tmp_path / "out"
    run_prepare(src, out)
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == [
        "my-flowers-v2-classes.txt", "my-flowers-v2-summary.json", "my-flowers-v2-train.idx",
        "my-flowers-v2-train.lst", "my-flowers-v2-train.rec", "my-flowers-v2-val.idx", "my-flowers-v2-val.lst",
        "my-flowers-v2-val.rec"]
    summary = json.loads((out / "my-flowers-v2-summary.json").read_text())
    assert summary["prefix"] == summary["options"]["prefix"] == "my-flowers-v2"
    assert summary["source"] == {"folder": str(src)}  # no URL, no MD5: nothing was downloaded
    assert {"url", "md5", "download_dir"}.isdisjoint(summary["options"])
    assert "prefix: my-flowers-v2 (the --src folder's name, My Flowers (v2);" in capsys.readouterr().out


def test_prefix_option_overrides_the_folder_name(tmp_path):
    src = tmp_path / "flowers"
    make_class_tree(str(src), [3, 3])
    run_prepare(src, tmp_path / "out", "--prefix", "mine")
    assert (tmp_path / "out" / "mine-train.rec").is_file()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(("flowers", ".flowers"))]
    assert json.loads((tmp_path / "out" / "mine-summary.json").read_text())["prefix_from"] == "--prefix"


@pytest.mark.parametrize("argv, expected", [
    (["--src", "data/256_ObjectCategories"], "caltech256"),
    (["--src", "101_ObjectCategories"], "caltech101"),
    (["--src", "My Flowers (v2)"], "my-flowers-v2"),
    (["--src", "photos/"], "photos"),
    (["--src", "sets/.hidden_set"], "hidden_set"),
    (["--src", "flowers_102"], "flowers_102"),
    (["--src", "花"], "dataset"),
    ([], "caltech256"),  # the default download: 256_ObjectCategories.tar
    (["--url", "http://example.invalid/get/flowers.tar.gz?x=1"], "flowers"),
    (["--src", "photos", "--prefix", "mine"], "mine"),
])
def test_default_prefix(argv, expected):
    assert prepare.resolve_prefix(prepare.get_parser().parse_args(argv))[0] == expected


def test_download_options_given_with_src_are_reported_unused(tmp_path, caplog):
    src = tmp_path / "flowers"
    make_class_tree(str(src), [3, 3])
    with caplog.at_level(logging.WARNING):
        run_prepare(src, tmp_path / "out", "--url", "http://example.invalid/other.tar")
    assert f"--url not used: --src {src} is read instead of a download" in caplog.text
    assert "url" not in json.loads((tmp_path / "out" / "flowers-summary.json").read_text())["options"]


def test_two_datasets_share_an_out_folder_without_mixing_their_classes(tmp_path):
    """Each dataset gets its own PREFIX-classes.txt and PREFIX-summary.json: training or
    scoring one never reads the other's class list or resize."""
    from common import records
    make_class_tree(str(tmp_path / "birds"), [6, 6, 6], names=["crow", "owl", "wren"])
    make_class_tree(str(tmp_path / "cars"), [6, 6], names=["sedan", "van"], seed=1)
    out = tmp_path / "data"
    run_prepare(tmp_path / "birds", out)
    run_prepare(tmp_path / "cars", out, "--resize", "40")
    birds = records.load_dataset(str(out), "birds")
    cars = records.load_dataset(str(out), "cars")
    assert (birds.classes, cars.classes) == (["crow", "owl", "wren"], ["sedan", "van"])
    assert records.packed_resize(birds.val.rec)[0] == 32 and records.packed_resize(cars.val.rec)[0] == 40
    with pytest.raises(UserError, match=r"holds 2 datasets \(birds, cars\); choose one with --prefix"):
        records.find_prefix(str(out))


def test_a_dataset_of_the_same_name_from_another_folder_is_refused(tmp_path):
    """Two folders both called images/: the second would replace the first one's files."""
    make_class_tree(str(tmp_path / "a" / "images"), [6, 6], names=["cat", "dog"])
    make_class_tree(str(tmp_path / "b" / "images"), [6, 6, 6], names=["ant", "bee", "fly"], seed=1)
    out = tmp_path / "data"
    run_prepare(tmp_path / "a" / "images", out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(UserError, match=r"already holds the dataset images prepared from .*/a/images; "
                                         r"pass --prefix NAME to keep both, or --force to replace it"):
        run_prepare(tmp_path / "b" / "images", out)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    run_prepare(tmp_path / "a" / "images", out)  # the same folder again: a rerun, not refused
    run_prepare(tmp_path / "b" / "images", out, "--prefix", "bugs")
    assert (out / "bugs-classes.txt").read_text().split() == ["ant", "bee", "fly"]
    assert (out / "images-classes.txt").read_text().split() == ["cat", "dog"]


def test_each_image_is_decoded_once_by_a_whole_run(tmp_path, monkeypatch):
    # The check's decode also encodes the record (pack.Spool): the packs decode nothing.
    from common import transforms as transforms_module
    src = write_bmp_tree(str(tmp_path / "photos"), counts=(5, 4))
    calls, real = [], transforms_module.cv2.imdecode
    monkeypatch.setattr(transforms_module.cv2, "imdecode", lambda data, flag: calls.append(flag) or real(data, flag))
    run_prepare(src, tmp_path / "out", "--train-per-class", "3")
    assert len(calls) == 9
    assert [label for label, _, _ in read_records(tmp_path / "out", "train", "photos")] == [0.0] * 3 + [1.0] * 3
    assert not [name for name in os.listdir(tmp_path / "out") if "spool" in name]


def test_an_image_changed_after_its_check_is_packed_as_it_is_now(tmp_path):
    from common.prep.pack import Spool, encode_record, pack_set
    src = write_bmp_tree(str(tmp_path / "photos"), counts=(2,))
    items = [(0, "c0/00.bmp"), (0, "c0/01.bmp")]
    rec, idx = str(tmp_path / "x.rec"), str(tmp_path / "x.idx")
    with Spool(str(tmp_path / "spool.tmp")) as spool:
        for _, rel in items:
            path = os.path.join(src, rel)
            spool.put(rel, os.stat(path), encode_record((path, 16, 90))[0])
        repaint(os.path.join(src, "c0/01.bmp"))  # after its check, before its pack
        pack_set(src, items, rec, idx, resize=16, quality=90, workers=1, desc="pack", spool=spool)
    reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    payloads = [mx.recordio.unpack(reader.read_idx(key))[1] for key in (0, 1)]
    reader.close()
    assert payloads == [encode_record((os.path.join(src, rel), 16, 90))[0] for _, rel in items]
    assert not os.path.exists(tmp_path / "spool.tmp")
