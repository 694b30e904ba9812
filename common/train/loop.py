"""One training run with mx.mod.Module: bind, start or resume, the epoch loop.

The loop is written out (not Module.fit) so that each epoch gets its own
iterator seed (an exact resume replays the same order and crops), validation
counts every image exactly once (common.evaluate), and BatchNorm statistics are
shared across devices before anything is validated or saved. Everything else
that happens per batch or per epoch is a callback (common.train.callbacks).

Each finished epoch E is committed under the run's prefix (rank 0 only):
PREFIX-symbol.json, PREFIX-E.params, PREFIX-E.states and last PREFIX-E.manifest.json
(common.checkpoint), after its line in PREFIX-metrics.jsonl and the curve plot.
A run starts where common.train.resume.find_start says: fresh, after an epoch,
or mid-epoch (the batches a preempted run already trained are read again, not
trained, so the rest of the epoch sees what an unbroken run would).
"""
import dataclasses
import logging
import time

from . import background as bg, callbacks, dist, ema as averaging, mining, mixup as mixing, multiscale, preempt
from . import sampling
from . import schedule as sched, surgery
from .. import checkpoint, evaluate, transforms
from ..checkpoint import match_params, split_params
from ..cli import int_at_least, nonnegative_int, positive_int
from ..devices import KVSTORES, add_device_args
from ..report import MetricsLog

log = logging.getLogger(__name__)

TOP_K = 5  # the top-k accuracy reported unless --top-k says otherwise
KEEP = 2  # committed checkpoints kept: the newest, and one to fall back to if it is corrupt
# ImageRecordIter takes a 32-bit seed.
# A curve drawn at most every CURVE_SPACING times its drawing time costs the run at most
# about 1/CURVE_SPACING of its time (0.1-0.2 s a drawing: every epoch of a real run).
CURVE_SPACING = 50
_SEED_MODULUS = 2 ** 31


@dataclasses.dataclass
class RunConfig:
    """Everything about a run that is not the model, the data or the schedule.

    prefix: checkpoint prefix. batch_size: total over devices (and per worker
    with a dist kvstore). image_shape: (C, H, W) network input. data_threads:
    decoding threads per iterator. top_k: the extra accuracy reported.
    disp_batches: Speedometer period. seed: weights, order and augmentation.
    dtype: 'float32' or 'float16'. identity: resume.run_identity, recorded in
    every manifest. keep: committed checkpoints kept. requeue: requeue the Slurm
    job on SIGUSR1. progress: called after every batch and epoch (a watchdog's beat).
    balanced: class-balanced sampling (common.train.sampling). hard_mining: the
    fraction of training images seen twice in the next epoch (common.train.mining), or None.
    augment: the training iterator's transforms.Augment, or None. early_stopping: the
    patience in epochs (callbacks.EarlyStopping), or None. mixup: Beta's alpha of
    --mixup (common.train.mixup), 0 for none. ema: the decay of --ema (common.train.ema),
    0 for none. multi_scale: the (height, width) sizes of --multi-scale
    (common.train.multiscale), or None.
    """
    prefix: str
    batch_size: int
    image_shape: tuple
    data_threads: int
    top_k: int
    disp_batches: int
    seed: int
    dtype: str = "float32"
    identity: dict = None
    keep: int = KEEP
    requeue: bool = False
    progress: object = None
    balanced: bool = False
    hard_mining: float = None
    augment: object = None
    early_stopping: int = None
    mixup: float = 0.0
    ema: float = 0.0
    multi_scale: list = None


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
    fit.add_argument("--seed", metavar="S", type=nonnegative_int, default=0,
                     help="random seed (weights, shuffle, augmentation)")
    fit.add_argument("--balanced-sampling", action="store_true",
                     help="each epoch draws as many images as the set has, classes uniformly, then an "
                          "image of the class (with replacement), instead of every image once")
    fit.add_argument("--early-stopping", metavar="PATIENCE", type=positive_int,
                     help="stop once validation accuracy has not improved for PATIENCE epochs (>= 1); the "
                          "best epoch's checkpoint is kept (default: train every epoch)")
    mining.add_mining_args(fit)
    mixing.add_mixup_args(fit)
    averaging.add_ema_args(fit)
    multiscale.add_multiscale_args(fit)
    add_checkpoint_args(fit)
    return fit


