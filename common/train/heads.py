"""The new head trained on cached features (--cache-features): same loop, full checkpoints.

A last-layer run's backbone is a constant function of each image's crop, so
its features are computed once (common.train.featurecache) and the head, a
FullyConnected + SoftmaxOutput of exactly the names and shapes the full
network gives it, trains on them with the run's own optimizer, schedule,
callbacks, preemption handling and resume (common.train.loop.train_module).
The loop sees the whole network (FullNetwork): every checkpoint holds the
pretrained backbone and the trained head under the full symbol, so score.py
and predict.py load it like any other run's.

What differs from the uncached run is the augmentation: each image is the
validation crop (with --cache-mirror, it or its mirror image at random each
epoch) rather than a random crop, so the figures agree within noise, not exactly.
Validation is exact: the cached validation rows are what the full network
computes before its head.
"""
import dataclasses
import functools
import logging
import time

import numpy as np

from . import callbacks, featurecache, linear, loop, modes, sampling, surgery
from ..cli import UserError
from ..evaluate import predict_probabilities, summarize
from ..infer.model import bind_module

log = logging.getLogger(__name__)


def add_head_args(parser):
    """The frozen-backbone group: cached features and what trains on them."""
    group = parser.add_argument_group("frozen backbone (--mode last-layer)")
    featurecache.add_cache_args(group)
    linear.add_linear_args(group)
    return group


def mode_label(mode, *, freeze_until=None, cache=False, mirror=False, head="fc"):
    """What a run trains, as its identity records it: another label is another run."""
    if freeze_until:
        return f"{mode}, frozen until {freeze_until}"
    if head != "fc":
        return f"{mode}, {head} head on cached features" + (" with mirrors" if mirror else "")
    if cache:
        return f"{mode}, cached features" + (" with mirrors" if mirror else "")
    return mode


def trainer(cache, spec, head="fc"):
    """loop.run; run_cached with `spec` (CacheSpec) when the features are cached; run_linear
    for a scikit-learn head (linear.HEADS)."""
    if head != "fc":
        return functools.partial(run_linear, spec=spec, kind=head)
    return functools.partial(run_cached, spec=spec) if cache else loop.run


@dataclasses.dataclass
class CacheSpec:
    """Where and what to cache: cache_dir; layer: the cut (--layer-before-fullc); mirror:
    also the training set's mirrored crops; dtype: the run's compute type."""
    cache_dir: str
    layer: str
    mirror: bool
    dtype: str = "float32"


def check_cache_args(*, mode, cache, mirror, cache_dir, kv_store, head="fc"):
    """UserError for a cache option that does not apply (one line, naming it); a
    scikit-learn --head caches the features without being told."""
    linear.check_linear_args(head, mode)
    cache = cache or head != "fc"
    if not cache:
        for flag, given in (("--cache-mirror", mirror), ("--feature-cache", cache_dir)):
            if given:
                raise UserError(f"{flag} applies with --cache-features only")
        return
    if mode != "last-layer":
        raise UserError(f"--cache-features needs a frozen backbone: --mode last-layer (--mode {mode} was given)")
    if kv_store.startswith("dist"):
        raise UserError(f"--cache-features trains the head on one machine's cached features: use "
                        f"--kv-store device or local (--kv-store {kv_store} was given)")


class FullNetwork:
    """The head's Module, seen by the loop and the checkpoints as the whole network.

    symbol: the full network's; get_params: the pretrained backbone's arrays plus
    the head's; set_params takes the head's names from a full set. Everything
    else (forward_backward, update, the optimizer) is the head module's.
    """

    def __init__(self, head, model):
        self._head, self.symbol = head, model.symbol
        self._backbone = (dict(model.arg_params), dict(model.aux_params))
        self._names = list(model.fresh)

    def __getattr__(self, name):
        return getattr(self._head, name)

    def get_params(self):
        args, _ = self._head.get_params()
        return {**self._backbone[0], **args}, dict(self._backbone[1])

    def set_params(self, arg_params, aux_params):
        self._head.set_params({name: arg_params[name] for name in self._names}, {})


def head_symbol(model, num_classes, dtype):
    """features (N, D) -> the new FullyConnected (model.fresh's names) -> SoftmaxOutput, with
    the full network's label smoothing."""
    import mxnet as mx
    fc_name = model.fresh[0][:-len("_weight")]
    data = mx.sym.Variable("data")
    if dtype != "float32":
        data = mx.sym.Cast(data, dtype=dtype, name=f"data_{dtype}")
    head = surgery.attach_head(data, num_classes, fc_name, dtype)
    alpha = surgery.label_smoothing(model.symbol)
    return surgery.set_label_smoothing(head, alpha) if alpha else head


def cached_features(model, dataset, spec, *, image_shape, contexts, batch_size, threads):
    """featurecache.Features of the run's sets: from the cache, or computed and stored."""
    backbone = surgery.cut(model.symbol, spec.layer)
    fingerprint = featurecache.backbone_fingerprint(backbone, model.arg_params, model.aux_params,
                                                    layer=spec.layer, image_shape=image_shape, dtype=spec.dtype)
    bound = []

    def compute(record_set, mirror):
        if not bound:  # bound only when a set is not cached
            bound.append(bind_module(backbone, model.arg_params, model.aux_params, contexts, batch_size,
                                     image_shape))
        return featurecache.compute_rows(bound[0], record_set, image_shape=image_shape, batch_size=batch_size,
                                         threads=threads, mirror=mirror,
                                         desc=f"features {'mirrored ' if mirror else ''}"
                                              f"{record_set.rec.rsplit('/', 1)[-1]}")
    def rows(role, record_set, mirror=False):
        if record_set.subset_of is not None:  # a K-fold set: its records are the training set's
            parent, positions = record_set.subset_of
            return rows(role, parent, mirror)[positions]
        return featurecache.rows_for(role, record_set, backbone=fingerprint, cache_dir=spec.cache_dir,
                                     mirror=mirror, compute=compute)
    tic = time.time()
    features = featurecache.Features(rows("train", dataset.train), rows("val", dataset.val),
                                     rows("train-mirror", dataset.train, True) if spec.mirror else None)
    log.info("cached features ready in %.1f s (%s)", time.time() - tic, spec.cache_dir)
    return features


