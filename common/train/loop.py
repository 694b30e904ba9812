"""One training run with mx.mod.Module: bind, start or resume, the epoch loop.

The loop is written out (not Module.fit) so that each epoch gets its own
iterator seed (an exact resume replays the same order and crops), validation
counts every image exactly once (common.evaluate), and BatchNorm statistics are
shared across devices before anything is validated or saved. Everything else
that happens per batch or per epoch is a callback (common.train.callbacks).

Each finished epoch E leaves, under the run's prefix (rank 0 only):
PREFIX-symbol.json, PREFIX-E.params and PREFIX-E.states (atomic, with .sha256),
a line in PREFIX-metrics.jsonl and the PREFIX-curve.png plot.
"""
import dataclasses
import logging
import time

from . import callbacks, schedule as sched
from .. import checkpoint, evaluate, transforms
from ..checkpoint import match_params
from ..cli import UserError, nonnegative_int, positive_int
from ..devices import KVSTORES, add_device_args
from ..report import MetricsLog

log = logging.getLogger(__name__)

TOP_K = 5  # the top-k accuracy reported unless --top-k says otherwise
# ImageRecordIter takes a 32-bit seed.
_SEED_MODULUS = 2 ** 31


@dataclasses.dataclass
class RunConfig:
    """Everything about a run that is not the model, the data or the schedule.

    prefix: checkpoint prefix. batch_size: total over devices (and per worker
    with a dist kvstore). image_shape: (C, H, W) network input. data_threads:
    decoding threads per iterator. top_k: the extra accuracy reported.
    disp_batches: Speedometer period. seed: weights, order and augmentation.
    dtype: 'float32' or 'float16'. begin_epoch: 0, or the epoch to resume after.
    """
    prefix: str
    batch_size: int
    image_shape: tuple
    data_threads: int
    top_k: int
    disp_batches: int
    seed: int
    dtype: str = "float32"
    begin_epoch: int = 0


def add_fit_args(parser):
    """The run argument group: devices, kvstore, batch, checkpoints, reporting, seed.

    --batch-size defaults to the recipe's images per device (args.batch_per_device,
    set by the entry script) times the number of devices.
    """
    fit = parser.add_argument_group("run")
    add_device_args(fit)
    fit.add_argument("--kv-store", choices=KVSTORES, default="device", help="gradient aggregation")
    fit.add_argument("--batch-size", metavar="N", type=positive_int,
                     help="total over all devices; must divide by their number "
                          "(default: the recipe's images per device times the devices)")
    fit.add_argument("--top-k", metavar="K", type=positive_int,
                     help=f"also report top-k accuracy (default: {TOP_K}, or all classes if fewer)")
    fit.add_argument("--disp-batches", metavar="N", type=positive_int, default=20, help="log speed every N batches")
    fit.add_argument("--model-prefix", metavar="PREFIX",
                     help="checkpoint prefix (default: model/DATAPREFIX-NETWORK-MODE)")
    fit.add_argument("--load-epoch", metavar="N", type=positive_int,
                     help="resume from PREFIX-EPOCH.params/.states of --model-prefix")
    fit.add_argument("--seed", metavar="S", type=nonnegative_int, default=0,
                     help="random seed (weights, shuffle, augmentation)")
    return fit


def check_resume(prefix, load_epoch, num_epochs):
    """Before anything is written: the files a --load-epoch resume needs, verified."""
    if not load_epoch:
        return
    if load_epoch >= num_epochs:
        raise UserError(f"--load-epoch {load_epoch} leaves nothing to train with --num-epochs {num_epochs}")
    checkpoint.require_checkpoint(prefix, load_epoch, epoch_flag="--load-epoch", states=True)


