"""Test-time augmentation (score.py --tta, predict.py --tta): the views and their average.

Uses the trained checkpoint of tests/test_predict_score.py (its `run` fixture).
The checks: the first view is exactly validation's input (so TTA and plain
figures come from the same pixels), the ten views are the center and corner
crops and their mirrors, the average is over exactly those views, and both
scripts report TTA beside the plain figures.
"""
import json

import mxnet as mx
import numpy as np
import pytest

from common import cli, evaluate, records, transforms
from common.infer import model as infer_model, tta
from tests import trainkit
from tests.test_predict_score import EPOCHS, NUM_CLASSES, SHAPE, iterator_images, run, run_script  # noqa: F401


@pytest.fixture(scope="module")
def model(run):
    return infer_model.load_model(run.prefix, EPOCHS, SHAPE, [mx.cpu()], 8)


@pytest.fixture(scope="module")
def val_set(run):
    return records.check_record_set(run.val_rec, NUM_CLASSES)


def test_the_views_are_the_center_and_corner_crops_and_their_mirrors():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    views = transforms.tta_views(image, (3, 16, 16))
    assert len(views) == 10 == tta.views_per_image((1.0,))
    rgb = image[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    windows = [(2, 7), (0, 0), (0, 14), (4, 0), (4, 14)]  # center, tl, tr, bl, br
    for i, (top, left) in enumerate(windows):
        crop = rgb[:, top:top + 16, left:left + 16]
        np.testing.assert_array_equal(views[2 * i], crop)
        np.testing.assert_array_equal(views[2 * i + 1], crop[:, :, ::-1])
    assert len(transforms.tta_views(image, (3, 16, 16), scales=(1.0, 1.5))) == 20


def test_the_first_view_of_each_record_is_what_validation_feeds(run, val_set):
    fed = iterator_images(run.val_rec, SHAPE, len(val_set))
    for (_, image), expected in zip(records.iter_images(val_set.rec, val_set.idx), fed):
        np.testing.assert_array_equal(transforms.tta_views(image, SHAPE)[0], expected)


def test_one_view_gives_the_plain_probabilities_and_ten_their_mean(model, val_set):
    plain = evaluate.evaluate_set(model.module, val_set, image_shape=SHAPE, batch_size=8, threads=1,
                                  num_classes=NUM_CLASSES, top_k=2)
    center = tta.record_probabilities(model, val_set, crops=("center",), mirror=False)
    np.testing.assert_allclose(evaluate.summarize(center, val_set.labels, NUM_CLASSES, 2)["loss"],
                               plain.figures["loss"], atol=1e-6)
    averaged = tta.record_probabilities(model, val_set)
    images = [image for _, image in records.iter_images(val_set.rec, val_set.idx)]
    for index in (0, len(images) - 1):  # the first image, and the last of a part-filled batch
        one_by_one = [infer_model.forward(model, view[None])[0] for view in transforms.tta_views(images[index], SHAPE)]
        np.testing.assert_allclose(averaged[index], np.mean(one_by_one, axis=0), atol=1e-6)
    assert averaged.shape == (len(val_set), NUM_CLASSES)
    np.testing.assert_allclose(averaged.sum(axis=1), 1, atol=1e-5)


def test_score_reports_tta_beside_the_plain_figures(run, tmp_path, val_set):
    plain = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--data-val", run.val_rec,
                       "--top-k", 2, "--out-dir", tmp_path / "plain")
    result = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--data-val", run.val_rec,
                        "--top-k", 2, "--out-dir", tmp_path / "tta", "--tta", "--tta-scales", "1,1.2")
    assert result.returncode == 0 == plain.returncode, result.stderr
    report = json.loads((tmp_path / "tta" / "score.json").read_text())
    assert report["tta"]["views"] == 20 and report["tta"]["scales"] == [1.0, 1.2]
    last = result.stdout.splitlines()[-1]
    assert last.startswith(plain.stdout.splitlines()[-1] + " tta_acc=")  # the plain figures are unchanged
    t = report["tta"]
    assert last.endswith(f"tta_acc={t['acc']:.4f} tta_top2={t['top2']:.4f} "
                         f"tta_mean_class_acc={t['mean_class_acc']:.4f}")
    assert t["images"] == len(val_set)


def test_predict_tta_ranks_by_the_averaged_probabilities(run, model):
    path = run.val[0][1]
    result = run_script("predict.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--json", "--tta",
                        "--top-k", NUM_CLASSES, path)
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)[0]["top_k"]
    # predict.py's resize comes from the training data's summary: the packed shorter side
    expected = tta.average_views(model, [transforms.load_resized(path, trainkit.RESIZE, SHAPE)])[0]
    assert [r["label"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([r["probability"] for r in ranked], np.sort(expected)[::-1], atol=2e-6)


@pytest.mark.parametrize("script,extra", [("predict.py", []), ("score.py", ["--data-val", "x.rec"])])
def test_tta_scales_without_tta_is_one_line(run, script, extra):
    result = run_script(script, "--model-prefix", run.prefix, "--epoch", EPOCHS, "--tta-scales", "1,1.2",
                        *extra, *(["x.jpg"] if script == "predict.py" else []))
    assert result.returncode == cli.EXIT["bad input or data"]
    assert result.stderr.strip() == f"{script}: error: --tta-scales 1.0,1.2 needs --tta"


def test_bad_tta_scales_are_a_usage_error(run):
    result = run_script("score.py", "--model-prefix", run.prefix, "--epoch", EPOCHS, "--data-val", "x.rec",
                        "--tta", "--tta-scales", "1,0")
    assert result.returncode == 2 and "expected distinct positive scales" in result.stderr
