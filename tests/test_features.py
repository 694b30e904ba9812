"""extract_features.py and common/infer/features.py on a tiny checkpoint trained here.

The features of the default layer (flatten0, the classifier's input) must be what
the classifier reads: times the checkpoint's head and softmaxed, they are the
model's own predictions, as score.py (the validation iterator) and predict.py
(image files) compute them. The same image via a .rec and via its file gives the
same row.
"""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import extract_features
from common import checkpoint, cli, devices, evaluate, fsutil, records, transforms
from common.infer import features, model as infer_model
from tests import trainkit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
SHAPE = trainkit.IMAGE_SHAPE
ZOO_CLASSES = 7


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The trained checkpoint of tests/test_predict_score.py's kind, and a zoo-format one."""
    root = tmp_path_factory.mktemp("features")
    trained = trainkit.trained_run(root, EPOCHS)
    trained.zoo, *_ = trainkit.make_pretrained(str(root / "zoo" / "resnet-20"), num_classes=ZOO_CLASSES)
    return trained


def extract(*argv):
    """extract_features.py in this process: (exit status, the outputs' paths by role)."""
    args = [str(a) for a in argv]
    status = cli.run_entry(extract_features.main, "extract_features.py", args)
    return status, features.output_paths(args[args.index("--out") + 1])


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def head_of(prefix, epoch):
    """(weight (C, D), bias (C,)) of the FullyConnected that feeds the checkpoint's softmax."""
    symbol, args, _ = checkpoint.load_checkpoint(prefix, epoch)
    graph = json.loads(symbol.tojson())
    softmax_node = graph["nodes"][graph["heads"][0][0]]
    fc = graph["nodes"][softmax_node["inputs"][0][0]]["name"]  # fc1 (--mode scratch, the zoo), fc_new (fine-tuned)
    assert fc in ("fc_new", "fc1"), fc
    return args[f"{fc}_weight"].asnumpy(), args[f"{fc}_bias"].asnumpy()


def rec_probabilities(prefix, epoch, rec, num_classes, image_shape=SHAPE):
    """What score.py computes for every record: the model's softmax through the validation iterator."""
    model = infer_model.load_model(prefix, epoch, image_shape, devices.contexts(None, 1), 4)
    record_set = records.check_record_set(rec, num_classes)
    data_iter = transforms.record_iter(record_set, image_shape=image_shape, batch_size=4, train=False, threads=1)
    return evaluate.predict_probabilities(model.module, data_iter, record_set.labels)[0]


@pytest.mark.parametrize("which", ["trained", "zoo"])
def test_default_features_times_the_head_are_the_models_predictions_on_a_rec(run, tmp_path, which,
                                                                            entry_state):
    """Batches of 5 over 16 records: the last batch is padded (with stale images in MXNet 1.9.1)."""
    prefix, epoch, classes = (run.prefix, EPOCHS, 4) if which == "trained" else (run.zoo, 0, ZOO_CLASSES)
    status, out = extract("--model-prefix", prefix, "--epoch", epoch, "--image-shape", "3,16,16",
                          "--batch-size", 5, "--data-nthreads", 1, run.val_rec, "--out", tmp_path / "val")
    assert status == 0
    rows = np.load(out["features"])
    assert rows.dtype == np.float32 and rows.shape == (len(run.val), 64)  # flatten0 of ResNet-20: 64
    weight, bias = head_of(prefix, epoch)
    np.testing.assert_allclose(softmax(rows @ weight.T + bias),
                               rec_probabilities(prefix, epoch, run.val_rec, classes), atol=1e-4)
    assert np.load(out["labels"]).tolist() == [label for label, _ in run.val]
    keys = [line.split("\t")[0] for line in open(run.val_rec[:-4] + ".lst", encoding="utf-8")]
    assert open(out["names"], encoding="utf-8").read().splitlines() == keys
    described = json.load(open(out["description"], encoding="utf-8"))
    assert described["layer"] == "flatten0" and described["features"]["shape"] == [len(run.val), 64]
    assert described["counts"] == {"rows": len(run.val), "unreadable": 0}
    assert described["input"]["records"] == len(run.val)
    assert described["preprocessing"]["image_shape"] == list(SHAPE)
    assert described["checkpoint"]["epoch"] == epoch
    assert described["files"] == {os.path.basename(out[role]): fsutil.file_digest(out[role])
                                  for role in ("features", "labels", "names")}


