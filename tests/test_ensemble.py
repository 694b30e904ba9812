"""Ensembles (score.py with several --model-prefix/--epoch pairs, common/infer/ensemble.py).

Members are epochs of the trained checkpoint of tests/test_predict_score.py (its
`run` fixture) and a copy of epoch 4 whose PREFIX-args.json records another input
shape (3,20,20; ResNet-20's global pooling takes it), so that each member is seen
to be scored at its own shape. The checks: the ensemble's probabilities are the
mean of the members' (exactly; and as computed here without the module), two
copies of one checkpoint give that checkpoint's figures, both the members' and the
ensemble's figures are reported (with TTA too), reports of other ensembles are
never overwritten, and members of other classes are refused in one line.
"""
import json
import os
import pathlib
import shutil

import mxnet as mx
import numpy as np
import pytest

import score
from common import cli, evaluate, records
from common.infer import ensemble, model as infer_model
from tests import trainkit
from tests.test_predict_score import EPOCHS, NUM_CLASSES, SHAPE, iterator_images, run, run_script  # noqa: F401

WIDE = (3, 20, 20)


def copy_checkpoint(prefix, to, epoch, image_shape=None, classes=None):
    """PREFIX's symbol, EPOCH's params (with digests), args.json and classes.txt under `to`;
    image_shape: recorded instead of the run's; classes: names written instead."""
    os.makedirs(os.path.dirname(to), exist_ok=True)
    for suffix in ("-symbol.json", f"-{epoch:04d}.params"):
        for extra in ("", ".sha256"):
            shutil.copy(prefix + suffix + extra, to + suffix + extra)
    recorded = json.loads(pathlib.Path(prefix + "-args.json").read_text())
    if image_shape:
        recorded["image_shape"] = list(image_shape)
    pathlib.Path(to + "-args.json").write_text(json.dumps(recorded))
    names = classes or pathlib.Path(prefix + "-classes.txt").read_text().split()
    pathlib.Path(to + "-classes.txt").write_text("".join(f"{n}\n" for n in names))
    return to


@pytest.fixture(scope="module")
def wide(run, tmp_path_factory):
    return copy_checkpoint(run.prefix, str(tmp_path_factory.mktemp("wide") / "net"), EPOCHS, image_shape=WIDE)


@pytest.fixture(scope="module")
def val_set(run):
    return records.check_record_set(run.val_rec, NUM_CLASSES)


def test_the_ensemble_is_the_mean_of_the_members_each_at_its_own_shape(run, wide, val_set):
    pairs = [(run.prefix, 2), (run.prefix, EPOCHS), (wide, EPOCHS)]
    members = ensemble.plan(pairs)
    assert [m.shape.value for m in members] == [SHAPE, SHAPE, WIDE]
    result = ensemble.score_members(members, val_set, contexts=[mx.cpu()], batch_size=8, threads=1, top_k=2)
    # The members one by one, as score.py scores a single checkpoint; the mean taken here.
    alone = []
    for prefix, epoch in pairs:
        shape = WIDE if prefix == wide else SHAPE
        model = infer_model.load_model(prefix, epoch, shape, [mx.cpu()], 8)
        alone.append(evaluate.evaluate_set(model.module, val_set, image_shape=shape, batch_size=8, threads=1,
                                           num_classes=NUM_CLASSES, top_k=2))
        # and without common.evaluate: forward the iterator's images directly
        images = iterator_images(run.val_rec, shape, len(val_set))
        np.testing.assert_allclose(infer_model.forward(model, images[:8]), alone[-1].probs[:8], atol=1e-6)
    mean = sum(s.probs.astype(np.float64) for s in alone) / len(alone)
    assert np.array_equal(result.score.probs, mean)
    assert result.score.figures == evaluate.summarize(mean, val_set.labels, NUM_CLASSES, 2)
    assert [m.score.figures for m in result.members] == [s.figures for s in alone]
    assert len({s.figures["loss"] for s in alone}) == 3  # three different models, not one three times
    # the wide member really ran at 20x20: its figures differ from the same weights at 16x16
    assert alone[2].figures["loss"] != alone[1].figures["loss"]


def scored(result, out_dir):
    assert result.returncode == 0, result.stderr
    return json.loads((pathlib.Path(out_dir) / "score.json").read_text()), result.stdout.splitlines()


def test_score_reports_every_member_and_the_ensemble_with_tta(run, wide, tmp_path):
    argv = ["--data-val", run.val_rec, "--top-k", 2, "--tta"]
    report, lines = scored(run_script("score.py", "--model-prefix", run.prefix, "--epoch", 2, "--model-prefix",
                                      wide, "--epoch", EPOCHS, *argv, "--out-dir", tmp_path / "e"), tmp_path / "e")
    singles = [scored(run_script("score.py", "--model-prefix", p, "--epoch", e, *argv, "--out-dir", tmp_path / n),
                      tmp_path / n)[0] for p, e, n in [(run.prefix, 2, "a"), (wide, EPOCHS, "b")]]
    assert report["ensemble"] == [{"model_prefix": run.prefix, "epoch": 2, "image_shape": list(SHAPE)},
                                  {"model_prefix": wide, "epoch": EPOCHS, "image_shape": list(WIDE)}]
    for member, single in zip(report["members"], singles):
        for key in ("acc", "top2", "mean_class_acc", "images"):
            assert member[key] == single[key] and member["tta"][key] == single["tta"][key]
        assert member["loss"] == pytest.approx(single["loss"], abs=1e-6)
    t = report["tta"]
    assert lines[-1] == (f"score: acc={report['acc']:.4f} top2={report['top2']:.4f} "
                         f"mean_class_acc={report['mean_class_acc']:.4f} tta_acc={t['acc']:.4f} "
                         f"tta_top2={t['top2']:.4f} tta_mean_class_acc={t['mean_class_acc']:.4f} models=2")
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 4 and table[2].startswith(f"| {wide} | {EPOCHS} | 3,20,20 | ")
    assert table[3].startswith("| ensemble (mean of 2) |  |  | " + f"{report['acc']:.4f} | {report['top2']:.4f} | ")
    assert sum(int(r.split(",")[3]) for r in (tmp_path / "e" / "per_class.csv").read_text().splitlines()[1:]) \
        == round(report["acc"] * report["images"])


