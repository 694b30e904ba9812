"""K-fold ensembles (train_caltech.py --kfold K): K models, each holding one fold out, averaged.

The training set is split into K class-stratified folds by a keyed shuffle (the
SHA-256 of seed, label and record id orders each class; its images are then
dealt to the folds in turn, each class starting where the one before stopped),
so the same set and --kfold-seed give the same folds on any machine. Under
PREFIX-folds/ (PREFIX: the run's --model-prefix) each fold k gets

  foldK.lst/.rec/.idx                the held-out fold (im2rec's .lst, records copied byte for byte)
  train-without-foldK.lst/.rec/.idx  the K-1 other folds, which model PREFIX-foldK trains on
  classes.txt                        the class list, so these sets check like prepare_data.sh's

(K-1 copies of the training set on disk in all). Each fold is an ordinary run
under PREFIX-foldK (checkpoints score.py and predict.py load); its run identity
holds the fold, K and the seed, so a rerun of the same command skips the folds
that finished and resumes the one that did not. Then every fold model is scored
on its held-out fold and, with the ensemble (common.infer.ensemble), on the
validation set. PREFIX-kfold.json records it all.
"""
import argparse
import datetime
import hashlib
import logging
import os
import shutil

import numpy as np

from .. import checkpoint, devices, records
from ..cli import UserError, int_at_least, nonnegative_int, software_versions
from ..fsutil import file_digest, write_json_atomic, write_text_atomic
from ..infer import ensemble
from ..prep.imagefolder import read_lst

log = logging.getLogger(__name__)


def add_kfold_args(parser):
    """--kfold and --kfold-seed (train_caltech.py)."""
    group = parser.add_argument_group("k-fold ensemble")
    group.add_argument("--kfold", metavar="K", type=int_at_least(2),
                       help="train K models, each on all but one of K class-stratified folds of the training "
                            "set, and score their ensemble (every class needs K training images)")
    group.add_argument("--kfold-seed", metavar="S", type=nonnegative_int, default=0,
                       help="the seed of the fold split")
    parser.set_defaults(fold=None)  # a fold's run: {"index", "k", "seed"}, part of its identity
    return group