def run_script(script, *args, cwd=REPO):
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_image_file_features_times_the_head_are_predict_py_s_probabilities(run, tmp_path):
    folder = os.path.join(run.src, run.classes[2])
    result = run_script("extract_features.py", "--model-prefix", run.prefix, "--epoch", EPOCHS,
                        "--batch-size", 3, folder, "--out", tmp_path / "out" / "digits")
    assert result.returncode == 0, result.stderr
    paths = features.output_paths(str(tmp_path / "out" / "digits"))
    names = open(paths["names"], encoding="utf-8").read().splitlines()
    assert names == sorted(os.path.join(folder, name) for name in os.listdir(folder))
    assert not os.path.exists(paths["labels"])
    predicted = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--json",
                           "--top-k", 4, folder)
    assert predicted.returncode == 0, predicted.stderr
    probs = np.zeros((len(names), 4))
    for row, record in enumerate(json.loads(predicted.stdout)):
        assert record["file"] == names[row]
        for ranked in record["top_k"]:
            probs[row, ranked["label"]] = ranked["probability"]
    weight, bias = head_of(run.prefix, EPOCHS)
    np.testing.assert_allclose(softmax(np.load(paths["features"]) @ weight.T + bias), probs, atol=1e-4)
    described = json.load(open(paths["description"], encoding="utf-8"))
    # the training run's settings, as predict.py takes them
    assert described["preprocessing"]["resize"] == trainkit.RESIZE
    assert described["preprocessing"]["image_shape_from"] == "PREFIX-args.json"
    assert result.stdout.startswith(f"features: {len(names)} x 64 float32, layer flatten0 of {run.prefix}")


def record_files(rec, folder):
    """Each record's JPEG as a file (record-KEY.jpg): the bytes the iterator decodes."""
    reader = mx.recordio.MXIndexedRecordIO(rec[:-4] + ".idx", rec, "r")
    os.makedirs(folder)
    for key in reader.keys:
        with open(os.path.join(folder, f"record-{key:04d}.jpg"), "wb") as f:
            f.write(mx.recordio.unpack(reader.read_idx(key))[1])
    reader.close()
    return folder


@pytest.mark.parametrize("layer", [None, "stage2_unit1_conv1"])
def test_an_image_via_the_rec_and_via_its_file_gives_the_same_row(run, tmp_path, layer, entry_state):
    """The project's rule 3 (tests/test_rules.py) carried through the network: the
    same bytes, as a record or as a file, give the same features."""
    folder = record_files(run.val_rec, str(tmp_path / "records"))
    layer_args = ["--layer", layer] if layer else []
    argv = ["--model-prefix", run.prefix, "--epoch", EPOCHS, "--batch-size", 4, *layer_args]
    assert extract(*argv, run.val_rec, "--out", tmp_path / "rec")[0] == 0
    # --resize 18: the packed images are 18 px already, nothing more is resized
    assert extract(*argv, "--resize", trainkit.RESIZE, folder, "--out", tmp_path / "files")[0] == 0
    via_rec, via_files = np.load(tmp_path / "rec-features.npy"), np.load(tmp_path / "files-features.npy")
    assert via_rec.shape == via_files.shape == (len(run.val), 64 if layer is None else 32 * 8 * 8)
    np.testing.assert_allclose(via_files, via_rec, rtol=1e-5, atol=1e-5)


def test_a_4d_layer_is_flattened_or_kept(run, tmp_path, entry_state):
    files = [path for _, path in run.val[:5]]
    argv = ["--model-prefix", run.prefix, "--epoch", EPOCHS, "--layer", "stage3_unit3_conv2_output", *files]
    assert extract(*argv, "--out", tmp_path / "flat")[0] == 0
    assert extract(*argv, "--keep-shape", "--out", tmp_path / "kept")[0] == 0
    flat, kept = np.load(tmp_path / "flat-features.npy"), np.load(tmp_path / "kept-features.npy")
    assert kept.shape == (5, 64, 4, 4) and flat.shape == (5, 64 * 4 * 4)
    np.testing.assert_array_equal(flat, kept.reshape(5, -1))
    described = json.load(open(tmp_path / "flat-features.json", encoding="utf-8"))
    assert described["layer"] == "stage3_unit3_conv2" and described["layer_output_shape"] == [64, 4, 4]
    assert described["features"]["flattened"] is True
    assert json.load(open(tmp_path / "kept-features.json", encoding="utf-8"))["features"]["flattened"] is False