def epoch_rows(features, labels, seed, balanced=False):
    """(rows, labels) of one epoch: a seeded permutation (or class-balanced draw) of the
    training rows, each the plain or, with mirrored rows, at random the mirrored crop."""
    rng = np.random.RandomState(seed)
    order = sampling.balanced_draw(labels, seed) if balanced else rng.permutation(len(labels))
    rows = features.train[order]
    if features.train_mirror is not None:
        flip = rng.rand(len(order)) < 0.5
        rows[flip] = features.train_mirror[order[flip]]
    return rows, labels[order]


def feature_iter(rows, labels, batch_size):
    """Batches of rows in order; the last one padded from the start (batch.pad says how much)."""
    import mxnet as mx
    return mx.io.NDArrayIter(rows, labels.astype(np.float32), batch_size, shuffle=False,
                             last_batch_handle="pad", data_name="data", label_name="softmax_label")


def head_figures(module, rows, labels, *, batch_size, num_classes, top_k):
    """summarize's figures of the head on feature rows: each row counted once."""
    probs, labels = predict_probabilities(module, feature_iter(rows, labels, batch_size), labels)
    return summarize(probs, labels, num_classes, top_k)


def run_cached(model, dataset, contexts, kv, schedule, cfg, start, *, spec):
    """loop.run's counterpart for --cache-features: the head on cached features; the last EpochEnd."""
    features = cached_features(model, dataset, spec, image_shape=cfg.image_shape, contexts=contexts,
                               batch_size=cfg.batch_size, threads=cfg.data_threads)
    head = modes.Model(head_symbol(model, dataset.num_classes, spec.dtype), {}, {}, fresh=model.fresh, fixed=[])
    head_cfg = dataclasses.replace(cfg, image_shape=(features.width,))
    module = loop.bind(head, contexts, head_cfg)
    loop.start_params(module, head, head_cfg, start, rank=kv.rank)
    train_labels, val_labels = dataset.train.labels, dataset.val.labels

    def train_data(epoch):
        rows, labels = epoch_rows(features, train_labels, loop.epoch_seed(cfg.seed, epoch), cfg.balanced)
        return feature_iter(rows, labels, cfg.batch_size)

    def validate(network):
        return head_figures(network, features.val, val_labels, batch_size=cfg.batch_size,
                            num_classes=dataset.num_classes, top_k=cfg.top_k)
    return loop.train_module(FullNetwork(module, model), kv, schedule, cfg, start,
                             num_examples=len(train_labels), train_data=train_data, validate=validate)


def run_linear(model, dataset, contexts, kv, schedule, cfg, start, *, spec, kind):
    """A scikit-learn head (common.train.linear) on cached features, committed as epoch 1
    through the usual epoch-end callbacks; returns its EpochEnd."""
    features = cached_features(model, dataset, spec, image_shape=cfg.image_shape, contexts=contexts,
                               batch_size=cfg.batch_size, threads=cfg.data_threads)
    tic = time.time()
    weight, bias, report = linear.fit_head(kind, features.train, dataset.train.labels,
                                           num_classes=dataset.num_classes, seed=cfg.seed,
                                           extra_rows=features.train_mirror)
    seconds = time.time() - tic
    head = _fitted_module(model, dataset.num_classes, spec.dtype, weight, bias, contexts, cfg.batch_size)
    figures = {role: head_figures(head[0], rows, record_set.labels, batch_size=cfg.batch_size,
                                  num_classes=dataset.num_classes, top_k=cfg.top_k)
               for role, rows, record_set in (("train", features.train, dataset.train),
                                              ("val", features.val, dataset.val))}
    record = {"epoch": 1, **{f"train_{k}" if k != "acc" else "train_acc": v
                             for k, v in figures["train"].items() if k not in ("images", "mean_class_acc")},
              **{f"val_{k}": v for k, v in figures["val"].items() if k != "images"},
              "lr": None, "images_per_sec": len(features.train) / max(seconds, 1e-9), "seconds": seconds,
              **report}
    end = callbacks.EpochEnd(1, linear.FittedHead(model.symbol), {**model.arg_params, **head[1]},
                             dict(model.aux_params), record, figures["val"])
    for callback in loop.default_callbacks(cfg, is_rank0=kv.rank == 0)[1]:
        callback(end)
    return end


def _fitted_module(model, num_classes, dtype, weight, bias, contexts, batch_size):
    """(an inference Module of the head with weights W, b; the head's {name: NDArray})."""
    import mxnet as mx
    params = dict(zip(model.fresh, (mx.nd.array(weight), mx.nd.array(bias))))
    return bind_module(head_symbol(model, num_classes, dtype), params, {}, contexts, batch_size,
                       (weight.shape[1],)), params