def assign_folds(keys, labels, k, seed):
    """(N,) int fold of each record: per class (in label order) the records ordered by the
    SHA-256 of (seed, label, key), dealt to folds in turn, each class starting at the
    fold after the previous class's last one (so fold sizes differ by at most one)."""
    folds = np.empty(len(keys), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = sorted(members, key=lambda i: hashlib.sha256(f"{seed}\0{label}\0{keys[i]}".encode()).digest())
        folds[order] = (start + np.arange(len(order))) % k
        start = (start + len(order)) % k
    return folds


def check_class_sizes(labels, classes, k):
    """UserError unless every class has at least k training images."""
    counts = np.bincount(labels, minlength=len(classes))
    small = int(np.argmin(counts))
    if counts[small] < k:
        valid = f"valid: --kfold 2..{counts[small]}" if counts[small] >= 2 else "no --kfold fits this set"
        raise UserError(f"--kfold {k}: class {classes[small]!r} (label {small}) has {counts[small]} training "
                        f"images, fewer than the {k} folds (every fold holds one of each class out); {valid}")


def write_folds(train, classes_file, k, seed, folder):
    """Write each fold's held-out set and training set under `folder` (see the module
    docstring); returns [(held-out RecordSet, training RecordSet)] by fold.

    A set whose .lst is already there with the same lines is kept: the .lst is written
    last, after its .rec and .idx, so it vouches for them.
    """
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(classes_file, os.path.join(folder, "classes.txt"))
    keys = records.read_keys(train.idx)
    folds = assign_folds(keys, train.labels, k, seed)
    listed = os.path.splitext(train.rec)[0] + ".lst"
    paths = {index: rel for index, _, rel in read_lst(listed)} if os.path.isfile(listed) else {}
    sets = []
    for fold in range(k):
        held, rest = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        sets.append(tuple(_write_set(train, positions, keys, paths, os.path.join(folder, name))
                          for positions, name in ((held, f"fold{fold}"), (rest, f"train-without-fold{fold}"))))
    return sets


def _write_set(train, positions, keys, paths, stem):
    lst = "".join(f"{keys[p]}\t{float(train.labels[p]):f}\t{paths.get(int(keys[p]), f'record-{keys[p]}')}\n"
                  for p in positions)
    done = os.path.isfile(stem + ".lst") and open(stem + ".lst", encoding="utf-8").read() == lst
    if done and os.path.isfile(stem + ".rec") and os.path.isfile(stem + ".idx"):
        return records.subset_record_set(train, positions, stem)
    if os.path.exists(stem + ".lst"):
        os.remove(stem + ".lst")
    subset = records.write_subset(train, positions, stem)
    write_text_atomic(stem + ".lst", lst)
    return subset


def check_args(args):
    """UserError for options --kfold cannot honour."""
    if args.kv_store.startswith("dist"):
        raise UserError(f"--kfold trains its folds one after another in one process; --kv-store {args.kv_store} "
                        f"is not supported with it: valid with --kfold: device, local")
    if args.load_epoch:
        raise UserError(f"--load-epoch {args.load_epoch} with --kfold: each fold resumes by itself when the "
                        f"same command is run again; drop --load-epoch")


def run(args, dataset, train, *, contexts, batch_size):
    """Train the K fold models with train(fold_args, fold_dataset) (one ordinary run:
    its last validation figures), score them and their ensemble.

    args: train_caltech.py's options (args.kfold = K); dataset: the checked
    records.Dataset. Returns (the ensemble's validation figures, the mean of the fold
    models' validation accuracies).
    """
    check_args(args)
    k, seed = args.kfold, args.kfold_seed
    check_class_sizes(dataset.train.labels, dataset.classes, k)
    prefix = args.model_prefix or os.path.join("model", f"{args.prefix}-{args.network}-{args.mode}-kfold{k}")
    sets = write_folds(dataset.train, dataset.classes_file, k, seed, f"{prefix}-folds")
    folds = []
    for index, (held, rest) in enumerate(sets):
        devices.check_batch_fits(batch_size, len(rest), len(contexts))
        fold_args = argparse.Namespace(**dict(vars(args), model_prefix=f"{prefix}-fold{index}",
                                              fold={"index": index, "k": k, "seed": seed}))
        log.info("fold %d of %d: training %s on %d images, %d held out", index + 1, k,
                 fold_args.model_prefix, len(rest), len(held))
        val = train(fold_args, records.Dataset(rest, dataset.val, dataset.classes, dataset.classes_file))
        folds.append(_fold_summary(index, fold_args.model_prefix, held, rest, val))
    members = ensemble.plan([(f["model_prefix"], f["epoch"]) for f in folds], image_shape=args.image_shape)
    score = lambda members, data: ensemble.score_members(  # noqa: E731
        members, data, contexts=contexts, batch_size=batch_size, threads=args.data_nthreads, top_k=args.top_k)
    for fold, member, (held, _) in zip(folds, members, sets):
        fold["heldout"] = score([member], held).members[0].score.figures
        log.info("fold %d: held-out accuracy %.4f (%d images), validation %.4f", fold["fold"],
                 fold["heldout"]["acc"], len(held), fold["val"]["acc"])
    result = score(members, dataset.val)
    for fold, member in zip(folds, result.members):
        fold["val"] = member.score.figures  # the same figures as training's validation, exactly
    fold_val_acc = float(np.mean([f["val"]["acc"] for f in folds]))
    write_json_atomic(f"{prefix}-kfold.json", {
        "k": k, "seed": seed, "folds": folds, "ensemble": result.score.figures, "fold_val_acc": fold_val_acc,
        "data_train": os.path.abspath(dataset.train.rec), "data_val": os.path.abspath(dataset.val.rec),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": software_versions()})
    log.info("%d-fold ensemble: validation accuracy %.4f; the fold models' mean %.4f (%s)", k,
             result.score.figures["acc"], fold_val_acc, f"{prefix}-kfold.json")
    return result.score.figures, fold_val_acc


def _fold_summary(index, prefix, held, rest, val):
    """A fold's entry in PREFIX-kfold.json (its held-out figures are added after)."""
    epoch = max(checkpoint.committed_epochs(prefix))
    return {"fold": index, "model_prefix": prefix, "epoch": epoch, "train_images": len(rest),
            "heldout_images": len(held), "heldout_lst": os.path.splitext(held.rec)[0] + ".lst",
            "heldout_lst_sha256": file_digest(os.path.splitext(held.rec)[0] + ".lst"),
            "train_lst_sha256": file_digest(os.path.splitext(rest.rec)[0] + ".lst"), "val": val}