def test_two_copies_of_one_checkpoint_give_its_own_figures(run, tmp_path):
    single, _ = scored(run_script("score.py", "--model-prefix", run.prefix, "--epoch", 2, "--data-val",
                                  run.val_rec, "--out-dir", tmp_path / "one"), tmp_path / "one")
    twice, lines = scored(run_script("score.py", *["--model-prefix", run.prefix, "--epoch", 2] * 2, "--data-val",
                                     run.val_rec, "--out-dir", tmp_path / "two"), tmp_path / "two")
    for key in ("acc", f"top{NUM_CLASSES}", "mean_class_acc", "images"):
        assert twice[key] == single[key]
    assert twice["loss"] == pytest.approx(single["loss"], abs=1e-6)
    for name in ("per_class.csv", "confusion.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert single["acc"] < 1  # epoch 2 is not perfect: equal figures say something


def test_default_folders_keep_each_ensembles_report(run, wide, tmp_path, entry_state, capsys):
    base = ["--data-val", run.val_rec, "--data-nthreads", "1"]
    ab = ["--model-prefix", run.prefix, "--epoch", "2", "--model-prefix", wide, "--epoch", str(EPOCHS)]
    other_epoch = ["--model-prefix", run.prefix, "--epoch", "3", "--model-prefix", wide, "--epoch", str(EPOCHS)]
    first, other = score.main(ab + base), score.main(other_epoch + base)
    folders = sorted(p for p in os.listdir(os.path.dirname(run.prefix)) if "-ensemble2-" in p)
    assert len(folders) == 2 and all(f.endswith("-score-caltech256-val") for f in folders)
    again = score.main(ab + base)  # the same ensemble again: its own report replaced, not refused
    assert again["acc"] == first["acc"] and other["ensemble"][0]["epoch"] == 3
    out_dir = tmp_path / "shared"
    score.main(ab + base + ["--out-dir", str(out_dir)])
    before = (out_dir / "score.json").read_bytes()
    for argv in (other_epoch, ["--model-prefix", run.prefix, "--epoch", "2"]):
        capsys.readouterr()
        assert cli.run_entry(score.main, "score.py", argv + base + ["--out-dir", str(out_dir)]) == 1
        line = capsys.readouterr().err.strip().splitlines()[-1]  # after the 20x20 member's upscaling warning
        assert line == (f"score.py: error: --out-dir {out_dir} already holds the report of the ensemble of "
                        f"{run.prefix} epoch 2; {wide} epoch {EPOCHS} on {run.val_rec}; choose another --out-dir "
                        f"(nothing was overwritten)")
    assert (out_dir / "score.json").read_bytes() == before


MISMATCH = {
    "count": (["--model-prefix", "{zoo}", "--epoch", "0", "--image-shape", "3,16,16"],
              "--model-prefix {zoo} predicts 7 classes but --model-prefix {prefix} predicts 4"),
    "names": (["--model-prefix", "{renamed}", "--epoch", "4"],
              "--model-prefix {renamed} is labelled by {renamed}-classes.txt, which is not the class list "
              "{prefix}-classes.txt of --model-prefix {prefix} (label 1 is 'other' there and '{class1}' here)"),
    "epochs": (["--model-prefix", "{prefix}", "--epoch", "3", "--epoch", "2"],
               "2 --model-prefix ({prefix}, {prefix}) but 3 --epoch (4, 3, 2)"),
    "missing": (["--model-prefix", "{prefix}", "--epoch", "9"],
                "--epoch 9: {prefix}-0009.params not found; saved epochs of {prefix}: 1, 2, 3, 4"),
}


@pytest.mark.parametrize("case", sorted(MISMATCH))
def test_bad_members_are_refused_in_one_line(run, tmp_path, case):
    fill = dict(prefix=run.prefix, class1=run.classes[1],
                zoo=trainkit.make_pretrained(str(tmp_path / "zoo" / "net"), num_classes=7)[0] if case == "count"
                else "", renamed=str(tmp_path / "renamed" / "net"))
    if case == "names":
        copy_checkpoint(run.prefix, fill["renamed"], EPOCHS, classes=[run.classes[0], "other"] + run.classes[2:])
    extra, expected = MISMATCH[case]
    result = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS,
                        *[a.format(**fill) for a in extra], "--data-val", run.val_rec, "--out-dir", tmp_path / "r")
    assert result.returncode == (cli.EXIT["missing file"] if case == "missing" else 1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score.py: error: "), result.stderr
    assert expected.format(**fill) in lines[0]
    assert not (tmp_path / "r").exists()
