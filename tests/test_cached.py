"""--cache-features and --head logistic|svm: a frozen backbone's features computed once.

The task and the pretrained checkpoint are test_train.py's (4 colour classes; a
ResNet-20 trained on 6 other colours). What is shown: the cached rows are the
network's own features before its head (and of the mirrored crop); the cache
is reused only while its fingerprint matches, and a damaged file is computed
again; a cached run writes full checkpoints that score.py scores exactly as
the run validated them, resumes exactly, and learns as the uncached run does;
a scikit-learn head is the classifier scikit-learn fits, folded exactly into
the FullyConnected.
"""
import glob
import json
import logging
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from common import checkpoint, records, transforms
from common.fsutil import file_digest
from common.infer import model as infer_model
from common.train import featurecache, heads, linear
from tests import trainkit
from tests.test_train import (FINETUNE_EPOCHS, LEARN, REPEATABLE, Run, _pretrained_args, data_dir,  # noqa: F401
                              load, pretrained, run_script, train)

SCORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "score.py")


def cached_train(data_dir, prefix, pretrained, cache, *extra, epochs=FINETUNE_EPOCHS):
    return train(data_dir, prefix, "--mode", "last-layer", *LEARN, *_pretrained_args(pretrained),
                 "--feature-cache", str(cache), *extra, epochs=epochs)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def cached_run(data_dir, pretrained, cache_dir, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("cached") / "run"
    return Run(prefix, cached_train(data_dir, prefix, pretrained, cache_dir, "--cache-features",
                                    "--cache-mirror"), FINETUNE_EPOCHS)


def cache_files(cache_dir, role):
    return sorted(glob.glob(os.path.join(str(cache_dir), f"{role}-{'[0-9a-f]' * 20}.npy")))


def dataset(data_dir):
    return records.load_dataset(str(data_dir), "caltech256")


def flatten0(prefix, epoch, record_set, mirror=False):
    """The checkpoint's own flatten0 output for every record (validation crop, maybe mirrored)."""
    model = infer_model.load_model(prefix, epoch, trainkit.IMAGE_SHAPE, [mx.cpu()], 8)
    internals = model.module.symbol.get_internals()
    _, args, aux = checkpoint.load_checkpoint(prefix, epoch)
    cut = infer_model.bind_module(internals["flatten0_output"], args, aux, [mx.cpu()], 8, trainkit.IMAGE_SHAPE)
    rows = []
    for batch in transforms.record_iter(record_set, image_shape=trainkit.IMAGE_SHAPE, batch_size=8, train=False,
                                        threads=1):
        data = batch.data[0][:, :, :, ::-1] if mirror else batch.data[0]
        cut.forward(mx.io.DataBatch(data=[data]), is_train=False)
        rows.append(cut.get_outputs()[0].asnumpy())
    return np.concatenate(rows)[:len(record_set)]


# --- what is cached -------------------------------------------------------------------------

def test_cached_rows_are_the_networks_own_features_and_mirrors(cached_run, cache_dir, data_dir):
    data = dataset(data_dir)
    (train_npy,), (val_npy,), (mirror_npy,) = (cache_files(cache_dir, r) for r in ("train", "val", "train-mirror"))
    for npy, record_set, mirror in ((train_npy, data.train, False), (val_npy, data.val, False),
                                    (mirror_npy, data.train, True)):
        want = flatten0(cached_run.prefix, FINETUNE_EPOCHS, record_set, mirror)
        np.testing.assert_allclose(np.load(npy), want, rtol=1e-5, atol=1e-5, err_msg=npy)
    assert not np.allclose(np.load(train_npy), np.load(mirror_npy))  # the mirror is another crop
    described = json.load(open(val_npy[:-4] + ".json"))
    assert described["fingerprint"]["rec_sha256"] == file_digest(data.val.rec)


def test_every_fingerprint_field_changes_the_file_name(tmp_path, data_dir):
    backbone = {"version": 1, "symbol_sha256": "a", "params_sha256": "b", "layer": "flatten0",
                "image_shape": [3, 16, 16], "dtype": "float32", "pipeline": "p"}
    base = dict(backbone, rec="/x.rec", rec_sha256="c", idx_sha256="d", records=10, mirror=False)
    # These are the fields a set's fingerprint has.
    assert set(featurecache.set_fingerprint(backbone, dataset(data_dir).train, False)) == set(base)
    name = featurecache.cache_paths(str(tmp_path), "train", base)[0]
    for key, other in (("symbol_sha256", "z"), ("params_sha256", "z"), ("layer", "pool1"), ("image_shape", [3, 8, 8]),
                       ("dtype", "float16"), ("pipeline", "q"), ("rec_sha256", "z"), ("idx_sha256", "z"),
                       ("records", 11), ("mirror", True), ("version", 2)):
        assert featurecache.cache_paths(str(tmp_path), "train", dict(base, **{key: other}))[0] != name, key
    # The same bytes under another path are the same rows.
    assert featurecache.cache_paths(str(tmp_path), "train", dict(base, rec="/elsewhere/x.rec"))[0] == name


def test_the_cache_is_reused_and_a_damaged_file_is_computed_again(cached_run, data_dir, pretrained, cache_dir,
                                                                  tmp_path, monkeypatch, caplog):
    computed = []
    real = featurecache.compute_rows
    monkeypatch.setattr(featurecache, "compute_rows", lambda *a, **k: computed.append(k["desc"]) or real(*a, **k))
    cached_train(data_dir, tmp_path / "again", pretrained, cache_dir, "--cache-features", "--cache-mirror",
                 epochs=1)
    assert computed == []  # every set came from the cache
    (val_npy,) = cache_files(cache_dir, "val")
    good = np.load(val_npy)
    damaged = good.copy()
    damaged[0, 0] += 1
    np.save(val_npy, damaged)
    with caplog.at_level(logging.WARNING):
        cached_train(data_dir, tmp_path / "damaged", pretrained, cache_dir, "--cache-features", epochs=1)
    assert [d for d in computed if "val" in d] and "does not match its description" in caplog.text
    np.testing.assert_array_equal(np.load(val_npy), good)  # written again, right


def test_another_backbone_gets_its_own_cache_and_another_head_does_not(data_dir, pretrained, cached_run,
                                                                        cache_dir, tmp_path):
    before = set(cache_files(cache_dir, "train"))
    # The cached run's checkpoint: the same backbone under another head (cut away): the same rows.
    same = dict(pretrained, prefix=cached_run.prefix, epoch=FINETUNE_EPOCHS)
    cached_train(data_dir, tmp_path / "same", same, cache_dir, "--cache-features", epochs=1)
    assert set(cache_files(cache_dir, "train")) == before
    # The pretraining's epoch before: the same symbol, other backbone weights.
    other = dict(pretrained, epoch=pretrained["epoch"] - 1)
    cached_train(data_dir, tmp_path / "other", other, cache_dir, "--cache-features", epochs=1)
    assert len(set(cache_files(cache_dir, "train")) - before) == 1


def test_every_kfold_fold_reads_the_training_sets_cache(data_dir, pretrained, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cached_train(data_dir, tmp_path / "whole", pretrained, cache, "--cache-features", epochs=1)
    (whole_npy,), val_files = cache_files(cache, "train"), cache_files(cache, "val")
    computed, seen = [], []
    real_compute, real_epoch_rows = featurecache.compute_rows, heads.epoch_rows
    monkeypatch.setattr(featurecache, "compute_rows", lambda *a, **k: computed.append(k["desc"]) or real_compute(*a, **k))
    monkeypatch.setattr(heads, "epoch_rows", lambda features, *a, **k: seen.append(features.train) or
                        real_epoch_rows(features, *a, **k))
    stdout = cached_train(data_dir, tmp_path / "kfold", pretrained, cache, "--cache-features", "--kfold", "2",
                          epochs=1)
    assert "folds=2" in stdout
    # Neither fold computed features or cached new ones: both took the whole training set's rows.
    assert computed == [] and cache_files(cache, "train") == [whole_npy] and cache_files(cache, "val") == val_files
    whole = np.load(whole_npy)
    folds = json.load(open(f"{tmp_path / 'kfold'}-kfold.json"))["folds"]
    assert [len(rows) for rows in seen] == [fold["train_images"] for fold in folds]
    for rows in seen:  # the fold's records' rows of the whole set, each once
        matches = [np.flatnonzero((whole == row).all(1)) for row in rows]
        assert all(len(m) >= 1 for m in matches) and len({int(m[0]) for m in matches}) == len(rows)


# --- a cached run ------------------------------------------------------------------------------

def test_a_cached_run_writes_full_checkpoints_that_score_py_scores_as_validated(cached_run, pretrained,
                                                                                 data_dir, tmp_path):
    args, aux = load(cached_run.prefix, FINETUNE_EPOCHS)
    pre_args, pre_aux = load(pretrained["prefix"], pretrained["epoch"])
    for name in set(args) - {"fc_new_weight", "fc_new_bias"}:
        np.testing.assert_array_equal(args[name], pre_args[name], err_msg=name)  # the backbone as pretrained
    for name in aux:
        np.testing.assert_array_equal(aux[name], pre_aux[name], err_msg=name)
    last = cached_run.records[-1]
    result = subprocess.run([sys.executable, SCORE, "--model-prefix", cached_run.prefix, "--epoch",
                             str(FINETUNE_EPOCHS), "--data-val", os.path.join(data_dir, "caltech256-val.rec"),
                             "--top-k", "2", "--cpus", "1", "--out-dir", str(tmp_path / "score")],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 0, result.stderr
    score = json.load(open(tmp_path / "score" / "score.json"))
    assert score["acc"] == pytest.approx(last["val_acc"], abs=1e-6)
    assert score["loss"] == pytest.approx(last["val_loss"], abs=1e-4)
    assert cached_run.final["acc"] >= 0.9


def test_a_cached_run_learns_as_the_uncached_one(cached_run, data_dir, pretrained, tmp_path):
    uncached = Run(tmp_path / "uncached", train(data_dir, tmp_path / "uncached", "--mode", "last-layer", *LEARN,
                                                *_pretrained_args(pretrained), epochs=FINETUNE_EPOCHS),
                   FINETUNE_EPOCHS)
    assert abs(cached_run.final["acc"] - uncached.final["acc"]) <= 0.1
    # Same network file: only how the head got its weights differs.
    assert open(f"{cached_run.prefix}-symbol.json").read() == open(f"{uncached.prefix}-symbol.json").read()


def test_a_cached_run_resumes_exactly(data_dir, pretrained, tmp_path):
    common = ["--mode", "last-layer", *LEARN, *_pretrained_args(pretrained), "--cache-features", "--cache-mirror",
              "--feature-cache", tmp_path / "cache"]
    for prefix, epochs in (("whole", 3), ("split", 2), ("split", 3)):
        result = run_script(trainkit.train_args(data_dir, tmp_path / prefix, *common, epochs=epochs), tmp_path,
                            env=REPEATABLE)
        assert result.returncode == 0, result.stderr
    assert "resumed from checkpoint" in result.stderr
    trainkit.assert_same_run(tmp_path / "split", tmp_path / "whole", 3)


def test_cached_and_uncached_runs_are_different_runs(cached_run, data_dir, pretrained, tmp_path):
    result = run_script(trainkit.train_args(data_dir, cached_run.prefix, "--mode", "last-layer",
                                            *_pretrained_args(pretrained), epochs=FINETUNE_EPOCHS + 1), tmp_path)
    assert result.returncode == 1 and "last-layer, cached features with mirrors" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_epoch_rows_mix_plain_and_mirrored_rows_by_seed():
    plain, mirror = np.arange(40.0).reshape(20, 2), -np.arange(40.0).reshape(20, 2)
    labels = np.arange(20) % 4
    features = featurecache.Features(plain, plain[:4], mirror)
    rows, got = heads.epoch_rows(features, labels, seed=3)
    order = (np.abs(rows[:, 0]) / 2).astype(int)
    assert sorted(order) == list(range(20)) and np.array_equal(got, labels[order])
    flipped = rows[:, 1] < 0
    assert 0 < flipped.sum() < 20  # some of each
    again, _ = heads.epoch_rows(features, labels, seed=3)
    assert np.array_equal(rows, again) and not np.array_equal(rows, heads.epoch_rows(features, labels, seed=4)[0])


def test_cache_option_misuse_is_one_line(data_dir, pretrained, tmp_path):
    cases = [(["--mode", "full", "--cache-features"], "--cache-features needs a frozen backbone: --mode last-layer"),
             (["--mode", "last-layer", "--cache-mirror"], "--cache-mirror applies with --cache-features only"),
             (["--mode", "full", "--head", "svm"], "--head svm fits a classifier on a frozen backbone's features"),
             (["--mode", "last-layer", "--cache-features", "--kv-store", "dist_sync"], "use --kv-store device or local"),
             (["--mode", "last-layer", "--head", "tree"], "invalid choice: 'tree'")]
    for extra, words in cases:
        result = run_script(trainkit.train_args(data_dir, tmp_path / "run", *extra, *_pretrained_args(pretrained)),
                            tmp_path)
        assert result.returncode in (1, 2) and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- scikit-learn heads ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["logistic", "svm"])
def test_a_linear_head_is_the_classifier_scikit_learn_fits(kind, data_dir, pretrained, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    prefix = tmp_path / kind
    cache_dir = tmp_path / "cache"
    run = Run(prefix, cached_train(data_dir, prefix, pretrained, cache_dir, "--head", kind), 1)
    record = run.records[0]
    assert record["head"] == kind and record["C"] in linear.C_GRID and len(record["cv_acc"]) == len(linear.C_GRID)
    data = dataset(data_dir)
    (train_npy,), (val_npy,) = (cache_files(cache_dir, r) for r in ("train", "val"))
    x, xv = np.load(train_npy), np.load(val_npy)
    mu, sigma = x.mean(0), np.where(x.std(0) > 1e-12, x.std(0), 1)
    estimator = (LogisticRegression(C=record["C"], max_iter=2000, random_state=0) if kind == "logistic"
                 else LinearSVC(C=record["C"], max_iter=2000, random_state=0)).fit((x - mu) / sigma, data.train.labels)
    expected = (estimator.predict_proba((xv - mu) / sigma) if kind == "logistic"
                else estimator.decision_function((xv - mu) / sigma))
    args, _ = load(prefix, 1)
    scores = xv @ args["fc_new_weight"].T + args["fc_new_bias"]
    if kind == "logistic":
        got = np.exp(scores - scores.max(1, keepdims=True))
        np.testing.assert_allclose(got / got.sum(1, keepdims=True), expected, atol=1e-4)
    else:
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert run.final["acc"] == pytest.approx(record["val_acc"], abs=1e-4)


def test_a_binary_classifier_folds_into_two_rows():
    coef, intercept = np.array([[2.0, -1.0]]), np.array([0.5])
    mu, sigma = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    weight, bias = linear.fold_affine(coef, intercept, mu, sigma, 2)
    x = np.array([[3.0, 1.0], [0.0, 5.0]])
    z = ((x - mu) / sigma) @ coef[0] + intercept[0]
    scores = x @ weight.T + bias
    softmax = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-6)
