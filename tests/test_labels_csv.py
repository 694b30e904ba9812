"""prepare_data.sh --src IMAGES --labels-csv FILE: one folder of images plus a labels CSV."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from common.prep import labels
from common.prep import main as prepare
from common.prep.imagefolder import read_lst, split_class
from tools.imagegen import add_problem_files, flatten_class_tree, make_class_tree, write_labels_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "prepare_data.sh")
NAMES = ["cat", "dog", "owl"]
COUNTS = [9, 12, 7]


def run_prepare(src, out, *extra):
    prepare.main(["--src", str(src), "--out", str(out), "--train-per-class", "5",
                  "--resize", "24", "--num-thread", "1", *extra])


def read_summary(out, prefix):
    return json.loads((out / f"{prefix}-summary.json").read_text())


def outputs(out, prefix):
    """The bytes of every output a user reads (not the summary: it names its inputs)."""
    names = ["classes.txt"] + [f"{s}.{ext}" for s in ("train", "val") for ext in ("lst", "rec", "idx")]
    return {name: (out / f"{prefix}-{name}").read_bytes() for name in names}


@pytest.fixture
def tree(tmp_path):
    """Class folders, with odd and undecodable images and ignored files in dog/."""
    root = tmp_path / "photos"
    make_class_tree(str(root), COUNTS, names=NAMES, min_side=24, max_side=60)
    add_problem_files(str(root / "dog"))
    return root


def class_tree_rows(root):
    """(id, label) for every image of a class tree, ids as relative paths; every other
    id without its extension (the lookup must find it)."""
    rows = []
    for name in sorted(os.listdir(root)):
        for i, filename in enumerate(sorted(os.listdir(root / name))):
            if os.path.splitext(filename)[1].lower() in {".jpg", ".jpeg", ".png"} and filename[0] != ".":
                rows.append((f"{name}/{filename if i % 2 else os.path.splitext(filename)[0]}", name))
    return rows


def test_a_csv_naming_class_folders_gives_the_class_folder_outputs_byte_for_byte(tree, tmp_path):
    write_labels_csv(tmp_path / "labels.csv", class_tree_rows(tree)[::-1])  # the CSV's order does not matter
    run_prepare(tree, tmp_path / "folders")
    run_prepare(tree, tmp_path / "csv", "--labels-csv", str(tmp_path / "labels.csv"))
    assert outputs(tmp_path / "csv", "photos") == outputs(tmp_path / "folders", "photos")
    folders, csv = read_summary(tmp_path / "folders", "photos"), read_summary(tmp_path / "csv", "photos")
    for key in ("classes", "skipped", "ignored", "train_images", "val_images"):
        assert csv[key] == folders[key], key
    assert len(csv["skipped"]) == 4  # the undecodable files, reported as for class folders
    assert csv["labels_csv"]["problems"] == [] and csv["labels_csv"]["unlisted"] == []
    assert csv["source"]["labels_csv"] == str(tmp_path / "labels.csv")


def test_a_flat_folder_is_split_by_the_class_folder_policy(tree, tmp_path):
    flat = tmp_path / "flat"
    images = [(f, c) for f, c in flatten_class_tree(str(tree), str(flat))
              if f not in ("dog-Thumbs.db", "dog-notes.txt")]
    write_labels_csv(tmp_path / "labels.csv", [(os.path.splitext(f)[0], c) for f, c in images])
    csv_option = ("--labels-csv", str(tmp_path / "labels.csv"))
    run_prepare(tree, tmp_path / "folders")
    run_prepare(flat, tmp_path / "out", *csv_option)
    summary = read_summary(tmp_path / "out", "flat")
    assert (tmp_path / "out" / "flat-classes.txt").read_text() == "cat\ndog\nowl\n"
    counts = lambda s: [(c["label"], c["name"], c["images"], c["unreadable"], c["train"], c["val"])  # noqa: E731
                        for c in s["classes"]]
    assert counts(summary) == counts(read_summary(tmp_path / "folders", "photos"))
    unreadable = {entry["path"] for entry in summary["skipped"]}
    train = read_lst(str(tmp_path / "out" / "flat-train.lst"))
    for label, name in enumerate(NAMES):  # the same keyed shuffle, keyed on the flat paths
        usable = [f for f, c in images if c == name and f not in unreadable]
        assert [rel for _, got, rel in train if got == label] == split_class(usable, name, 0, 5)[0]
    # Reruns: no work here, byte-identical lists elsewhere; another seed, another split.
    rec = tmp_path / "out" / "flat-train.rec"
    first = rec.stat().st_mtime_ns
    run_prepare(flat, tmp_path / "out", *csv_option)
    assert rec.stat().st_mtime_ns == first
    run_prepare(flat, tmp_path / "again", *csv_option)
    run_prepare(flat, tmp_path / "seed1", *csv_option, "--seed", "1")
    for name in ("flat-train.lst", "flat-val.lst"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
        assert (tmp_path / "seed1" / name).read_bytes() != (tmp_path / "out" / name).read_bytes()


def test_an_id_is_tried_as_given_then_with_each_image_extension(tmp_path):
    for rel in ["a.jpg", "b.PNG", "sub/c.jpeg", "d.jpg", "d.png", "e.jpg", "e.jpg.png", "notes.txt",
                ".hidden.jpg", ".git/f.jpg"]:
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")  # the lookup never decodes
    images = ["a.jpg", "b.PNG", "d.jpg", "d.png", "e.jpg", "e.jpg.png", "sub/c.jpeg"]
    index = labels.FileIndex(str(tmp_path), images)
    found = {file_id: index.resolve(file_id)[0] for file_id in
             ["a.jpg", "a", "./a.jpg", "b", "sub/c", "sub//c.jpeg", "d.png", "e.jpg", "e"]}
    assert found == {"a.jpg": "a.jpg", "a": "a.jpg", "./a.jpg": "a.jpg", "b": "b.PNG", "sub/c": "sub/c.jpeg",
                     "sub//c.jpeg": "sub/c.jpeg", "d.png": "d.png", "e.jpg": "e.jpg", "e": "e.jpg"}
    problems = {file_id: index.resolve(file_id)[1:] for file_id in
                ["d", "notes.txt", "notes", ".hidden.jpg", ".git/f.jpg", "sub", "gone.jpg", "gone", "../a.jpg",
                 "/etc/passwd"]}
    assert problems["d"] == (labels.AMBIGUOUS, "ambiguous id: matches 2 files (d.jpg, d.png); give the extension")
    assert problems["notes.txt"] == (labels.NOT_AN_IMAGE, "not an image: not an image extension")
    assert problems[".hidden.jpg"] == (labels.NOT_AN_IMAGE, "not an image: hidden")
    assert problems[".git/f.jpg"] == (labels.NOT_AN_IMAGE, "not an image: inside a hidden folder")
    assert problems["sub"] == (labels.NOT_AN_IMAGE, "not an image: a folder")
    assert problems["gone.jpg"] == (labels.NO_SUCH_FILE, "no such file: gone.jpg")
    for file_id in ("notes", "gone"):
        assert problems[file_id][0] == labels.UNKNOWN_ID
    for file_id in ("../a.jpg", "/etc/passwd"):
        assert problems[file_id] == (labels.UNKNOWN_ID, "unknown id: the path leaves the image folder")


def test_the_csv_module_reads_a_bom_quotes_crlf_and_columns_in_any_order(tmp_path):
    path = tmp_path / "labels.csv"
    # The BOM sits before the first column's name: without utf-8-sig, there is no column 'Class'.
    path.write_bytes("\ufeffClass,note, file \r\n"
                     'cat,"a, with comma",x.jpg\r\n'
                     ' "dog" ,"two\r\nlines","y z.jpg"\r\n'
                     "\r\n"
                     '"Café, au lait",n,w.jpg\r\n'.encode("utf-8"))
    digest, rows = labels.read_rows(str(path), "file", "Class")
    assert [(r.line, r.id, r.label, r.kind) for r in rows] == [
        (2, "x.jpg", "cat", None), (3, "y z.jpg", "dog", None), (6, "w.jpg", "Café, au lait", None)]
    assert len(digest) == 64


def test_a_row_that_cannot_label_one_image_says_why(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels_csv(path, [("a.jpg", "cat"), ("", "cat"), ("b.jpg", " "), ("c.jpg", "dog", "extra"),
                            ("d.jpg", "two\nlines")])
    rows = labels.read_rows(str(path), "id", "label")[1]
    assert [(r.line, r.kind) for r in rows] == [(2, None), (3, labels.EMPTY_ID), (4, labels.EMPTY_LABEL),
                                                (5, labels.BAD_ROW), (6, labels.BAD_ROW)]
    assert rows[3].reason == "malformed row: 3 fields, the header has 2 (an unquoted comma?)"
    assert rows[4].reason == "malformed row: the label contains a line break"


@pytest.fixture
def flat(tmp_path):
    """A flat folder of two classes' images, an unlisted image, an undecodable one,
    two images one id would match and a text file, with a CSV naming every problem kind."""
    folder = tmp_path / "shots"
    make_class_tree(str(tmp_path / "gen"), [6, 6], names=["cat", "dog"])
    images = flatten_class_tree(str(tmp_path / "gen"), str(folder))  # CSV lines 2-13
    for name in ("extra.jpg", "twin.jpg", "twin.png"):
        shutil.copy(folder / images[0][0], folder / name)
    (folder / "broken.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("x")
    rows = [(os.path.splitext(f)[0], c) for f, c in images] + [
        ("nope", "cat"),                # 14: unknown id
        ("gone.jpg", "dog"),            # 15: no such file
        ("twin", "cat"),                # 16: ambiguous
        ("notes.txt", "dog"),           # 17: not an image
        ("cat-cat_0001", "cat"),        # 18: the same id again, the same label
        ("cat-cat_0002.jpg", "cat"),    # 19: the same file by another id, the same label
        ("dog-dog_0001", "cat"),        # 20: the same id, another label (line 8 says dog)
        ("cat-cat_0003", ""),           # 21: empty label
        ("", "dog"),                    # 22: empty id
        ("x.jpg", "dog", "extra"),      # 23: a field too many
        ("broken", "dog"),              # 24: listed, but does not decode
    ]
    write_labels_csv(tmp_path / "labels.csv", rows)
    return folder, tmp_path / "labels.csv"


EXPECTED_PROBLEMS = [(8, labels.CONFLICT), (14, labels.UNKNOWN_ID), (15, labels.NO_SUCH_FILE),
                     (16, labels.AMBIGUOUS), (17, labels.NOT_AN_IMAGE), (18, labels.DUPLICATE),
                     (19, labels.DUPLICATE), (20, labels.CONFLICT), (21, labels.EMPTY_LABEL),
                     (22, labels.EMPTY_ID), (23, labels.BAD_ROW)]


def test_every_problem_is_counted_listed_and_printed_and_no_image_is_lost(flat, tmp_path, capsys):
    folder, csv_path = flat
    run_prepare(folder, tmp_path / "out", "--labels-csv", str(csv_path))
    summary = read_summary(tmp_path / "out", "shots")
    section = summary["labels_csv"]
    assert [(p["line"], p["kind"]) for p in section["problems"]] == EXPECTED_PROBLEMS
    assert section["problems"][0]["reason"] == ("conflicting labels: dog-dog_0001.jpg is labelled 'dog' (line 8), "
                                                "'cat' (line 20); left out")
    assert section["unlisted"] == [{"path": "extra.jpg", "reason": "not listed in the labels CSV"}]
    assert [e["path"] for e in summary["skipped"]] == ["broken.jpg"]
    assert (section["rows"], section["labelled_images"]) == (23, 12)
    listed = [rel for name in ("train", "val") for _, _, rel in read_lst(str(tmp_path / "out" / f"shots-{name}.lst"))]
    assert "dog-dog_0001.jpg" not in listed and listed.count("cat-cat_0002.jpg") == 1
    # Every image of the folder is packed, or reported: unreadable, unlisted, or with its row.
    with_a_row = {"dog-dog_0001.jpg", "twin.jpg", "twin.png"}
    accounted = set(listed) | {"broken.jpg", "extra.jpg"} | with_a_row
    assert accounted == {n for n in os.listdir(folder) if n != "notes.txt"}
    assert [(c["name"], c["images"], c["unreadable"]) for c in summary["classes"]] == [("cat", 6, 0), ("dog", 6, 1)]
    out = capsys.readouterr().out
    assert ("labels.csv: 23 rows, 12 images labelled; rows with a problem: 11 (2 conflicting labels, 1 unknown id, "
            "1 no such file, 1 ambiguous id, 1 not an image, 2 duplicate, 1 empty label, 1 empty id, "
            "1 malformed row); images it does not list: 1") in out
    assert "  line 14 (id 'nope'): unknown id: no file nope, nor nope with an image extension" in out
    assert "  not in the CSV: extra.jpg" in out


def flat_dataset(tmp_path, counts=(6, 6)):
    """A flat folder of generated images and the (id, label) rows that label them all."""
    make_class_tree(str(tmp_path / "gen"), list(counts), names=NAMES[:len(counts)])
    images = flatten_class_tree(str(tmp_path / "gen"), str(tmp_path / "shots"))
    return tmp_path / "shots", [(os.path.splitext(f)[0], c) for f, c in images]


@pytest.mark.parametrize("edit", ["label", "another row", "column names"])
def test_a_rerun_after_editing_the_csv_repacks(tmp_path, edit):
    folder, rows = flat_dataset(tmp_path)
    csv_path, options = tmp_path / "labels.csv", []
    write_labels_csv(csv_path, rows)
    out = tmp_path / "out"
    run_prepare(folder, out, "--labels-csv", str(csv_path))
    recs = [out / f"shots-{name}.rec" for name in ("train", "val")]
    before = [(rec.stat().st_mtime_ns, rec.read_bytes()) for rec in recs]
    lists = [(out / f"shots-{name}.lst").read_bytes() for name in ("train", "val")]
    run_prepare(folder, out, "--labels-csv", str(csv_path))
    assert [rec.stat().st_mtime_ns for rec in recs] == [mtime for mtime, _ in before]  # unchanged: skipped
    if edit == "label":
        rows[5] = (rows[5][0], "dog")  # a cat image relabelled: another .lst, other labels in the records
        write_labels_csv(csv_path, rows)
    elif edit == "another row":
        write_labels_csv(csv_path, rows + [("nope", "cat")])  # the same lists: the CSV alone changed
    else:
        write_labels_csv(csv_path, rows, header=("file", "class"))
        options = ["--csv-id-column", "file", "--csv-label-column", "class"]
    run_prepare(folder, out, "--labels-csv", str(csv_path), *options)
    assert all(rec.stat().st_mtime_ns != mtime for rec, (mtime, _) in zip(recs, before)), "not repacked"
    run_prepare(folder, tmp_path / "fresh", "--labels-csv", str(csv_path), *options)
    assert outputs(out, "shots") == outputs(tmp_path / "fresh", "shots")
    changed = [(out / f"shots-{name}.lst").read_bytes() != old for name, old in zip(("train", "val"), lists)]
    assert any(changed) == (edit == "label")
    stamp = json.loads((out / ".shots-train-done.json").read_text())
    assert stamp["labels_csv"]["sha256"] == read_summary(out, "shots")["labels_csv"]["sha256"]


def cli(*args, cwd):
    env = dict(os.environ, PYTHON=sys.executable, TQDM_DISABLE="1")
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


LABELLED = ["--src", "shots", "--labels-csv", "labels.csv"]
ERRORS = {  # case: (labels.csv's bytes or None, options after LABELLED, exit status, what the line says)
    "missing_csv": (None, [], 3, "labels.csv: no such file"),
    "csv_is_a_folder": (None, ["--labels-csv", "."], 1, "--labels-csv .: is a folder, not a CSV file"),
    "missing_column": (b"file,label\na,cat\n", [], 1,
                       "no column 'id' (its columns: 'file', 'label'); name the column with --csv-id-column"),
    "two_label_columns": (b"id,label,label\na,cat,dog\n", [], 1, "two columns named 'label' (its columns: "),
    "not_utf8": ("id,label\na,caf\u00e9\n".encode("latin-1"), [], 1,
                 "not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"),
    "empty": (b"", [], 1, "is empty; expected a header line naming the id and label columns"),
    "header_only": (b"\xef\xbb\xbfid,label\r\n", [], 1, "a header but no data rows"),
    "one_class": (b"id,label\ncat-cat_0001,cat\ncat-cat_0002,cat\n", [], 1,
                  "every usable row has the label 'cat'; a classifier needs at least two classes"),
    "no_usable_row": (b"id,label\nnope,cat\ngone.jpg,dog\n", [], 1,
                      "no row names an image of the folder with a label (1 unknown id, 1 no such file)"),
    "no_src": (b"id,label\n", None, 2, "--labels-csv needs --src IMAGES"),  # None: LABELLED[2:] alone
    "same_columns": (b"id,label\n", ["--csv-id-column", "label"], 2,
                     "--csv-id-column and --csv-label-column are both 'label'"),
    "empty_column_option": (b"id,label\n", ["--csv-label-column", " "], 2, "expected a column name"),
    "src_missing": (b"id,label\n", ["--src", "nowhere"], 3, "--src nowhere: no such folder"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_an_unusable_csv_or_option_is_one_line_with_its_exit_status(case, tmp_path):
    data, extra, status, expected = ERRORS[case]
    flat_dataset(tmp_path, (2, 2))
    if data is not None:
        (tmp_path / "labels.csv").write_bytes(data)
    args = LABELLED + extra if extra is not None else LABELLED[2:]
    result = cli(*args, "--out", "out", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("prepare_data.sh: error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()  # made by the run, empty: removed again


def test_options_of_the_other_layout_are_reported_unused(tmp_path, caplog):
    folder, rows = flat_dataset(tmp_path, (3, 3))
    write_labels_csv(tmp_path / "labels.csv", rows)
    make_class_tree(str(tmp_path / "tree"), [3, 3])
    with caplog.at_level(logging.WARNING):
        run_prepare(folder, tmp_path / "out", "--labels-csv", str(tmp_path / "labels.csv"), "--include-clutter")
        run_prepare(tmp_path / "tree", tmp_path / "out", "--csv-label-column", "class")
    assert (f"--include-clutter not used: --labels-csv {tmp_path / 'labels.csv'} gives the classes, not folders"
            in caplog.text)
    assert "--csv-label-column not used: no --labels-csv given" in caplog.text
    assert "include_clutter" not in read_summary(tmp_path / "out", "shots")["options"]
    tree_summary = read_summary(tmp_path / "out", "tree")
    assert {"labels_csv", "csv_id_column", "csv_label_column"}.isdisjoint(tree_summary["options"])
    assert tree_summary["labels_csv"] is None and "labels_csv" not in tree_summary["source"]


def test_a_class_folder_pack_stamped_before_labels_csvs_existed_is_still_current(tmp_path):
    make_class_tree(str(tmp_path / "tree"), [4, 4])
    out = tmp_path / "out"
    run_prepare(tmp_path / "tree", out)
    stamp_path = out / ".tree-train-done.json"
    stamp = json.loads(stamp_path.read_text())
    assert stamp.pop("labels_csv") is None
    stamp_path.write_text(json.dumps(stamp))  # what the code before --labels-csv wrote
    mtime = (out / "tree-train.rec").stat().st_mtime_ns
    run_prepare(tmp_path / "tree", out)
    assert (out / "tree-train.rec").stat().st_mtime_ns == mtime
