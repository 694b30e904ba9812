"""Ensembles: the softmax of several checkpoints averaged, and every member scored beside it.

score.py with several --model-prefix/--epoch pairs, and train_caltech.py --kfold,
use this. The members must predict the same classes (their number, and their
names where a class list is known); each is scored with its own input shape (its
training run's PREFIX-args.json unless --image-shape says otherwise) by the one
exact evaluation of a set (common.evaluate.evaluate_set: every image once), and
with test-time views too when asked (common.infer.tta). The ensemble's
probabilities are the mean of the members', summed in float64.

Memory: one member is loaded at a time and dropped after its pass; besides it,
its own (N, C) probabilities and the running (N, C) float64 sums (plain and TTA)
are held, whatever the number of members.
"""
import dataclasses
import logging
import os
import time

import numpy as np

from .. import checkpoint, evaluate
from ..cli import UserError, mxnet_reason
from . import model as infer_model, settings, tta

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Member:
    """One checkpoint of an ensemble, checked: prefix, epoch, its input shape
    (settings.Setting of (C, H, W)), the classes it predicts, their names
    (settings.Setting; value None when no class list is known)."""
    prefix: str
    epoch: int
    shape: settings.Setting
    num_classes: int
    classes: settings.Setting

    def identity(self):
        """What the member is, as score.json records it (absolute path)."""
        return {"model_prefix": os.path.abspath(self.prefix), "epoch": self.epoch,
                "image_shape": list(self.shape.value)}


def pair_checkpoints(prefixes, epochs):
    """[(prefix, epoch)]: the i-th --epoch belongs to the i-th --model-prefix (UserError unless
    there are as many of each)."""
    if len(prefixes) != len(epochs):
        raise UserError(f"{len(prefixes)} --model-prefix ({', '.join(prefixes)}) but {len(epochs)} --epoch "
                        f"({', '.join(map(str, epochs))}): give each --model-prefix its own --epoch, in the "
                        f"same order (--model-prefix A --epoch 3 --model-prefix B --epoch 5)")
    return list(zip(prefixes, epochs))


def plan(pairs, *, image_shape=None, classes_file=None):
    """The checked Members of [(prefix, epoch)], before any is run.

    image_shape: --image-shape for every member (None: each its training run's);
    classes_file: --classes for every member. Raises UserError (MissingFile) naming
    the member whose checkpoint is missing, and for members of other classes.
    Only the symbols are read here; load_model verifies the parameters later.
    """
    members = [_member(prefix, epoch, image_shape, classes_file) for prefix, epoch in pairs]
    check_same_classes(members)
    seen = set()
    for member in members:
        key = (os.path.abspath(member.prefix), member.epoch)
        if key in seen:
            log.warning("%s epoch %d is in the ensemble more than once: it weighs that much more",
                        member.prefix, member.epoch)
        seen.add(key)
    return members


def _member(prefix, epoch, image_shape, classes_file):
    import mxnet as mx
    checkpoint.require_checkpoint(prefix, epoch, verify=False, note=infer_model.ZOO_NOTE)
    shape = settings.resolve_image_shape(image_shape, settings.recorded_args(prefix))
    try:
        symbol = mx.sym.load(checkpoint.symbol_path(prefix))
    except (mx.base.MXNetError, UnicodeDecodeError) as exc:
        raise UserError(f"--model-prefix {prefix}: {checkpoint.symbol_path(prefix)} cannot be read: "
                        f"{mxnet_reason(exc)}") from None
    num_classes = infer_model.output_classes(symbol, (1,) + shape.value)
    return Member(prefix, epoch, shape, num_classes, settings.resolve_classes(classes_file, prefix, num_classes))


