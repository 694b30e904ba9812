"""predict.py and score.py on a tiny checkpoint trained here, and the shared common/infer/ modules.

One module-scoped run trains ResNet-20 from scratch on 4 colour-coded classes
(16x16 crops of 18-px images, 4 epochs, a second or two on CPU). The scripts are
run as subprocesses where their exit status and stderr are the point.
"""
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import predict
import score
from common import cli, records, transforms
from common.transforms import IMAGE_EXTENSIONS
from common.infer import model as infer_model, predict as infer_predict, settings
from common.prep.imagefolder import read_lst
from tests import trainkit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
NUM_CLASSES = 4  # trainkit.prepare_dataset's default: 4 classes of 12 images, 8 for training
SHAPE = trainkit.IMAGE_SHAPE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained checkpoint (epochs 1..EPOCHS) with its data, metrics and val images."""
    return trainkit.trained_run(tmp_path_factory.mktemp("predict_score"), EPOCHS)


def run_script(script, *args, cwd=REPO):
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def iterator_images(rec, image_shape, count, batch_size=4):
    """(count, C, H, W): what the validation ImageRecordIter feeds the network."""
    record_set = records.check_record_set(rec, NUM_CLASSES)
    batches = transforms.record_iter(record_set, image_shape=image_shape, batch_size=batch_size, train=False, threads=1)
    return np.concatenate([batch.data[0].asnumpy() for batch in batches])[:count]


# ---------------------------------------------------------------- preprocess

def test_preprocess_of_the_original_file_differs_only_by_jpeg_loss(run):
    """The original file resized here gives the packed image up to its JPEG re-encoding.

    (That the packed image itself gives exactly the iterator's input is rule 3 of
    tests/test_rules.py.)"""
    expected = iterator_images(run.val_rec, SHAPE, len(run.val))
    for (_, path), want in zip(run.val, expected):
        diff = np.abs(transforms.preprocess(path, trainkit.RESIZE, SHAPE) - want)
        # The images are colour + uniform noise of +-40: a crop off by one pixel
        # differs by ~27 on average, JPEG q95 re-encoding by ~3.5.
        assert diff.mean() < 6, path


def test_center_crop_and_fit_to_crop_shapes():
    image = np.arange(7 * 10 * 3, dtype=np.uint8).reshape(7, 10, 3)
    crop = transforms.center_crop(image, 4, 5)
    assert crop.shape == (4, 5, 3) and crop[0, 0, 0] == image[1, 2, 0]  # (7-4)//2, (10-5)//2
    assert transforms.fit_to_crop(image, 7, 10) is image
    assert transforms.fit_to_crop(image, 14, 10).shape == (14, 20, 3)
    assert transforms.fit_to_crop(image, 7, 30).shape == (21, 30, 3)


def test_preprocess_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(transforms.UnreadableImage) as info:
        transforms.preprocess(str(bad), 18, SHAPE)
    assert info.value.path == str(bad) and "decode" in info.value.reason


# ---------------------------------------------------------------- settings

def test_find_images_expands_folders_recursively_and_sorted(tmp_path):
    for rel in ["b/2.JPG", "b/sub/1.png", "a.jpg", "b/.hidden.jpg", "b/notes.txt", ".git/x.jpg"]:
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.makedirs(tmp_path / "empty")
    files, problems = infer_predict.find_images([str(tmp_path / "b"), str(tmp_path / "nope.jpg"),
                                                 str(tmp_path / "a.jpg"), str(tmp_path / "empty")])
    assert files == [str(tmp_path / "b/2.JPG"), str(tmp_path / "b/sub/1.png"), str(tmp_path / "a.jpg")]
    assert problems == [(str(tmp_path / "nope.jpg"), "no such file or folder"),
                        (str(tmp_path / "empty"), "no image files (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")")]


def test_run_settings_come_from_the_training_run(run, tmp_path):
    recorded = settings.recorded_args(run.prefix)
    assert settings.resolve_image_shape(None, recorded).value == SHAPE
    assert settings.resolve_resize(None, recorded, SHAPE).value == trainkit.RESIZE
    assert settings.resolve_image_shape((3, 20, 20), recorded).value == (3, 20, 20)
    assert settings.resolve_resize(0, recorded, SHAPE).value == 0
    # a zoo checkpoint records nothing: 3,224,224 and the ImageNet 256-for-224 convention
    shape = settings.resolve_image_shape(None, {})
    assert shape.value == (3, 224, 224) and settings.resolve_resize(None, {}, shape.value).value == 256
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"options": {"resize": 40}}))
    assert settings.resolve_resize(None, {"data_val": str(tmp_path / "x.rec")}, SHAPE).value == 40


# ---------------------------------------------------------------- predict.py

def parse_blocks(stdout):
    """{file: [(rank, probability, name)]} from predict.py's text output."""
    blocks, current = {}, None
    for line in stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if not line.startswith(" "):
            current = blocks.setdefault(line, [])
        else:
            rank, prob, name = line.split(None, 2)
            current.append((int(rank.rstrip(".")), float(prob.rstrip("%")) / 100, name))
    return blocks