def add_checkpoint_args(group):
    """Where a run's checkpoints go, how many stay, and where a rerun starts."""
    group.add_argument("--model-prefix", metavar="PREFIX",
                       help="checkpoint prefix (default: model/DATAPREFIX-NETWORK-MODE); rerunning the "
                            "same command continues the run found there")
    group.add_argument("--load-epoch", metavar="N", type=positive_int,
                       help="continue after committed epoch N (default: after the newest that verifies, "
                            "or mid-epoch after a preemption)")
    group.add_argument("--restart", action="store_true",
                       help="start over under --model-prefix, moving the earlier run's files aside")
    group.add_argument("--keep", metavar="N", type=int_at_least(2), default=KEEP,
                       help="committed checkpoints kept (the newest N, and the best by validation accuracy)")
    group.add_argument("--requeue", action="store_true",
                       help="Slurm: on SIGUSR1 (sbatch --signal=B:USR1@90), also requeue the job")


@dataclasses.dataclass
class Partial:
    """What a mid-epoch checkpoint recorded of its epoch: batches trained, images,
    seconds, and the training metric's sums (metric_state)."""
    batch: int
    images: int
    seconds: float
    metric: list


def run(model, dataset, contexts, kv, schedule, cfg, start):
    """Train `model` on `dataset` from `start` (resume.Start); returns the last EpochEnd.

    start's checkpoint, if any, was verified by resume.find_start: its .states
    file is unpickled here only because its manifest vouched for it.
    """
    module = bind(model, contexts, cfg)
    start_params(module, model, cfg, start, rank=kv.rank)
    # Evaluation feeds (N,) labels; a module bound for mixup's soft ones must not read them.
    evaluated = mixing.Unlabelled(module) if cfg.mixup else module
    parts = sampling.EpochParts(dataset.train, rank=kv.rank, num_workers=kv.num_workers, balanced=cfg.balanced)
    miner = _miner(dataset.train, cfg, schedule.num_epochs)
    if miner:
        miner.resume(start, module)  # its score() takes the module as evaluation must see it

    def train_data(epoch):
        seed = epoch_seed(cfg.seed, epoch)
        return transforms.record_iter(parts.epoch(seed, miner and miner.hard_for(epoch)),
                                      image_shape=cfg.image_shape, batch_size=cfg.batch_size, train=True,
                                      threads=cfg.data_threads, seed=seed, augment=cfg.augment)

    def validate(module):
        return evaluate.evaluate_set(evaluated, dataset.val, image_shape=cfg.image_shape,
                                     batch_size=cfg.batch_size, threads=cfg.data_threads,
                                     num_classes=dataset.num_classes, top_k=cfg.top_k).figures

    mix = cfg.mixup and mixing.Mixup(cfg.mixup, dataset.num_classes, smoothing=surgery.label_smoothing(model.symbol),
                                     seed=cfg.seed, rank=kv.rank)
    scale = cfg.multi_scale and multiscale.MultiScale(cfg.multi_scale, seed=cfg.seed, rank=kv.rank)
    if scale:
        scale.remember(module)
    with parts:
        return train_module(module, kv, schedule, cfg, start, num_examples=len(dataset.train),
                            train_data=train_data, validate=validate, miner=miner,
                            mix=multiscale.chain(mix or None, scale or None), restore=scale and scale.restore)


def _miner(train_set, cfg, last_epoch):
    """The run's mining.HardMiner (None without --hard-mining): it scores `train_set`."""
    if not cfg.hard_mining:
        return None
    # A module bound for --mixup's soft labels must not read the (N,) labels evaluation feeds.
    score = lambda module: evaluate.image_losses(  # noqa: E731
        mixing.Unlabelled(module) if cfg.mixup else module, train_set, image_shape=cfg.image_shape,
        batch_size=cfg.batch_size, threads=cfg.data_threads)
    return mining.HardMiner(cfg.hard_mining, score, labels=train_set.labels, last_epoch=last_epoch)


