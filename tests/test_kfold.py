"""K-fold ensembles (train_caltech.py --kfold K, common/train/kfold.py).

One module-scoped run trains a 2-fold ensemble of ResNet-20 from scratch on
trainkit's 4 generated classes (8 training images each: 16 per fold model, 2
epochs). The checks: the folds are stratified, disjoint, cover the training set,
follow the seed and are on disk; each fold model trained on exactly the other
fold; the ensemble is scored (score.py agrees) and reported beside the fold
models' mean in the last line; a rerun retrains nothing that finished.
"""
import contextlib
import io
import json
import logging
import os
import re

import numpy as np
import pytest

import score
import train_caltech
from common import cli, records
from common.fsutil import file_digest
from common.prep.imagefolder import read_lst
from common.train import kfold
from tests import trainkit

K = 2
FINAL = re.compile(r"final: val_acc=(\d\.\d{4}) top2=(\d\.\d{4}) mean_class_acc=(\d\.\d{4}) folds=2 "
                   r"fold_val_acc=(\d\.\d{4})$")


def train(argv):
    """train_caltech.main in this process; returns its stdout (the run's log file detached)."""
    handlers = list(logging.getLogger().handlers)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            train_caltech.main(argv)
    finally:
        for handler in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    return out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold")
    data_dir = trainkit.prepare_dataset(str(root))
    prefix = str(root / "model" / "net")
    argv = trainkit.train_args(data_dir, prefix, "--mode", "scratch", "--lr", "0.1", "--kfold", str(K))
    stdout = train(argv)
    summary = json.loads(open(f"{prefix}-kfold.json").read())
    train_set = records.check_record_set(os.path.join(data_dir, "caltech256-train.rec"), 4)
    return dict(root=root, data_dir=data_dir, prefix=prefix, argv=argv, stdout=stdout, summary=summary,
                train=train_set, val_rec=os.path.join(data_dir, "caltech256-val.rec"))


def test_folds_are_stratified_disjoint_covering_and_seeded():
    labels = np.repeat(np.arange(3), [7, 5, 9])
    keys = np.arange(100, 121)
    folds = kfold.assign_folds(keys, labels, 3, seed=0)
    assert sorted(np.bincount(folds)) == [7, 7, 7]  # one fold per record: disjoint and covering
    for label in range(3):
        per_fold = np.bincount(folds[labels == label], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1  # stratified
    assert np.array_equal(kfold.assign_folds(keys, labels, 3, seed=0), folds)
    assert not np.array_equal(kfold.assign_folds(keys, labels, 3, seed=1), folds)
    with pytest.raises(cli.UserError, match=r"--kfold 6: class 'b' \(label 1\) has 5 training images, .*"
                                            r"valid: --kfold 2\.\.5"):
        kfold.check_class_sizes(labels, ["a", "b", "c"], 6)


def test_the_fold_lists_on_disk_split_the_training_list(run):
    rows = read_lst(os.path.join(run["data_dir"], "caltech256-train.lst"))
    folds = [read_lst(f"{run['prefix']}-folds/fold{k}.lst") for k in range(K)]
    assert sorted(r for fold in folds for r in fold) == sorted(rows)  # disjoint, covering, same paths
    for fold in folds:
        assert np.bincount([int(label) for _, label, _ in fold]).tolist() == [4, 4, 4, 4]
    for k, entry in enumerate(run["summary"]["folds"]):
        assert entry["heldout_lst_sha256"] == file_digest(f"{run['prefix']}-folds/fold{k}.lst")
    assert run["summary"]["seed"] == 0 and run["summary"]["k"] == K


def test_each_fold_model_trained_on_the_other_folds_only(run):
    all_keys = set(records.read_keys(run["train"].idx))
    for k in range(K):
        recorded = json.loads(open(f"{run['prefix']}-fold{k}-args.json").read())
        trained = set(records.read_keys(recorded["data_train"][:-4] + ".idx"))
        held = set(records.read_keys(f"{run['prefix']}-folds/fold{k}.idx"))
        assert trained.isdisjoint(held) and trained | held == all_keys
        assert recorded["num_examples"] == len(trained) == 16 and recorded["fold"] == {"index": k, "k": K, "seed": 0}


def test_the_last_line_gives_the_ensemble_beside_the_fold_mean(run, entry_state):
    summary = run["summary"]
    acc, top2, mean_class, fold_mean = FINAL.match(run["stdout"].splitlines()[-1]).groups()
    ens = summary["ensemble"]
    assert (acc, top2, mean_class) == (f"{ens['acc']:.4f}", f"{ens['top2']:.4f}", f"{ens['mean_class_acc']:.4f}")
    vals = [f["val"]["acc"] for f in summary["folds"]]
    assert fold_mean == f"{np.mean(vals):.4f}"
    # The fold models are ordinary checkpoints: score.py scores the same ensemble and the held-out folds
    pairs = [a for f in summary["folds"] for a in ("--model-prefix", f["model_prefix"], "--epoch", str(f["epoch"]))]
    report = score.main(pairs + ["--data-val", run["val_rec"], "--top-k", "2"])
    assert report["acc"] == ens["acc"] and [m["acc"] for m in report["members"]] == vals
    held = score.main(pairs[:4] + ["--data-val", f"{run['prefix']}-folds/fold0.rec", "--top-k", "2"])
    assert held["acc"] == summary["folds"][0]["heldout"]["acc"] and held["images"] == 16
    metrics = trainkit.metrics(f"{run['prefix']}-fold0")
    assert round(vals[0], 6) == metrics[-1]["val_acc"]  # the figures training's validation gave


def test_a_rerun_retrains_only_what_had_not_finished(run):
    fold0 = trainkit.manifests(f"{run['prefix']}-fold0")
    fold1 = f"{run['prefix']}-fold1"
    epoch1 = trainkit.manifests(fold1)[1]
    for path in (f"{fold1}-0002.manifest.json", f"{fold1}-0002.params", f"{fold1}-0002.states"):
        os.remove(path)  # as if killed while fold 1 trained its second epoch
    stdout = train(run["argv"])
    assert trainkit.manifests(f"{run['prefix']}-fold0") == fold0  # fold 0 was not trained again
    after = trainkit.manifests(fold1)
    assert after[1] == epoch1 and 2 in after  # fold 1 continued after its epoch 1
    assert FINAL.match(stdout.splitlines()[-1])


@pytest.mark.parametrize("extra,expected", [
    (["--kv-store", "dist_sync"], "--kfold trains its folds one after another in one process; --kv-store "
                                  "dist_sync is not supported with it: valid with --kfold: device, local"),
    (["--kfold", "9"], "--kfold 9: class "),
])
def test_what_kfold_cannot_do_is_one_line(run, tmp_path, capsys, entry_state, extra, expected):
    argv = trainkit.train_args(run["data_dir"], str(tmp_path / "m"), "--kfold", str(K), *extra)
    assert cli.run_entry(train_caltech.main, "train_caltech.py", argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"train_caltech.py: error: {expected}"), lines
    assert not (tmp_path / "m-folds").exists()