def test_predict_ranks_the_true_class_first_for_files_and_a_folder(run):
    files = [path for label, path in run.val if label in (0, 1)][:4]
    folder = os.path.join(run.src, run.classes[3])
    result = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, *files, folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    header = result.stdout.splitlines()[0]
    assert f"names from {run.prefix}-classes.txt" in header
    summary = os.path.join(run.data_dir, "caltech256-summary.json")
    assert f"input 3,16,16 (PREFIX-args.json); resize 18 (the training data's {summary})" in header
    blocks = parse_blocks(result.stdout)
    in_folder = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    assert list(blocks) == files + in_folder
    right = 0
    for path, ranked in blocks.items():
        assert [rank for rank, _, _ in ranked] == [1, 2, 3]  # default --top-k 3
        probs = [prob for _, prob, _ in ranked]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 3 * 5e-5
        assert all(name in run.classes for _, _, name in ranked)
        right += ranked[0][2] == os.path.basename(os.path.dirname(path))
    assert right >= 0.8 * len(blocks)


def test_predict_json_lists_every_image_with_sorted_probabilities(run):
    files = [path for _, path in run.val]
    result = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS,
                        "--json", "--top-k", NUM_CLASSES, "--batch-size", 5, *files)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == files  # 16 images in batches of 5: none lost
    right = 0
    for (label, _), record in zip(run.val, records):
        ranked = record["top_k"]
        assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
        assert sorted(r["label"] for r in ranked) == list(range(NUM_CLASSES))
        assert all(r["name"] == run.classes[r["label"]] for r in ranked)
        probs = [r["probability"] for r in ranked]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
        right += ranked[0]["label"] == label
    assert right >= 0.8 * len(files)


def test_several_cpu_contexts_predict_what_one_does(run):
    """The Module splits a batch over contexts: same probabilities, padding dropped."""
    images = np.stack([transforms.preprocess(path, trainkit.RESIZE, SHAPE) for _, path in run.val[:7]])
    one = infer_model.load_model(run.prefix, EPOCHS, SHAPE, [mx.cpu(0)], 8)
    two = infer_model.load_model(run.prefix, EPOCHS, SHAPE, [mx.cpu(0), mx.cpu(1)], 8)
    assert one.num_classes == two.num_classes == NUM_CLASSES
    probs = infer_model.forward(one, images)
    assert probs.shape == (7, NUM_CLASSES)
    np.testing.assert_allclose(infer_model.forward(two, images), probs, atol=1e-5)
    with pytest.raises(cli.UserError, match="--batch-size 7 does not divide by the 2 devices"):
        infer_model.load_model(run.prefix, EPOCHS, SHAPE, [mx.cpu(0), mx.cpu(1)], 7)


