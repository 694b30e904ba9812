"""tools/photoset.py's photograph task, then a smoke run of bench/bench_recipe.py on the
photographs scikit-learn and matplotlib ship (pretraining on two, fine-tuning on a third):
every seed runs every recipe from the pretraining's checkpoint, and the figures are
those of the runs' curves (no accuracy is asserted: two epochs of a tiny task)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench import bench_recipe
from tools import photoset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_regions_tile_the_photograph_exactly():
    tiles = photoset.regions((427, 640, 3), 3)
    assert len(tiles) == 9
    cover = np.zeros((427, 640), int)
    for top, left, height, width in tiles:
        cover[top:top + height, left:left + width] += 1
    assert (cover == 1).all()


def test_a_class_folder_per_region_of_crops_centred_in_it_reproducibly(tmp_path):
    names = photoset.make_photo_classes(str(tmp_path / "a"), ["china", "grace_hopper"], grid=2, per_class=3,
                                        side=24, seed=5)
    assert names == [f"{i + 1:03d}.{photo}-r{r}c{c}" for i, (photo, r, c) in enumerate(
        (p, r, c) for p in ("china", "grace_hopper") for r in range(2) for c in range(2))]
    again = photoset.make_photo_classes(str(tmp_path / "b"), ["china", "grace_hopper"], grid=2, per_class=3,
                                        side=24, seed=5)
    assert again == names
    for name in names:
        files = sorted(os.listdir(tmp_path / "a" / name))
        assert len(files) == 3 and files == sorted(os.listdir(tmp_path / "b" / name))
        for file in files:
            image = cv2.imread(str(tmp_path / "a" / name / file))
            assert image.shape == (24, 24, 3)
            assert np.array_equal(image, cv2.imread(str(tmp_path / "b" / name / file)))
    # A crop's content comes from its own region: the top-left region's crops are nearer
    # (in mean colour) to that region than to the bottom-right one, on average.
    photo = photoset.load_photo("china")
    (t, l, h, w), *_, (t2, l2, h2, w2) = photoset.regions(photo.shape, 2)
    crops = [cv2.imread(str(tmp_path / "a" / names[0] / f)).reshape(-1, 3).mean(0)
             for f in os.listdir(tmp_path / "a" / names[0])]
    near = np.linalg.norm(np.mean(crops, 0) - photo[t:t + h, l:l + w].reshape(-1, 3).mean(0))
    far = np.linalg.norm(np.mean(crops, 0) - photo[t2:t2 + h2, l2:l2 + w2].reshape(-1, 3).mean(0))
    assert near < far


def test_a_photograph_of_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(photoset.PHOTOS, "nowhere", ("no_such_package_here", "data/x.png"))
    with pytest.raises(FileNotFoundError, match="comes with no_such_package_here, which is not installed"):
        photoset.photo_path("nowhere")
    assert photoset.available(["china", "nowhere"]) == ["china"]


def test_epochs_to_reach_and_a_seed_that_never_reaches_counts_past_the_end():
    assert bench_recipe.epochs_to_reach([0.1, 0.3, 0.5], 0.3) == 2
    assert bench_recipe.epochs_to_reach([0.1, 0.2], 0.3) is None
    runs = [{"name": "classic", "seed": 0, "val_acc": [0.2, 0.4]}, {"name": "classic", "seed": 1, "val_acc": [0.2, 0.4]},
            {"name": "modern", "seed": 0, "val_acc": [0.5, 0.6]}, {"name": "modern", "seed": 1, "val_acc": [0.1, 0.3]},
            {"name": "modern-half", "seed": 0, "val_acc": [0.4]}, {"name": "modern-half", "seed": 1, "val_acc": [0.3]}]
    summary = bench_recipe.summarize(runs, 2)
    assert summary["epochs_to_classic_final"]["modern"] == {"0": 1, "1": None}
    assert summary["time_to_accuracy"]["min"] == 0.5 and summary["time_to_accuracy"]["max"] == 1.5
    assert summary["time_to_accuracy"]["never_reached"] == 1
    assert summary["half_reaches_classic"] == {"0": True, "1": False}


def bench(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench.bench_recipe", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, TQDM_DISABLE="1"))


def test_photographs_in_both_sets_are_refused_in_one_line(tmp_path):
    proc = bench("--pretrain-photos", "china,flower", "--finetune-photos", "flower", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--finetune-photos flower: also in --pretrain-photos" in proc.stderr
    proc = bench("--finetune-photos", "china,mars", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "unknown photograph 'mars'; valid: china, flower" in proc.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("bench") / "bench_recipe.json", tmp_path_factory.mktemp("work")
    proc = bench("--pretrain-photos", "china,flower", "--finetune-photos", "grace_hopper", "--grid", "2",
                 "--side", "20", "--pretrain-per-class", "12", "--train-per-class", "6", "--val-per-class", "4",
                 "--pretrain-epochs", "2", "--epochs", "2", "--seeds", "0,1", "--batch-size", "8",
                 "--variant", "ema=--ema 0.9", "--out", str(out), "--workdir", str(work))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, work, out


def test_every_seed_runs_every_recipe_from_the_pretrained_checkpoint_in_alternating_order(results):
    figures, _, work, _ = results
    order = sorted(os.listdir(os.path.join(work, "runs")))
    assert order == ["01-classic-seed0", "02-modern-seed0", "03-modern-half-seed0", "04-ema-seed0",
                     "05-ema-seed1", "06-modern-half-seed1", "07-modern-seed1", "08-classic-seed1"]
    with open(os.path.join(work, "pretrain", "model-args.json")) as f:
        assert json.load(f)["mom"] == 0.9  # the pretraining's own options
    for run in order:
        with open(os.path.join(work, "runs", run, "model-args.json")) as f:
            recorded = json.load(f)
        assert recorded["pretrained_model"] == os.path.join(str(work), "pretrain", "model")
        assert recorded["pretrained_epoch"] == 2 and recorded["mode"] == "full"
        assert recorded["recipe"] == ("classic" if run.split("-")[1] == "classic" else "modern")
        assert recorded["num_epochs"] == (1 if "half" in run else 2)
        assert recorded["ema"] == (0.9 if "ema" in run else 0.0)
        assert recorded["seed"] == int(run[-1])
    assert {(r["name"], r["seed"]): len(r["val_acc"]) for r in figures["runs"]} == {
        (name, seed): 1 if name == "modern-half" else 2 for name in ("classic", "modern", "modern-half", "ema")
        for seed in (0, 1)}
    classes = open(os.path.join(work, "data-finetune", "photos-classes.txt")).read().split()
    assert classes == [f"{i + 1:03d}.grace_hopper-r{i // 2}c{i % 2}" for i in range(4)]


def test_the_figures_are_those_of_the_curves_and_the_plot_is_written(results):
    figures, stdout, _, out = results
    runs = {(r["name"], r["seed"]): r["val_acc"] for r in figures["runs"]}
    for seed in (0, 1):
        target = runs["classic", seed][-1]
        reached = next((e for e, v in enumerate(runs["modern", seed], 1) if v >= target), None)
        assert figures["epochs_to_classic_final"]["modern"][str(seed)] == reached
    ratios = sorted((figures["epochs_to_classic_final"]["modern"][s] or 3) / 2 for s in ("0", "1"))
    assert [figures["time_to_accuracy"][k] for k in ("min", "max")] == ratios
    assert figures["conditions"]["train_images"] == 24 and figures["conditions"]["pretrain_images"] == 96
    assert figures["conditions"]["variants"] == {"ema": "--ema 0.9"}
    assert 0 <= figures["conditions"]["pretrain_val_acc"] <= 1 and len(figures["pretraining"]) == 2
    assert "| time_to_accuracy" in stdout
    picture = os.path.splitext(out)[0] + ".png"
    assert cv2.imread(picture) is not None