def train_module(module, kv, schedule, cfg, start, *, num_examples, train_data, validate, miner=None, mix=None,
                 restore=None):
    """The epochs of a bound, initialized `module`, with the optimizer, the callbacks and
    the preemption handling of every run; returns the last EpochEnd.

    num_examples: training images an epoch; train_data(epoch), validate(module), mix, restore: as fit's.
    miner: a mining.HardMiner, whose hard set every manifest records, or None.
    """
    epoch_size = sched.updates_per_epoch(num_examples, cfg.batch_size, kv.num_workers)
    sync = _init_optimizer(module, kv, schedule, cfg, begin_update=start.epoch * epoch_size + start.batch,
                           epoch_size=epoch_size)
    if start.tag is not None:
        module.load_optimizer_states(checkpoint.states_path(cfg.prefix, start.tag))
    ema = cfg.ema and averaging.EMA(module, cfg.ema, averaging.start_values(cfg.prefix, start)) or None
    commit_mid_epoch = callbacks.commit_mid_epoch(cfg.prefix, cfg.identity, metric_state, write=kv.rank == 0,
                                                  gather_aux=sync and sync.with_worker_aux,
                                                  fields=miner and miner.fields, ema=ema)
    writer = bg.Writer()
    # Rank 0 alone requeues a dist job: once for the job, not once per worker. The writer's
    # block is the inner one: the run's last writes end while the signals are still caught.
    with preempt.Preemption(commit_mid_epoch, cfg.requeue and kv.rank == 0, agree=sync and sync.any,
                            settle=writer.join) as stops, writer:
        batch_end, epoch_end = default_callbacks(cfg, is_rank0=kv.rank == 0, begin_epoch=start.epoch,
                                                 preemption=stops, miner=miner, writer=writer)
        # The average takes each batch first: a mid-epoch commit after it holds that batch's.
        batch_end = ([ema.batch_end] if ema else []) + batch_end
        return fit(module, epochs=range(start.epoch + 1, schedule.num_epochs + 1), train_data=train_data,
                   validate=validate, metric=training_metric(cfg.top_k), batch_end_callbacks=batch_end,
                   epoch_end_callbacks=epoch_end, partial=_partial(start),
                   batches=epoch_size if sync else None, mean_aux=sync and sync.mean_aux, mix=mix, ema=ema,
                   restore=restore)


def _init_optimizer(module, kv, schedule, cfg, *, begin_update, epoch_size):
    """SGD on `kv`; with a dist kvstore, returns the workers' dist.DistSync (else None)."""
    if dist.is_dist(kv):
        dist.sum_on_servers()
    module.init_optimizer(kvstore=kv, optimizer="sgd", optimizer_params=sched.optimizer_params(
        schedule, epoch_size=epoch_size, dtype=cfg.dtype, begin_update=begin_update))
    if not dist.is_dist(kv):
        return None
    sync = dist.DistSync(kv, _param_shapes(module.symbol, cfg.image_shape)[1])
    sync.share_params(module)
    return sync


def _partial(start):
    if not start.batch:
        return None
    state = start.manifest["train_state"]
    return Partial(start.batch, state["images"], state["seconds"], state["metric"])


