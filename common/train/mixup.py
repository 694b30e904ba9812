"""--mixup ALPHA: training batches mixed with a permutation of themselves (Zhang et al. 2018).

Each training batch draws lambda ~ Beta(ALPHA, ALPHA) and a permutation p of its
rows; the network trains on lambda * x + (1 - lambda) * x[p] against the soft label
lambda * onehot(y) + (1 - lambda) * onehot(y[p]). The training Module is bound with a
(batch, classes) label: MXNet 1.9.1's SoftmaxOutput takes a label of its output's
shape as probabilities and its gradient is then p - label (checked on this machine,
tests/test_mixup.py). The symbol is the plain one, so the checkpoint, validation,
score.py and predict.py are exactly as without mixup.

SoftmaxOutput's smooth_alpha does not apply to such a label (measured: the gradient is
p - label whatever smooth_alpha says), so --label-smoothing A is applied here: each
class's target q becomes q (1 - A) + (1 - q) A / (classes - 1), which for a one-hot q
is exactly smooth_alpha's target.

The draw of batch B of epoch E depends on (seed, E, B, rank) alone, so a run resumed
mid-epoch mixes the rest of the epoch as an unbroken run does. The training accuracy
and loss are measured against each batch's dominant label (y where lambda >= 0.5,
else y[p]): a mixed image has no single true class.
Cached features (--cache-features, --head) are refused: mixing the backbone's features
is not mixing the images (the backbone is not linear), so it would be another method.
"""
import logging

import numpy as np

from ..cli import UserError, float_range

log = logging.getLogger(__name__)


def add_mixup_args(group):
    group.add_argument("--mixup", metavar="ALPHA", type=float_range(0), default=0.0,
                       help="mix each training batch with a permutation of itself, lambda ~ Beta(ALPHA, ALPHA), "
                            "against soft labels; ALPHA >= 0, 0 = off. Training accuracy/loss are then against "
                            "the dominant label; validation and checkpoints are unchanged")


def check_mixup_args(alpha, *, cache):
    """UserError (one line) for --mixup with cached features (see the module docstring)."""
    if alpha and cache:
        raise UserError(f"--mixup {alpha:g} mixes training images, which --cache-features (or a scikit-learn "
                        f"--head) replaces by their backbone features computed once: give one or the other")


class Mixup:
    """Mixes training batches; alpha: Beta's parameter (> 0); num_classes; smoothing: the
    label smoothing to apply to the soft label; seed and rank: what the draws depend on."""

    def __init__(self, alpha, num_classes, *, smoothing=0.0, seed=0, rank=0):
        self.alpha, self.num_classes, self.smoothing = alpha, num_classes, smoothing
        self.seed, self.rank = seed, rank
        log.info("--mixup %g: training accuracy and loss are against each mixed image's dominant label "
                 "(lambda >= 0.5), not its soft target%s", alpha,
                 f"; label smoothing {smoothing:g} applied to the soft label" if smoothing else "")

    def draw(self, epoch, nbatch, size):
        """(lambda, permutation of range(size)) of batch `nbatch` (0-based) of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, nbatch, self.rank])
        return float(rng.beta(self.alpha, self.alpha)), rng.permutation(size)

    def __call__(self, batch, epoch, nbatch):
        """(the mixed DataBatch with (N, classes) soft labels, [the (N,) dominant labels])."""
        import mxnet as mx
        data, labels = batch.data[0], batch.label[0]
        lam, perm = self.draw(epoch, nbatch, data.shape[0])
        index = mx.nd.array(perm, ctx=data.context, dtype="int64")
        mixed = data * lam + data.take(index) * (1 - lam)
        hot = mx.nd.one_hot(labels, self.num_classes)
        soft = soft_label(hot * lam + hot.take(index) * (1 - lam), self.smoothing, self.num_classes)
        dominant = labels if lam >= 0.5 else labels.take(index)
        return mx.io.DataBatch(data=[mixed], label=[soft], pad=batch.pad, index=batch.index), [dominant]


def soft_label(q, smoothing, num_classes):
    """(N, C) soft labels q smoothed as SoftmaxOutput smooth_alpha smooths one-hot ones."""
    if not smoothing:
        return q
    return q * (1 - smoothing) + (1 - q) * (smoothing / (num_classes - 1))


class Unlabelled:
    """A Module bound for (N, classes) labels, seen by evaluation as one that takes (N,) labels:
    forward drops the batch's labels (SoftmaxOutput's inference output does not read them)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def forward(self, batch, is_train=None):
        import mxnet as mx
        self._module.forward(mx.io.DataBatch(data=batch.data, label=None, pad=batch.pad), is_train=is_train)
