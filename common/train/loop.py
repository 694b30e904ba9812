"""One training run: build the Module, start or resume it, train, checkpoint, report.

Each finished epoch E leaves, under the run's prefix (rank 0 only):
PREFIX-symbol.json, PREFIX-E.params and PREFIX-E.states (atomic, with .sha256),
a line in PREFIX-metrics.jsonl and the PREFIX-curve.png plot.
"""
import dataclasses
import logging
import os

from . import checkpoint, data, fit
from .cli import UserError
from .finetune import match_params
from .report import MetricsLog

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Schedule:
    """Optimizer and learning-rate schedule; epochs count whole passes over the data."""
    num_epochs: int = 8
    lr: float = 0.01
    mom: float = 0.0
    wd: float = 0.0
    kind: str = "step"  # or "cosine"
    step_epochs: list = dataclasses.field(default_factory=list)
    factor: float = 0.1
    warmup_epochs: float = 0.0


@dataclasses.dataclass
class RunConfig:
    """Everything about a run that is not the model, the data or the schedule.

    batch_size: total over devices (and per worker with a dist kvstore).
    image_shape: (C, H, W) network input. begin_epoch: 0, or the epoch to resume after.
    """
    prefix: str
    batch_size: int
    image_shape: tuple
    data_threads: int = 4
    top_k: int = 5
    disp_batches: int = 20
    seed: int = 0
    dtype: str = "float32"
    begin_epoch: int = 0


def check_resume(prefix, load_epoch, num_epochs):
    """Before anything is written: the files a --load-epoch resume needs, verified."""
    if not load_epoch:
        return
    if load_epoch >= num_epochs:
        raise UserError(f"--load-epoch {load_epoch} leaves nothing to train with --num-epochs {num_epochs}")
    for path in (checkpoint.symbol_path(prefix), checkpoint.params_path(prefix, load_epoch),
                 checkpoint.states_path(prefix, load_epoch)):
        if not os.path.isfile(path):
            raise UserError(f"--load-epoch {load_epoch}: {path} not found (--model-prefix {prefix})")
        checkpoint.verify_digest(path)


def run(model, dataset, contexts, kv, schedule, cfg):
    """Train `model` on `dataset`; returns the last epoch's validation figures.

    A resume (cfg.begin_epoch > 0) expects check_resume to have passed.
    """
    module = _bind(model, contexts, cfg)
    _start(module, model, cfg)
    epoch_size = fit.updates_per_epoch(len(dataset.train), cfg.batch_size, kv.num_workers)
    scheduler = fit.lr_scheduler(schedule.kind, schedule.lr, epoch_size, schedule.num_epochs,
                                 schedule.step_epochs, schedule.factor, schedule.warmup_epochs)
    module.init_optimizer(kvstore=kv, optimizer="sgd", optimizer_params=fit.optimizer_params(
        schedule.lr, schedule.mom, schedule.wd, scheduler, cfg.dtype, cfg.begin_epoch * epoch_size))
    if cfg.begin_epoch:
        module.load_optimizer_states(checkpoint.states_path(cfg.prefix, cfg.begin_epoch))
    return _epochs(module, dataset, kv, schedule, cfg)


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
        fit.init_params(module, model, arg_shapes, aux_shapes, cfg.seed)
        return
    what = f"checkpoint {cfg.prefix} epoch {cfg.begin_epoch}"
    _, args, aux = checkpoint.load_checkpoint(cfg.prefix, cfg.begin_epoch, what="--load-epoch checkpoint")
    args = match_params(arg_shapes, args, "argument", what)
    aux = match_params(aux_shapes, aux, "auxiliary state", what)
    module.init_params(arg_params=args, aux_params=aux, allow_missing=False, force_init=True)
    log.info("resumed from %s", what)


def _epochs(module, dataset, kv, schedule, cfg):
    metric = fit.training_metric(cfg.top_k)
    report = MetricsLog(cfg.prefix, cfg.begin_epoch) if kv.rank == 0 else None
    for epoch in range(cfg.begin_epoch, schedule.num_epochs):
        # A seed per epoch: a resumed run sees the same order and crops as an unbroken one.
        train_iter = data.record_iter(dataset.train, cfg.image_shape, cfg.batch_size, True,
                                      cfg.data_threads, seed=cfg.seed * 100003 + epoch,
                                      num_parts=kv.num_workers, part_index=kv.rank)
        images, seconds = fit.train_epoch(module, train_iter, metric, epoch, cfg.batch_size,
                                          cfg.disp_batches)
        # Each device keeps its own BatchNorm statistics; get_params averages them.
        # Every device takes that average, the one the checkpoint saves, so that
        # validation and a resumed run use exactly what an unbroken run uses.
        module.set_params(*module.get_params())
        val = fit.validate(module, dataset.val, cfg.image_shape, cfg.batch_size, cfg.data_threads,
                           dataset.num_classes, cfg.top_k)
        record = fit.epoch_record(epoch + 1, metric, val, fit.current_lr(module), images, seconds, cfg.top_k)
        fit.check_finite(record)
        log.info("Epoch[%d] Validation: acc=%.4f top%d=%.4f mean_class_acc=%.4f loss=%.4f "
                 "(%.1f images/s)", epoch, val["acc"], cfg.top_k, val[f"top{cfg.top_k}"],
                 val["mean_class_acc"], val["loss"], record["images_per_sec"])
        if report is not None:
            _save(module, cfg.prefix, epoch + 1)
            report.append(record)
    return val


def _save(module, prefix, epoch):
    arg_params, aux_params = module.get_params()
    checkpoint.save_checkpoint(prefix, epoch, module.symbol, arg_params, aux_params)
    checkpoint.save_file_atomic(checkpoint.states_path(prefix, epoch), module.save_optimizer_states)
    log.info("saved %s", checkpoint.params_path(prefix, epoch))