def default_callbacks(cfg, is_rank0, begin_epoch=0, preemption=None, miner=None, writer=None):
    """(batch-end, epoch-end) callbacks of a run: speed, divergence, log, mining, metrics,
    commit, early stopping, signals.

    writer: the background.Writer that draws the curves and commits the checkpoints
    (None: they are written at once, before the next callback runs, the curve every epoch).
    """
    guard, in_background, writer = callbacks.DivergenceGuard(), writer is not None, writer or bg.Synchronous()
    batch_end = [callbacks.speedometer(cfg.batch_size, cfg.disp_batches), guard.batch_end, writer.batch_end,
                 callbacks.FirstBatch()]
    # The guard comes first: nothing of a diverged epoch is logged as a result or saved.
    # The miner precedes the commit, whose manifest records the hard set it picked.
    # The metrics line precedes the commit: a committed epoch always has its line.
    epoch_end = [guard.epoch_end, callbacks.log_epoch(cfg.top_k)] + ([miner.epoch_end] if miner else [])
    if is_rank0:
        metrics_log = MetricsLog(cfg.prefix, begin_epoch)
        plot = callbacks.CurvePlot(metrics_log, writer, spacing=CURVE_SPACING if in_background else 0)
        epoch_end += [callbacks.write_metrics(metrics_log), plot,
                      callbacks.CommitCheckpoint(cfg.prefix, cfg.identity, cfg.keep, writer,
                                                 fields=miner and miner.fields)]
        writer.at_close(plot.finish)
    if cfg.early_stopping:  # on every worker: they all validate alike, so all stop together
        epoch_end.append(callbacks.EarlyStopping.resumed(cfg.early_stopping, cfg.prefix, begin_epoch))
    if preemption is not None:
        batch_end.append(preemption.batch_end)
        epoch_end.append(preemption.epoch_end)
    if cfg.progress is not None:
        batch_end.append(cfg.progress)
        epoch_end.append(cfg.progress)
    return batch_end, epoch_end


def epoch_seed(seed, epoch):
    """The iterator seed of epoch `epoch` (1-based): its own per epoch, so that a resumed
    run sees the same order and crops as an unbroken one."""
    return (seed * 100003 + epoch - 1) % _SEED_MODULUS


def fit(module, *, epochs, train_data, validate, metric, batch_end_callbacks=(), epoch_end_callbacks=(),
        partial=None, batches=None, mean_aux=None, mix=None, ema=None, restore=None):
    """Train a bound, initialized `module` for each epoch number in `epochs` (1-based).

    train_data(epoch): a fresh training iterator for that epoch; validate(module):
    the validation figures; partial: the first epoch's Partial when a mid-epoch
    checkpoint began it; batches: train at most this many batches an epoch;
    mean_aux(aux_params): the BatchNorm statistics every worker takes (dist.DistSync);
    mix(batch, epoch, nbatch): (the batch to train on, the labels of the training metric):
    a mixup.Mixup, multiscale.chain's transform, or None; ema: the run's ema.EMA, whose
    averages are validated and saved, or None; restore(module): after each epoch's training,
    back to the bound input shape (multiscale.MultiScale.restore), or None. Returns the last epoch's EpochEnd (None for no epoch).
    A StopTraining from a callback ends the loop; it carries the last finished
    EpochEnd: from an epoch-end callback, that epoch's (the callbacks before it ran).
    """
    end = None
    try:
        for index, epoch in enumerate(epochs):
            images, seconds = train_epoch(module, train_data(epoch), metric, epoch, batch_end_callbacks,
                                          partial if index == 0 else None, batches, mix)
            if restore is not None:
                restore(module)
            # Each device keeps its own BatchNorm statistics; get_params averages them.
            # Every device takes that average, the one the checkpoint saves, so that
            # validation and a resumed run use exactly what an unbroken run uses.
            arg_params, aux_params = module.get_params()
            if mean_aux is not None:
                aux_params = mean_aux(aux_params)
            module.set_params(arg_params, aux_params)
            saved, raw, val = _validated(module, validate, arg_params, aux_params, ema)
            record = epoch_record(epoch, metric, val, sched.current_lr(module), images, seconds)
            end = callbacks.EpochEnd(epoch, module, *saved, record, val, raw=raw)
            for callback in epoch_end_callbacks:
                callback(end)
    except callbacks.StopTraining as stop:
        stop.last = end
        raise
    return end


def _validated(module, validate, arg_params, aux_params, ema):
    """((arg_params, aux_params) to save, the raw ones or None, validation figures): with an
    ema.EMA, its averages are validated and saved, then the module takes its raw weights back."""
    if ema is None:
        return (arg_params, aux_params), None, validate(module)
    # Copies: get_params' dicts are the Module's own, which set_params overwrites.
    raw = tuple({k: v.copy() for k, v in params.items()} for params in (arg_params, aux_params))
    averaged = ema.merged(arg_params, aux_params)
    module.set_params(*averaged)
    val = validate(module)
    module.set_params(*raw)
    return averaged, raw, val


