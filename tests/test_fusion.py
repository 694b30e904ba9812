"""fuse_models.py: two checkpoints as the frozen backbones of one network (common/train/fusion.py).

The sources are zoo-format ResNet-20 checkpoints with random weights (trainkit.make_pretrained:
other class counts, other seeds), so each array has its own bytes and a misplaced one shows.
What is shown: every array each backbone reads is in the fused file under its prefix, bit for
bit, BatchNorm statistics included, and nothing else is; the fused features are the two
backbones' features side by side; a fused file that is not that is refused before it is
committed; train_caltech.py trains it with the backbones frozen by default (--mode full
--freeze-until net0 unfreezes the other), and score.py and predict.py load the result like any
run's, with the run's own validation figures; bad input is one line. That fusion beats each
backbone alone is the demo's figure (README: Model fusion), too slow for this suite.
"""
import contextlib
import io
import json
import logging
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import fuse_models
import predict
import score
from common import checkpoint, cli
from common.infer import model as infer_model
from common.train import fusion
from tests import trainkit
from tests.test_train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = ",".join(map(str, trainkit.IMAGE_SHAPE))
NUM_CLASSES = 4  # trainkit.prepare_dataset's classes


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    a = trainkit.make_pretrained(str(root / "a"), num_classes=5, seed=1)
    b = trainkit.make_pretrained(str(root / "b"), num_classes=7, seed=2, epoch=3)
    return [(a[0], 0), (b[0], 3)]


def fuse_args(sources, out, *extra):
    pairs = [arg for prefix, epoch in sources for arg in ("--model-prefix", prefix, "--epoch", str(epoch))]
    return [*pairs, "--num-classes", str(NUM_CLASSES), "--out", str(out), "--image-shape", SHAPE, *extra]