def test_a_checkpoint_with_a_flipped_byte_is_refused(run, tmp_path):
    """Our checkpoints carry .sha256 files: a changed byte is an error, not silent garbage."""
    prefix = str(tmp_path / "net")
    for suffix in ("-symbol.json", "-symbol.json.sha256", "-0001.params", "-0001.params.sha256"):
        with open(run.prefix + suffix, "rb") as src, open(prefix + suffix, "wb") as dst:
            dst.write(src.read())
    infer_model.load_model(prefix, 1, SHAPE, [mx.cpu()], 1)  # intact copy: loads
    with open(prefix + "-0001.params", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(cli.UserError, match="net-0001.params is corrupt"):
        infer_model.load_model(prefix, 1, SHAPE, [mx.cpu()], 1)


def test_predict_with_a_zoo_checkpoint_shows_label_indices(run, tmp_path):
    """mx.model.save_checkpoint's files: no .sha256, no args.json, no classes file."""
    prefix, *_ = trainkit.make_pretrained(str(tmp_path / "zoo" / "resnet-20"), num_classes=7)
    assert not os.path.exists(prefix + "-0000.params.sha256")
    image = run.val[0][1]
    result = run_script("predict.py", "--model-prefix", prefix, "--epoch", 0, "--image-shape",
                        "3,16,16", "--top-k", 7, image, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert "names from none" in header and "showing label indices" in header
    assert "resize 18 (default: 8/7 of the crop)" in header
    ranked = parse_blocks(result.stdout)[image]
    assert sorted(name for _, _, name in ranked) == [f"label {i}" for i in range(7)]


def test_predict_reports_an_unreadable_file_and_still_predicts_the_others(run, tmp_path):
    good = [path for _, path in run.val[:2]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    result = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, good[0], bad,
                        good[1], cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"predict.py: {bad}: OpenCV cannot decode it"]
    assert list(parse_blocks(result.stdout)) == [good[0], good[1]]


def test_predict_reports_a_missing_file_and_still_predicts_the_others(run, tmp_path):
    good = run.val[0][1]
    missing = tmp_path / "missing.jpg"
    result = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, good, missing,
                        cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"predict.py: {missing}: no such file or folder"]
    assert list(parse_blocks(result.stdout)) == [good]
    only_missing = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, missing,
                              cwd=str(tmp_path))
    assert only_missing.returncode == 1 and only_missing.stdout == ""
    assert only_missing.stderr.splitlines() == [f"predict.py: {missing}: no such file or folder"]


def test_predict_into_a_closed_pipe_ends_quietly(run):
    """`predict.py ... | head -1`: the reader leaves; no error line about it."""
    files = [path for _, path in run.val]
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "predict.py"), "--model-prefix", run.prefix,
                             "--epoch", str(EPOCHS), "--batch-size", "1", *files * 20],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, TQDM_DISABLE="1"))
    proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err.decode().strip() == ""


def test_predict_rejects_a_checkpoint_whose_output_is_not_a_softmax(run, tmp_path, capsys, entry_state):
    net = mx.sym.FullyConnected(mx.sym.Flatten(mx.sym.Variable("data")), num_hidden=3, name="fc")
    args = {"fc_weight": mx.nd.zeros((3, 3 * 16 * 16)), "fc_bias": mx.nd.zeros((3,))}
    prefix = str(tmp_path / "logits")
    mx.model.save_checkpoint(prefix, 1, net, args, {})
    code = cli.run_entry(predict.main, "predict.py", ["--model-prefix", prefix, "--epoch", "1",
                                                      run.val[0][1]])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'fc' is a FullyConnected, not a softmax" in err


def test_an_input_the_network_cannot_take_is_a_user_error(capsys):
    pooled = mx.sym.Pooling(mx.sym.Variable("data"), kernel=(7, 7), pool_type="avg", name="pool")
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(pooled, num_hidden=3, name="fc"), name="softmax")
    assert infer_model.output_classes(net, (1, 3, 8, 8)) == 3
    with pytest.raises(cli.UserError, match=r"input 3,4,4: .*kernel size \(7\) exceeds .*--image-shape"):
        infer_model.output_classes(net, (1, 3, 4, 4))
    assert capsys.readouterr().out == ""  # MXNet's own print of the arguments is kept off stdout


# ---------------------------------------------------------------- score.py

def read_csv_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_score_equals_the_training_runs_validation(run, tmp_path):
    out_dir = tmp_path / "report"
    result = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--data-val",
                        run.val_rec, "--batch-size", 8, "--top-k", 2, "--data-nthreads", 1,
                        "--out-dir", out_dir)
    assert result.returncode == 0, result.stderr
    final = run.metrics[-1]
    assert result.stdout.splitlines()[-1] == (
        f"score: acc={final['val_acc']:.4f} top2={final['val_top2']:.4f} "
        f"mean_class_acc={final['val_mean_class_acc']:.4f}")
    report = json.loads((out_dir / "score.json").read_text())
    # Same data, same preprocessing, same weights: the figures match exactly.
    assert round(report["acc"], 6) == final["val_acc"]
    assert round(report["top2"], 6) == final["val_top2"]
    assert round(report["mean_class_acc"], 6) == final["val_mean_class_acc"]
    assert report["loss"] == pytest.approx(final["val_loss"], abs=1e-5)
    assert report["images"] == len(run.val) and report["num_classes"] == NUM_CLASSES
    assert report["conditions"]["image_shape"] == list(SHAPE)
    check_report_files(out_dir, run, report)


