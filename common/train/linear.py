"""Linear classifiers from scikit-learn on cached features, folded into the new FullyConnected.

train_caltech.py --mode last-layer --head logistic|svm fits, on the cached
training features (common.train.featurecache), a multinomial logistic
regression or a one-vs-rest linear SVM, on standardized features, with its
regularization C chosen by stratified cross-validation on the training set
alone. The standardization and the classifier are one affine map, so they
fold exactly into the head's FullyConnected:

    W' = W / sigma,   b' = b - W' @ mu

and the result is an ordinary checkpoint (epoch 1) that score.py and
predict.py load. For logistic regression the network's softmax is then
exactly predict_proba; for the SVM it is a softmax of the decision values:
the ranking (top-1, top-k) is the SVM's, the probabilities are not calibrated.
"""
import logging
import pickle
import time
import types

import numpy as np

from ..cli import UserError

log = logging.getLogger(__name__)

HEADS = ("fc", "logistic", "svm")  # fc: the FullyConnected trained by SGD (every mode)
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)  # on standardized features; smaller C, stronger regularization
CV_FOLDS = 5
MAX_ITER = 2000


def add_linear_args(group):
    group.add_argument("--head", choices=HEADS, default="fc",
                       help="what is trained on the frozen backbone: the FullyConnected by SGD, or "
                            "scikit-learn's logistic regression / linear SVM on cached features (C by "
                            "cross-validation on the training set), folded into the FullyConnected")


def check_linear_args(head, mode):
    if head != "fc" and mode != "last-layer":
        raise UserError(f"--head {head} fits a classifier on a frozen backbone's features: --mode last-layer "
                        f"(--mode {mode} was given)")


def _estimator(kind, c, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    if kind == "logistic":
        return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    return LinearSVC(C=c, max_iter=MAX_ITER, random_state=seed)


def choose_c(kind, rows, labels, seed):
    """(the C of C_GRID with the best mean cross-validated accuracy, {C: that accuracy}).

    Stratified folds (at most CV_FOLDS, at least 2; no more than the smallest
    class has images), shuffled with `seed`. A class of one image allows no
    cross-validation: C = 1 then, with a warning.
    """
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    if smallest < 2:
        log.warning("--head %s: a class has a single training image, so C cannot be cross-validated: "
                    "C = 1", kind)
        return 1.0, {}
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, smallest), shuffle=True, random_state=seed)
    scores = {}
    for c in C_GRID:
        tic = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported once, for the final fit
            scores[c] = float(np.mean(cross_val_score(_estimator(kind, c, seed), rows, labels, cv=folds)))
        log.info("--head %s: C=%g cross-validated accuracy %.4f (%d folds, %.1f s)", kind, c, scores[c],
                 folds.get_n_splits(), time.time() - tic)
    best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularization
    return best, scores


def standardization(rows):
    """(mu, sigma) per feature; a constant feature gets sigma 1 (it carries nothing)."""
    mu = rows.mean(axis=0)
    sigma = rows.std(axis=0)
    return mu, np.where(sigma > 1e-12, sigma, 1.0)


def fold_affine(coef, intercept, mu, sigma, num_classes):
    """(W (C, D), b (C,)) float32 of the head that computes the classifier on raw features.

    Binary classifiers give one score z for the second class: [-z/2, z/2] has the
    same argmax and, under a softmax, sigmoid(z), as logistic regression says.
    """
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    if coef.shape[0] == 1 and num_classes == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = coef / sigma
    return weight.astype(np.float32), (intercept - weight @ mu).astype(np.float32)


def fit_head(kind, rows, labels, *, num_classes, seed, extra_rows=None):
    """(W, b, report) of a `kind` classifier on rows (N, D) with labels (N,).

    extra_rows: more rows with the same labels (the mirrored crops), used in the
    final fit only, so that no image and its mirror sit on both sides of a fold.
    """
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise UserError(f"--head {kind}: class {missing[0]} has no training image ({len(missing)} such "
                        f"classes): a linear classifier cannot score it; use --head fc")
    mu, sigma = standardization(rows)
    c, scores = choose_c(kind, (rows - mu) / sigma, labels, seed)
    if extra_rows is not None:
        rows, labels = np.concatenate([rows, extra_rows]), np.concatenate([labels, labels])
    tic = time.time()
    estimator = _estimator(kind, c, seed).fit((rows - mu) / sigma, labels)
    weight, bias = fold_affine(estimator.coef_, estimator.intercept_, mu, sigma, num_classes)
    log.info("--head %s: C=%g fitted on %d rows x %d features in %.1f s", kind, c, len(rows), rows.shape[1],
             time.time() - tic)
    return weight, bias, {"head": kind, "C": c, "cv_acc": {f"{k:g}": v for k, v in scores.items()},
                          "iterations": int(np.max(estimator.n_iter_))}


class FittedHead:
    """What the epoch-end callbacks read of a module, for a head that was fitted, not trained:
    the full symbol, no updates, an empty optimizer state (the pickle Module would write)."""

    def __init__(self, symbol):
        self.symbol = symbol
        self._optimizer = types.SimpleNamespace(num_update=0)

    @staticmethod
    def save_optimizer_states(path):
        with open(path, "wb") as f:
            f.write(pickle.dumps({}))