@pytest.fixture(scope="module")
def fused(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "fused"
    with contextlib.redirect_stdout(io.StringIO()):
        summary = fuse_models.main(fuse_args(sources, out))
    return str(out), summary


def arrays(prefix, epoch):
    return {k: v.asnumpy() for k, v in mx.nd.load(checkpoint.params_path(prefix, epoch)).items()}


def test_every_backbone_array_is_in_the_fused_file_bit_identical_under_its_prefix(sources, fused):
    prefix, summary = fused
    got = arrays(prefix, 0)
    expected = {"arg:fc1_weight", "arg:fc1_bias"}
    for index, (source, epoch) in enumerate(sources):
        for key, value in arrays(source, epoch).items():
            kind, name = key.split(":")
            if name.startswith("fc1_"):  # the source's head, cut away
                continue
            fused_key = f"{kind}:net{index}_{name}"
            expected.add(fused_key)
            assert got[fused_key].dtype == value.dtype and got[fused_key].tobytes() == value.tobytes(), fused_key
    assert set(got) == expected
    assert "aux:net1_stage3_unit3_bn2_moving_var" in got and "aux:stage3_unit3_bn2_moving_var" not in got
    assert [b["dropped"] for b in summary["backbones"]] == [["fc1_bias", "fc1_weight"]] * 2
    assert got["arg:fc1_weight"].shape == (NUM_CLASSES, 128) and not got["arg:fc1_weight"].any()


def test_the_fused_features_are_both_backbones_features_side_by_side(sources, fused):
    images = np.random.default_rng(0).uniform(0, 255, (3,) + trainkit.IMAGE_SHAPE).astype(np.float32)

    def flatten0(prefix, epoch):
        symbol, args, aux = checkpoint.load_checkpoint(prefix, epoch)
        cut = symbol.get_internals()["flatten0_output"]
        module = infer_model.bind_module(cut, args, aux, [mx.cpu()], len(images), trainkit.IMAGE_SHAPE)
        module.forward(mx.io.DataBatch(data=[mx.nd.array(images)]), is_train=False)
        return module.get_outputs()[0].asnumpy()
    both = np.concatenate([flatten0(prefix, epoch) for prefix, epoch in sources], axis=1)
    np.testing.assert_allclose(flatten0(fused[0], 0), both, rtol=1e-5, atol=1e-5)
    # ... and the whole fused checkpoint loads for inference: an untrained (zero) head, uniform output.
    model = infer_model.load_model(fused[0], 0, trainkit.IMAGE_SHAPE, [mx.cpu()], len(images))
    np.testing.assert_allclose(infer_model.forward(model, images), 1 / NUM_CLASSES, rtol=1e-6)


def test_a_fused_file_that_is_not_its_sources_is_refused_and_nothing_is_committed(sources, tmp_path,
                                                                                  monkeypatch):
    real = fusion.fuse

    def swapped(backbones, num_classes):  # a realistic bug: one backbone's array under the other's name
        symbol, args, aux = real(backbones, num_classes)
        aux["net0_bn1_moving_mean"] = aux["net1_bn1_moving_mean"]
        return symbol, args, aux
    monkeypatch.setattr(fusion, "fuse", swapped)
    with pytest.raises(fusion.FusionMismatch, match=r"1 differ \(net0_bn1_moving_mean of .*/a\)"):
        fuse_models.main(fuse_args(sources, tmp_path / "bad"))
    assert sorted(os.listdir(tmp_path)) == []


def test_the_input_shape_comes_from_the_runs_and_must_agree(sources, tmp_path):
    (a, _), (b, _) = sources
    assert fusion.resolve_image_shape([a, b], None) == (fusion.DEFAULT_IMAGE_SHAPE, "default")
    assert fusion.resolve_image_shape([a, b], (3, 16, 16)) == ((3, 16, 16), "--image-shape")
    copies = []
    for name, shape in (("a", [3, 16, 16]), ("b", [3, 16, 16]), ("c", [3, 20, 20])):
        copies.append(str(tmp_path / name))
        (tmp_path / f"{name}-args.json").write_text(json.dumps({"image_shape": shape}))
    assert fusion.resolve_image_shape(copies[:2], None) == ((3, 16, 16), "PREFIX-args.json")
    with pytest.raises(cli.UserError, match=r"other input shapes \(.*/a 3,16,16, .*/c 3,20,20\): one data input"):
        fusion.resolve_image_shape([copies[0], copies[2]], None)
    with pytest.raises(cli.UserError, match="--image-shape 3,20,20"):
        fusion.resolve_image_shape(copies[:2], (3, 20, 20))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return trainkit.prepare_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def trained(fused, data_dir, tmp_path_factory):
    """The fused checkpoint trained by train_caltech.py without --mode (3 epochs)."""
    prefix = tmp_path_factory.mktemp("trained") / "run"
    stdout = train(data_dir, prefix, "--pretrained-model", fused[0], "--lr", "0.05", "--mom", "0.9", epochs=3)
    return str(prefix), stdout


def test_train_caltech_trains_only_the_head_of_a_fused_checkpoint_by_default(fused, trained):
    prefix, _ = trained
    log = open(f"{prefix}-train.log").read()
    assert "fuses 2 backbones (net0_, net1_): --mode last-layer" in log
    assert "cut at flatten0" in log and "not used (cut away with the old head): fc1_bias, fc1_weight" in log
    before, after = arrays(fused[0], 0), arrays(prefix, 3)
    backbone = [k for k in before if k.split(":")[1].startswith(("net0_", "net1_"))]
    assert len(backbone) == len(before) - 2
    assert [k for k in backbone if after[k].tobytes() != before[k].tobytes()] == []  # statistics too
    assert after["arg:fc_new_weight"].shape == (NUM_CLASSES, 128) and after["arg:fc_new_weight"].any()
    assert json.load(open(f"{prefix}-args.json"))["mode"] == "last-layer"


def test_mode_full_with_freeze_until_net0_trains_the_other_backbone(fused, data_dir, tmp_path):
    prefix = tmp_path / "run"
    train(data_dir, prefix, "--pretrained-model", fused[0], "--mode", "full", "--freeze-until", "net0",
          "--lr", "0.05", epochs=1)
    before, after = arrays(fused[0], 0), arrays(str(prefix), 1)
    moved = {k.split(":")[1][:5] for k in before if k in after and after[k].tobytes() != before[k].tobytes()}
    assert moved == {"net1_"}  # net0 frozen, BatchNorm statistics included; net1 trained


def test_score_and_predict_load_the_trained_fused_checkpoint_as_any_run(trained, data_dir, tmp_path, capsys):
    prefix, stdout = trained
    last = trainkit.metrics(prefix)[-1]
    val_rec = os.path.join(data_dir, "caltech256-val.rec")
    report = score.main(["--model-prefix", prefix, "--epoch", "3", "--data-val", val_rec, "--cpus", "1",
                         "--out-dir", str(tmp_path / "score")])
    assert report["acc"] == pytest.approx(last["val_acc"], abs=1e-6)
    assert report["loss"] == pytest.approx(last["val_loss"], abs=1e-4)
    # predict.py: the same images from their files, the same top-1 (rule 3 of test_rules.py).
    from common.prep.imagefolder import read_lst
    rows = read_lst(os.path.join(data_dir, "caltech256-val.lst"))
    capsys.readouterr()
    predict.main(["--model-prefix", prefix, "--epoch", "3", "--json", "--top-k", "1",
                  *[os.path.join(os.path.dirname(data_dir), "src", rel) for _, _, rel in rows]])
    predicted = json.loads(capsys.readouterr().out)
    hits = sum(p["top_k"][0]["label"] == int(label) for p, (_, label, _) in zip(predicted, rows))
    assert hits / len(rows) == pytest.approx(report["acc"], abs=1e-6)
    logging.getLogger().setLevel(logging.INFO)  # predict.py quiets the log of this process


# option changes, words the one-line error must name, exit status
MISUSE = [
    (lambda s: s[:1], "fusion needs two or more checkpoints", 1),
    (lambda s: [s[0], (s[1][0] + "-gone", 3)], "-gone-symbol.json not found", 3),
    (lambda s: [s[0], (s[1][0], 4)], "--epoch 4: ", 3),
    (lambda s: s + [("--layer-before-fullc", "nope")], "--layer-before-fullc nope: no such layer output", 1),
    (lambda s: s + [("--layer-before-fullc", "relu1")], "fusion concatenates (N, D) features", 1),
    (lambda s: s + [("--out", s[0][0])], "is the prefix of a source checkpoint", 1),
    (lambda s: s + [("--image-shape", "1,16,16")], "conv0_weight (16, 3, 3, 3) != (16, 1, 3, 3)", 1),
]


@pytest.mark.parametrize("change,words,status", MISUSE, ids=[m[1][:24] for m in MISUSE])
def test_bad_input_is_one_line_and_a_status(change, words, status, sources, tmp_path, capsys):
    pairs, extra = [], []
    for first, second in change(list(sources)):
        (extra if first.startswith("--") else pairs).append((first, second))
    argv = fuse_args(pairs, tmp_path / "out") + [str(v) for option in extra for v in option]
    assert cli.run_entry(fuse_models.main, "fuse_models.py", argv) == status
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fuse_models.py: error: ") and words in err, err


def test_the_script_reports_a_mismatch_of_epochs_in_one_line_without_a_traceback(sources, tmp_path):
    result = subprocess.run([sys.executable, "fuse_models.py", "--model-prefix", sources[0][0], "--model-prefix",
                             sources[1][0], "--epoch", "0", "--num-classes", "4", "--out", str(tmp_path / "x")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "2 --model-prefix" in result.stderr and "but 1 --epoch" in result.stderr


def test_write_digits_writes_the_chosen_scans_of_the_chosen_digits(tmp_path):
    from sklearn.datasets import load_digits
    from tools import demo
    per_digit = np.bincount(load_digits().target)
    counts = demo.write_digits(str(tmp_path), [1, 4], slice(1, None, 2))
    assert counts == {1: per_digit[1] // 2, 4: per_digit[4] // 2}
    assert sorted(os.listdir(tmp_path)) == ["digit-1", "digit-4"]
    assert sorted(os.listdir(tmp_path / "digit-1"))[:2] == ["0001.png", "0003.png"]  # the odd scans only