def run(model, dataset, contexts, kv, schedule, cfg):
    """Train `model` on `dataset`; returns the last epoch's callbacks.EpochEnd.

    A resume (cfg.begin_epoch > 0) expects check_resume to have passed.
    """
    module = _bind(model, contexts, cfg)
    _start(module, model, cfg)
    epoch_size = sched.updates_per_epoch(len(dataset.train), cfg.batch_size, kv.num_workers)
    module.init_optimizer(kvstore=kv, optimizer="sgd", optimizer_params=sched.optimizer_params(
        schedule, epoch_size=epoch_size, dtype=cfg.dtype, begin_epoch=cfg.begin_epoch))
    if cfg.begin_epoch:
        module.load_optimizer_states(checkpoint.states_path(cfg.prefix, cfg.begin_epoch))
    batch_end, epoch_end = default_callbacks(cfg, is_rank0=kv.rank == 0)

    def train_data(epoch):
        return transforms.record_iter(dataset.train, image_shape=cfg.image_shape,
                                      batch_size=cfg.batch_size, train=True, threads=cfg.data_threads,
                                      seed=epoch_seed(cfg.seed, epoch), num_parts=kv.num_workers,
                                      part_index=kv.rank)

    def validate(module):
        return evaluate.evaluate_set(module, dataset.val, image_shape=cfg.image_shape,
                                     batch_size=cfg.batch_size, threads=cfg.data_threads,
                                     num_classes=dataset.num_classes, top_k=cfg.top_k).figures

    return fit(module, epochs=range(cfg.begin_epoch + 1, schedule.num_epochs + 1), train_data=train_data,
               validate=validate, metric=training_metric(cfg.top_k),
               batch_end_callbacks=batch_end, epoch_end_callbacks=epoch_end)


def default_callbacks(cfg, is_rank0):
    """(batch-end, epoch-end) callbacks of a run: speed, divergence, log, checkpoint, metrics."""
    guard = callbacks.DivergenceGuard()
    batch_end = [callbacks.speedometer(cfg.batch_size, cfg.disp_batches), guard.batch_end]
    # The guard comes first: nothing of a diverged epoch is logged as a result or saved.
    epoch_end = [guard.epoch_end, callbacks.log_epoch(cfg.top_k)]
    if is_rank0:
        epoch_end += [callbacks.save_checkpoint(cfg.prefix),
                      callbacks.write_metrics(MetricsLog(cfg.prefix, cfg.begin_epoch))]
    return batch_end, epoch_end


def epoch_seed(seed, epoch):
    """The iterator seed of epoch `epoch` (1-based): its own per epoch, so that a resumed
    run sees the same order and crops as an unbroken one."""
    return (seed * 100003 + epoch - 1) % _SEED_MODULUS


def fit(module, *, epochs, train_data, validate, metric, batch_end_callbacks=(), epoch_end_callbacks=()):
    """Train a bound, initialized `module` for each epoch number in `epochs` (1-based).

    train_data(epoch): a fresh training iterator for that epoch; validate(module):
    the validation figures. Returns the last epoch's EpochEnd (None for no epoch).
    A StopTraining from a callback ends the loop; it carries the last finished
    EpochEnd: from an epoch-end callback, that epoch's (the callbacks before it ran).
    """
    end = None
    try:
        for epoch in epochs:
            images, seconds = train_epoch(module, train_data(epoch), metric, epoch, batch_end_callbacks)
            # Each device keeps its own BatchNorm statistics; get_params averages them.
            # Every device takes that average, the one the checkpoint saves, so that
            # validation and a resumed run use exactly what an unbroken run uses.
            arg_params, aux_params = module.get_params()
            module.set_params(arg_params, aux_params)
            val = validate(module)
            record = epoch_record(epoch, metric, val, sched.current_lr(module), images, seconds)
            end = callbacks.EpochEnd(epoch, module, arg_params, aux_params, record, val)
            for callback in epoch_end_callbacks:
                callback(end)
    except callbacks.StopTraining as stop:
        stop.last = end
        raise
    return end


def train_epoch(module, data_iter, metric, epoch, batch_end_callbacks):
    """One pass over data_iter; returns (images seen, seconds)."""
    import mxnet as mx
    metric.reset()
    images, tic = 0, time.time()
    for nbatch, batch in enumerate(data_iter):
        module.forward_backward(batch)
        module.update()
        # update_metric reads the outputs back, which also waits for this batch
        module.update_metric(metric, batch.label)
        images += batch.data[0].shape[0] - batch.pad
        param = mx.model.BatchEndParam(epoch=epoch, nbatch=nbatch, eval_metric=metric,
                                       locals={"module": module, "batch": batch})
        for callback in batch_end_callbacks:
            callback(param)
    return images, time.time() - tic