def check_same_classes(members):
    """UserError unless every member predicts the first one's classes (count, and names where known)."""
    first = members[0]
    for member in members[1:]:
        if member.num_classes != first.num_classes:
            raise UserError(f"--model-prefix {member.prefix} predicts {member.num_classes} classes but "
                            f"--model-prefix {first.prefix} predicts {first.num_classes}: the members of an "
                            f"ensemble must predict the same classes")
        ours, theirs = first.classes.value, member.classes.value
        if ours and theirs and ours != theirs:
            label = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
            raise UserError(f"--model-prefix {member.prefix} is labelled by {member.classes.source}, which is "
                            f"not the class list {first.classes.source} of --model-prefix {first.prefix} "
                            f"(label {label} is {theirs[label]!r} there and {ours[label]!r} here): the members "
                            f"of an ensemble must predict the same classes")
    unnamed = [m.prefix for m in members if m.classes.value is None]
    if unnamed and len(unnamed) < len(members):
        log.warning("no class list for %s: only the number of classes could be checked against the others",
                    ", ".join(unnamed))


def class_names(members):
    """settings.Setting of the ensemble's class names: the first member's list that is known."""
    return next((m.classes for m in members if m.classes.value is not None), members[0].classes)


class Mean:
    """The running mean of (N, C) probability arrays, summed in float64."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, probs):
        probs = np.asarray(probs, dtype=np.float64)
        if self.total is None:
            self.total = probs.copy()
        elif probs.shape != self.total.shape:
            raise AssertionError(f"probabilities of shape {probs.shape} added to a mean of {self.total.shape}")
        else:
            self.total += probs
        self.count += 1

    def value(self):
        """(N, C) float64: the mean of what was added."""
        return self.total / self.count


@dataclasses.dataclass
class MemberScore:
    """A member's figures on the set: score (evaluate.Score, without its probabilities, which
    are in the ensemble's sum), tta (tta.summarize's dict or None)."""
    member: Member
    score: evaluate.Score
    tta: dict = None


@dataclasses.dataclass
class EnsembleScore:
    """Every member's figures and the ensemble's: score (evaluate.Score of the mean
    probabilities, which it holds as .probs), tta (the TTA figures of the mean TTA
    probabilities, or None), tta_probs ((N, C) float64 or None)."""
    members: list
    score: evaluate.Score
    tta: dict = None
    tta_probs: np.ndarray = None


def score_members(members, record_set, *, contexts, batch_size, threads, top_k, tta_scales=None):
    """Score each Member on a checked RecordSet, then the mean of their probabilities.

    batch_size: images per forward pass over all `contexts`; threads: decoding threads;
    tta_scales: also the test-time views at these scales (None: not).
    """
    tic = time.time()
    num_classes, labels = members[0].num_classes, record_set.labels
    plain, views, scores = Mean(), Mean(), []
    for number, member in enumerate(members, 1):
        log.info("member %d of %d: %s epoch %d, input %s (%s)", number, len(members), member.prefix,
                 member.epoch, ",".join(map(str, member.shape.value)), member.shape.source)
        model = infer_model.load_model(member.prefix, member.epoch, member.shape.value, contexts, batch_size)
        score = evaluate.evaluate_set(model.module, record_set, image_shape=model.image_shape,
                                      batch_size=model.batch_size, threads=threads,
                                      num_classes=num_classes, top_k=top_k)
        plain.add(score.probs)
        score.probs = None  # in the sum now: memory stays flat however many members
        figures = None
        if tta_scales:
            probs = tta.record_probabilities(model, record_set, scales=tta_scales)
            views.add(probs)
            figures = tta.summarize(probs, labels, num_classes, top_k, tta_scales)
        scores.append(MemberScore(member, score, figures))
        del model  # the next member's weights replace it
    ensemble = evaluate.score_probabilities(plain.value(), labels, num_classes, top_k, time.time() - tic)
    if not tta_scales:
        return EnsembleScore(scores, ensemble)
    mean = views.value()
    return EnsembleScore(scores, ensemble, tta.summarize(mean, labels, num_classes, top_k, tta_scales), mean)