def check_report_files(out_dir, run, report):
    """per_class.csv, confusion.csv and confusion.png agree with score.json and the set."""
    rows = read_csv_rows(out_dir / "per_class.csv")
    assert rows[0] == ["label", "name", "images", "correct", "accuracy"]
    assert [int(r[0]) for r in rows[1:]] == list(range(NUM_CLASSES))
    assert [r[1] for r in rows[1:]] == run.classes
    counts = [int(r[2]) for r in rows[1:]]
    assert counts == np.bincount([label for label, _ in run.val], minlength=NUM_CLASSES).tolist()
    correct = [int(r[3]) for r in rows[1:]]
    assert sum(correct) == round(report["acc"] * sum(counts))
    matrix = np.array([[int(v) for v in r[1:]] for r in read_csv_rows(out_dir / "confusion.csv")[1:]])
    assert matrix.shape == (NUM_CLASSES, NUM_CLASSES)
    assert matrix.sum(axis=1).tolist() == counts and np.diag(matrix).tolist() == correct
    png = (out_dir / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and min(image.shape[:2]) > 200


def test_score_counts_every_image_once_with_any_batch_size(run, entry_state):
    """Epoch 2 (not yet perfect), batches of 5 over 16 images, default out dir and top-k."""
    report = score.main(["--model-prefix", run.prefix, "--epoch", "2", "--data-val", run.val_rec,
                         "--batch-size", "5", "--data-nthreads", "1"])
    epoch2 = run.metrics[1]
    assert report["images"] == len(run.val) and report["top_k"] == NUM_CLASSES  # min(5, 4)
    assert round(report["acc"], 6) == epoch2["val_acc"]
    assert round(report["mean_class_acc"], 6) == epoch2["val_mean_class_acc"]
    assert report["loss"] == pytest.approx(epoch2["val_loss"], abs=1e-4)
    assert report[f"top{NUM_CLASSES}"] == 1.0
    check_report_files(pathlib.Path(f"{run.prefix}-score-0002-caltech256-val"), run, report)


def copy_set(run, folder, class_names):
    """The validation set copied into `folder` with its own classes.txt."""
    os.makedirs(folder)
    for suffix in (".rec", ".idx", ".lst"):
        shutil.copy(run.val_rec[:-4] + suffix, folder)
    with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in class_names)
    return os.path.join(folder, os.path.basename(run.val_rec))


@pytest.mark.parametrize("change", ["renamed", "reordered", "fewer"])
def test_score_refuses_a_set_labelled_by_another_class_list(run, tmp_path, change):
    names = {"renamed": run.classes[:2] + ["999.other"] + run.classes[3:],
             "reordered": [run.classes[1], run.classes[0]] + run.classes[2:],
             "fewer": run.classes[:3]}[change]
    rec = copy_set(run, str(tmp_path / "other"), names)
    result = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--data-val", rec,
                        "--out-dir", tmp_path / "report", cwd=str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"score.py: error: --data-val {rec} is labelled by {tmp_path}/other/classes.txt, "
                               f"which is not the class list {run.prefix}-classes.txt (")
    detail = {"renamed": f"label 2 is '999.other' there and {run.classes[2]!r} here",
              "reordered": f"label 0 is {run.classes[1]!r} there and {run.classes[0]!r} here",
              "fewer": "3 classes against 4"}[change]
    assert detail in lines[0]
    assert not (tmp_path / "report").exists()


def test_score_writes_one_report_folder_per_set_and_rescoring_replaces_it(run, tmp_path, entry_state):
    train_rec = run.val_rec.replace("-val.rec", "-train.rec")
    argv = ["--model-prefix", run.prefix, "--epoch", str(EPOCHS), "--data-nthreads", "1"]
    val = score.main(argv + ["--data-val", run.val_rec])
    train = score.main(argv + ["--data-val", train_rec])
    folders = {f"{run.prefix}-score-0004-caltech256-val": (val, run.val_rec),
               f"{run.prefix}-score-0004-caltech256-train": (train, train_rec)}
    for folder, (report, rec) in folders.items():
        on_disk = json.loads((pathlib.Path(folder) / "score.json").read_text())
        assert on_disk["data_val"] == os.path.abspath(rec) and on_disk["images"] == report["images"]
    assert val["images"] == len(run.val) and train["images"] == 4 * 8
    again = score.main(argv + ["--data-val", run.val_rec])  # the same set again: replaced, not refused
    assert again["acc"] == val["acc"]
    # Another input shape is another report, in a folder of its own.
    before = pathlib.Path(f"{run.prefix}-score-0004-caltech256-val/score.json").read_bytes()
    score.main(argv + ["--data-val", run.val_rec, "--image-shape", "3,20,20"])
    bigger = json.loads(pathlib.Path(f"{run.prefix}-score-0004-caltech256-val-3x20x20/score.json").read_text())
    assert bigger["image_shape"] == [3, 20, 20]
    assert pathlib.Path(f"{run.prefix}-score-0004-caltech256-val/score.json").read_bytes() == before