def training_metric(top_k):
    """Top-1, top-k and cross-entropy of the training batches.

    MXNet's TopKAccuracy refuses k = 1; top-1 is then a second Accuracy under
    TopKAccuracy's name, so that every run records the same columns.
    """
    import mxnet as mx
    top = (mx.metric.TopKAccuracy(top_k) if top_k > 1 else
           mx.metric.Accuracy(name="top_k_accuracy_1"))
    return mx.metric.CompositeEvalMetric([mx.metric.Accuracy(), top, mx.metric.CrossEntropy()])


# MXNet metric name -> metrics.jsonl column; top_k_accuracy_K becomes train_topK.
_TRAIN_COLUMNS = {"accuracy": "train_acc", "cross-entropy": "train_loss"}


def epoch_record(epoch, metric, val, lr, images, seconds):
    """One metrics.jsonl line: train and validation figures of epoch `epoch` (1-based)."""
    record = {"epoch": epoch}
    for name, value in metric.get_name_value():
        top = name.rpartition("_")[2] if name.startswith("top_k_accuracy_") else None
        record[f"train_top{top}" if top else _TRAIN_COLUMNS[name]] = value
    record.update({f"val_{k}": v for k, v in val.items() if k != "images"})
    record.update({"lr": lr, "images_per_sec": images / max(seconds, 1e-9), "seconds": seconds})
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}


def _bind(model, contexts, cfg):
    import mxnet as mx
    module = mx.mod.Module(model.symbol, context=contexts, fixed_param_names=model.fixed or None)
    module.bind(data_shapes=[("data", (cfg.batch_size,) + tuple(cfg.image_shape))],
                label_shapes=[("softmax_label", (cfg.batch_size,))])
    return module


def _param_shapes(symbol, image_shape):
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1,) + tuple(image_shape))
    args = {n: s for n, s in zip(symbol.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    return args, dict(zip(symbol.list_auxiliary_states(), aux_shapes))


def _start(module, model, cfg):
    """Initialize fresh, or load the checkpoint of the epoch to resume after."""
    arg_shapes, aux_shapes = _param_shapes(model.symbol, cfg.image_shape)
    if not cfg.begin_epoch:
        init_params(module, model, arg_shapes, aux_shapes, cfg.seed)
        return
    what = f"checkpoint {cfg.prefix} epoch {cfg.begin_epoch}"
    _, args, aux = checkpoint.load_checkpoint(cfg.prefix, cfg.begin_epoch, epoch_flag="--load-epoch")
    args = match_params(arg_shapes, args, "argument", what)
    aux = match_params(aux_shapes, aux, "auxiliary state", what)
    module.init_params(arg_params=args, aux_params=aux, allow_missing=False, force_init=True)
    log.info("resumed from %s", what)


def initializer():
    """Xavier(gaussian, in, magnitude 2) for new weights, as in the published recipe;
    biases and BatchNorm parameters get their usual constants (by name suffix)."""
    import mxnet as mx
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def init_params(module, model, arg_shapes, aux_shapes, seed):
    """Load the model's arrays and initialize exactly `model.fresh` (plus missing aux).

    Every argument is then set explicitly (allow_missing=False): nothing can be
    initialized by accident.
    """
    import mxnet as mx
    mx.random.seed(seed)
    init = initializer()
    # Variables may carry their own initializer (BatchNorm's moving mean/var do).
    attrs = model.symbol.attr_dict()

    def fresh(name, shape):
        array = mx.nd.zeros(shape)
        init(mx.init.InitDesc(name, attrs.get(name, {})), array)
        return array

    args = dict(model.arg_params)
    args.update({name: fresh(name, arg_shapes[name]) for name in model.fresh})
    aux = dict(model.aux_params)
    aux.update({name: fresh(name, shape) for name, shape in aux_shapes.items() if name not in aux})
    module.init_params(arg_params=args, aux_params=aux, allow_missing=False, allow_extra=False,
                       force_init=True)