def test_an_unreadable_file_is_reported_and_the_others_extracted(run, tmp_path, capsys, entry_state):
    good = [path for _, path in run.val[:3]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    status, out = extract("--model-prefix", run.prefix, "--epoch", EPOCHS, good[0], bad, *good[1:],
                          "--out", tmp_path / "some")
    assert status == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"extract_features.py: {bad}: OpenCV cannot decode it"
    assert open(out["names"], encoding="utf-8").read().splitlines() == good
    assert np.load(out["features"]).shape == (3, 64)
    described = json.load(open(out["description"], encoding="utf-8"))
    assert described["input"]["unreadable"] == [{"file": str(bad), "reason": "OpenCV cannot decode it"}]


def test_files_after_a_rec_leave_no_stale_labels(run, tmp_path, entry_state):
    argv = ["--model-prefix", run.prefix, "--epoch", EPOCHS, "--out", tmp_path / "same"]
    assert extract(*argv, run.val_rec)[0] == 0
    status, out = extract(*argv, run.val[0][1])
    assert status == 0 and not os.path.exists(out["labels"])
    assert json.load(open(out["description"], encoding="utf-8"))["counts"]["rows"] == 1


def test_the_default_layer_is_the_input_of_the_softmax_s_fully_connected():
    data = mx.sym.Variable("data")
    pooled = mx.sym.Flatten(mx.sym.Pooling(data, kernel=(2, 2), pool_type="avg", name="pool"), name="flat")
    fc = mx.sym.FullyConnected(pooled, num_hidden=3, name="fc")
    assert features.default_layer(mx.sym.SoftmaxOutput(fc, name="softmax")) == "flat"
    half = mx.sym.Cast(mx.sym.FullyConnected(mx.sym.Cast(pooled, dtype="float16"), num_hidden=3, name="fc"),
                       dtype="float32")  # a float16 run's head
    assert features.default_layer(mx.sym.SoftmaxOutput(half, name="softmax")) == "flat"
    assert features.default_layer(fc) is None  # no softmax: --layer must say


# case: (arguments, exit status, texts the one error line must contain); {placeholders} from the run
MISUSE = {
    "missing-rec": (["{root}/none.rec"], 3, ["{root}/none.rec: no such file"]),
    "missing-image": (["{root}/none.jpg"], 3, ["{root}/none.jpg: no such file or folder"]),
    "idx-for-rec": (["{idx}"], 1, ["that is the set's idx file; pass its .rec, {rec}"]),
    "rec-and-images": (["{rec}", "{image}"], 1, ["a .rec is extracted on its own"]),
    "resize-with-rec": (["{rec}", "--resize", "18"], 1, ["--resize 18 is for image files"]),
    "wrong-layer": (["{rec}", "--layer", "fc9"], 1,
                    ["--layer fc9: no such layer in {prefix}; candidates, nearest the output first: "
                     "softmax, fc1, flatten0, pool1, relu1, bn1,", "(74 layers; draw_net.py"]),
    "bad-epoch": (["{rec}", "--epoch", "9"], 3, ["--epoch 9", "saved epochs of {prefix}: 1, 2, 3, 4"]),
    "unwritable-out": (["{rec}", "--out", "/proc/none/x"], 6, ["--out /proc/none/x: cannot create its folder"]),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_one_line_with_its_exit_status(run, tmp_path, case, capsys, entry_state, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    args, expected_status, texts = MISUSE[case]
    fill = dict(root=tmp_path, rec=run.val_rec, idx=run.val_rec[:-4] + ".idx", image=run.val[0][1],
                prefix=run.prefix)
    argv = ["--model-prefix", run.prefix, "--epoch", str(EPOCHS), "--out", str(tmp_path / "x")]
    argv += [a.format(**fill) for a in args]
    assert cli.run_entry(extract_features.main, "extract_features.py", argv) == expected_status
    lines = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("extract_features.py: error: "), lines
    for text in texts:
        assert text.format(**fill) in lines[0]
    assert not any(name.startswith("x-") for name in os.listdir(tmp_path))


def test_a_missing_rec_exits_3_from_the_shell(run, tmp_path):
    result = run_script("extract_features.py", "--model-prefix", run.prefix, "--epoch", EPOCHS,
                        tmp_path / "none.rec", "--out", tmp_path / "x", cwd=str(tmp_path))
    assert result.returncode == cli.EXIT["missing file"]
    assert result.stderr.strip().splitlines() == [
        f"extract_features.py: error: {tmp_path}/none.rec: no such file (prepare_data.sh writes the "
        f".rec, .idx and .lst of a set)"]
    assert os.listdir(tmp_path) == []