def train_epoch(module, data_iter, metric, epoch, batch_end_callbacks, partial=None, batches=None, mix=None):
    """One pass over data_iter (its first `batches` batches); returns (images seen, seconds).

    partial: a Partial of this epoch. Its batches are read again without being
    trained, so that the iterator hands out the rest as an unbroken run's did.
    mix: as fit's. Batch-end callbacks get locals 'module', 'batch', and 'images' and
    'seconds' of the epoch so far.
    """
    import mxnet as mx
    metric.reset()
    skip, images, spent = 0, 0, 0.0
    if partial is not None:
        skip, images, spent = partial.batch, partial.images, partial.seconds
        restore_metric(metric, partial.metric)
    tic = time.time()
    for nbatch, batch in enumerate(data_iter):
        if nbatch == batches:
            break
        if nbatch < skip:
            continue
        trained, labels = mix(batch, epoch, nbatch) if mix else (batch, batch.label)
        module.forward_backward(trained)
        module.update()
        # update_metric reads the outputs back, which also waits for this batch
        module.update_metric(metric, labels)
        images += batch.data[0].shape[0] - batch.pad
        param = mx.model.BatchEndParam(epoch=epoch, nbatch=nbatch, eval_metric=metric, locals={
            "module": module, "batch": batch, "images": images, "seconds": spent + time.time() - tic})
        for callback in batch_end_callbacks:
            callback(param)
    return images, spent + time.time() - tic


def metric_state(metric):
    """The sums of a CompositeEvalMetric's metrics, as JSON values (restore_metric takes them)."""
    return [[float(m.sum_metric), int(m.num_inst), float(m.global_sum_metric), int(m.global_num_inst)]
            for m in metric.metrics]


def restore_metric(metric, state):
    for m, (total, count, global_total, global_count) in zip(metric.metrics, state):
        m.sum_metric, m.num_inst = total, count
        m.global_sum_metric, m.global_num_inst = global_total, global_count


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


def bind(model, contexts, cfg):
    """A training Module of model.symbol on `contexts`, bound for cfg's batch and input shape."""
    import mxnet as mx
    module = mx.mod.Module(model.symbol, context=contexts, fixed_param_names=model.fixed or None)
    data_shape = (cfg.batch_size,) + tuple(cfg.image_shape)
    # --mixup's labels are (N, classes) probabilities (common.train.mixup); the symbol is the same.
    label_shape = model.symbol.infer_shape(data=data_shape)[1][0] if cfg.mixup else (cfg.batch_size,)
    module.bind(data_shapes=[("data", data_shape)], label_shapes=[("softmax_label", label_shape)])
    return module


def _param_shapes(symbol, image_shape):
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1,) + tuple(image_shape))
    args = {n: s for n, s in zip(symbol.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    return args, dict(zip(symbol.list_auxiliary_states(), aux_shapes))


def start_params(module, model, cfg, start, rank=0):
    """Initialize fresh, or load the checkpoint `start` names (verified by find_start).

    rank: the kvstore rank, whose own BatchNorm statistics a mid-epoch checkpoint of
    a dist job holds (dist.own_aux)."""
    import mxnet as mx
    arg_shapes, aux_shapes = _param_shapes(model.symbol, cfg.image_shape)
    if start.tag is None:
        init_params(module, model, arg_shapes, aux_shapes, cfg.seed)
        return
    # An --ema run's .params are the averages; the raw weights, which training continues from, lie beside.
    raw = averaging.has_raw(start.manifest, cfg.prefix, start.tag)
    path = (checkpoint.raw_params_path if raw else checkpoint.params_path)(cfg.prefix, start.tag)
    what = f"checkpoint {path}"
    args, aux = split_params(mx.nd.load(path), path)
    aux = dist.own_aux(aux, rank)
    args = match_params(arg_shapes, args, "argument", what)
    aux = match_params(aux_shapes, aux, "auxiliary state", what)
    module.init_params(arg_params=args, aux_params=aux, allow_missing=False, force_init=True)
    where = f"batch {start.batch} of epoch {start.epoch + 1}" if start.batch else f"epoch {start.epoch}"
    log.info("resumed from %s (after %s)", what, where)


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