def test_score_never_overwrites_the_report_of_another_set(run, tmp_path):
    out_dir = tmp_path / "report"
    argv = ["--model-prefix", run.prefix, "--out-dir", out_dir]
    first = run_script("score.py", *argv, "--epoch", EPOCHS, "--data-val", run.val_rec)
    assert first.returncode == 0, first.stderr
    before = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}
    train_rec = run.val_rec.replace("-val.rec", "-train.rec")
    # (--epoch is given once: a second --epoch would pair with a second --model-prefix, an ensemble)
    for other in (["--epoch", EPOCHS, "--data-val", train_rec], ["--epoch", "3", "--data-val", run.val_rec]):
        result = run_script("score.py", *argv, *other)
        assert result.returncode == 1
        line = result.stderr.strip()
        assert line.startswith(f"score.py: error: --out-dir {out_dir} already holds the report of "
                               f"{os.path.abspath(run.prefix)} epoch {EPOCHS} on {run.val_rec}"), line
    assert {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)} == before


def test_score_failing_after_creating_its_folder_leaves_no_empty_folder(run, tmp_path, monkeypatch,
                                                                        capsys, entry_state):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(score.evaluate, "evaluate_set", disk_full)
    out_dir = tmp_path / "deep" / "report"
    code = cli.run_entry(score.main, "score.py", ["--model-prefix", run.prefix, "--epoch", str(EPOCHS),
                                                  "--data-val", run.val_rec, "--out-dir", str(out_dir)])
    assert code == cli.EXIT["I/O"] and "No space left on device" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # report/ and deep/ were made by the run and removed again


# ---------------------------------------------------------------- misuse

# case: (script, arguments, texts the error line must contain); {placeholders} from the run
MISUSE = {
    "predict-missing-prefix": (
        "predict.py", ["--model-prefix", "{root}/model/nope", "--epoch", "1", "{image}"],
        ["--model-prefix {root}/model/nope", "checkpoints in {root}/model: {prefix}"]),
    "predict-bad-epoch": (
        "predict.py", ["--model-prefix", "{prefix}", "--epoch", "9", "{image}"],
        ["--epoch 9", "net-0009.params not found", "saved epochs of {prefix}: 1, 2, 3, 4"]),
    "predict-top-k": (
        "predict.py", ["--model-prefix", "{prefix}", "--epoch", "1", "--top-k", "5", "{image}"],
        ["--top-k 5", "valid: 1..4"]),
    "score-missing-rec": (
        "score.py", ["--model-prefix", "{prefix}", "--epoch", "1", "--data-val", "{root}/no.rec"],
        ["--data-val {root}/no.rec: no such file"]),
    "score-missing-prefix": (
        "score.py", ["--model-prefix", "{root}/nope", "--epoch", "1", "--data-val", "{rec}"],
        ["--model-prefix {root}/nope", "checkpoints in {root}: none"]),
    "score-bad-epoch": (
        "score.py", ["--model-prefix", "{prefix}", "--epoch", "0", "--data-val", "{rec}"],
        ["--epoch 0", "saved epochs of {prefix}: 1, 2, 3, 4"]),
    "score-out-dir": (
        "score.py", ["--model-prefix", "{prefix}", "--epoch", "1", "--data-val", "{rec}", "--out-dir",
                     "/proc/no-such/report"],
        ["--out-dir /proc/no-such/report: cannot create it (No such file or directory)"]),
    "score-top-k": (
        "score.py", ["--model-prefix", "{prefix}", "--epoch", "1", "--data-val", "{rec}", "--top-k", "9"],
        ["--top-k 9", "valid: 1..4"]),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_one_line_and_non_zero(run, tmp_path, case):
    script, args, expected = MISUSE[case]
    fill = dict(root=run.root, prefix=run.prefix, image=run.val[0][1], rec=run.val_rec)
    result = run_script(script, *[a.format(**fill) for a in args], cwd=str(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr
    for text in expected:
        assert text.format(**fill) in lines[0]
    assert not os.listdir(tmp_path)  # nothing written
