"""Training with mx.mod.Module: devices, kvstore, optimizer, schedule, the epoch loop.

The loop is written out (not Module.fit) so that each epoch gets its own
iterator seed (an exact resume replays the same order), validation counts every
image exactly once, and each epoch's results land in checkpoints, metrics.jsonl
and a plot before the next one starts.
"""
import argparse
import logging
import math
import time

import numpy as np

from . import evaluate
from .cli import UserError, positive_int

log = logging.getLogger(__name__)

KVSTORES = ("device", "local", "dist_sync", "dist_device_sync")
SCHEDULES = ("step", "cosine")


def device_list(text):
    """argparse type: '0,1,2' -> [0, 1, 2]."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids like 0,1,2,3, got {text!r}")
    return ids


def epoch_list(text):
    """argparse type: '20,30' -> [20, 30] (increasing epochs >= 1); '' -> []."""
    try:
        epochs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        epochs = None
    if epochs is None or any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise argparse.ArgumentTypeError(f"expected increasing epochs like 20,30, got {text!r}")
    return epochs


def add_device_args(group):
    """--gpus IDS | --cpus N, for contexts()."""
    devices = group.add_mutually_exclusive_group()
    devices.add_argument("--gpus", metavar="IDS", type=device_list, help="GPU ids, e.g. 0,1,2,3")
    devices.add_argument("--cpus", metavar="N", type=positive_int,
                         help="number of CPU contexts (default 1 when --gpus is not given)")


def add_fit_args(parser):
    """The training argument group."""
    fit = parser.add_argument_group("training")
    add_device_args(fit)
    fit.add_argument("--kv-store", choices=KVSTORES, default="device", help="gradient aggregation")
    fit.add_argument("--batch-size", metavar="N", type=positive_int,
                     help="total over all devices; must divide by their number (default: 16 per device)")
    fit.add_argument("--num-epochs", metavar="N", type=positive_int, default=8, help="last epoch to train")
    fit.add_argument("--lr", metavar="X", type=float, default=0.01, help="base learning rate (SGD)")
    fit.add_argument("--mom", metavar="X", type=float, default=0.0, help="SGD momentum")
    fit.add_argument("--wd", metavar="X", type=float, default=0.0, help="weight decay")
    fit.add_argument("--lr-schedule", choices=SCHEDULES, default="step", help="decay shape")
    fit.add_argument("--lr-step-epochs", metavar="E,E", type=epoch_list, default="",
                     help="step schedule: epochs at which lr *= --lr-factor, e.g. 20,30 (default: none)")
    fit.add_argument("--lr-factor", metavar="X", type=float, default=0.1, help="step schedule: decay factor")
    fit.add_argument("--warmup-epochs", metavar="E", type=float, default=0.0,
                     help="linear warm-up from 0 to --lr over this many epochs")
    fit.add_argument("--top-k", metavar="K", type=positive_int, default=5, help="also report top-k accuracy")
    fit.add_argument("--disp-batches", metavar="N", type=positive_int, default=20, help="log speed every N batches")
    fit.add_argument("--model-prefix", metavar="PREFIX",
                     help="checkpoint prefix (default: model/DATAPREFIX-NETWORK-MODE)")
    fit.add_argument("--load-epoch", metavar="N", type=positive_int,
                     help="resume from PREFIX-EPOCH.params/.states of --model-prefix")
    fit.add_argument("--seed", metavar="S", type=int, default=0, help="random seed (weights, shuffle, augmentation)")
    return fit


def contexts(gpus=None, cpus=None):
    """MXNet contexts for --gpus ids or --cpus N (the same multi-device code path)."""
    import mxnet as mx
    if gpus is None:
        return [mx.cpu(i) for i in range(cpus or 1)]
    if not mx.runtime.Features().is_enabled("CUDA"):
        raise UserError(f"--gpus {','.join(map(str, gpus))}: this MXNet {mx.__version__} is the CPU "
                        f"build; install the CUDA build matching your driver (e.g. pip uninstall mxnet "
                        f"&& pip install mxnet-cu112=={mx.__version__}) or use --cpus N")
    available = mx.context.num_gpus()
    if max(gpus) >= available:
        raise UserError(f"--gpus {','.join(map(str, gpus))}: only GPUs 0..{available - 1} exist")
    return [mx.gpu(i) for i in gpus]


def check_dtype(dtype, ctxs):
    """float16 needs GPUs: MXNet 1.9.1 has no float16 matrix multiply on CPU."""
    if dtype == "float16" and any(ctx.device_type == "cpu" for ctx in ctxs):
        raise UserError("--dtype float16 needs --gpus (MXNet has no float16 matrix multiply on "
                        "CPU); valid on CPU contexts: float32")


def per_device_batch(batch_size, num_devices):
    """Images per device; the total must split evenly."""
    if batch_size % num_devices:
        raise UserError(f"--batch-size {batch_size} does not divide by the {num_devices} devices; "
                        f"use a multiple of {num_devices}")
    return batch_size // num_devices


def create_kvstore(kind):
    """The kvstore; dist_* ones need the DMLC_* variables MXNet's launcher sets."""
    import os
    import mxnet as mx
    if kind.startswith("dist") and "DMLC_ROLE" not in os.environ:
        raise UserError(f"--kv-store {kind} needs MXNet's launcher (mxnet/tools/launch.py), "
                        f"which sets DMLC_ROLE and the scheduler address; valid without it: device, local")
    return mx.kv.create(kind)


def lr_scheduler(schedule, lr, epoch_size, num_epochs, step_epochs, factor, warmup_epochs):
    """An mx.lr_scheduler counting updates, or None for a constant rate.

    epoch_size: updates per epoch. Steps and warm-up are given in epochs.
    """
    import mxnet as mx
    warmup = int(round(warmup_epochs * epoch_size))
    if schedule == "cosine":
        return mx.lr_scheduler.CosineScheduler(max_update=max(num_epochs * epoch_size, warmup + 1),
                                               base_lr=lr, final_lr=0.0, warmup_steps=warmup)
    steps = [e * epoch_size for e in step_epochs]
    if steps:
        return mx.lr_scheduler.MultiFactorScheduler(step=steps, factor=factor, base_lr=lr,
                                                    warmup_steps=warmup)
    if warmup:
        # Warm-up only. The step lies past the run's end: FactorScheduler logs a
        # "change" at every step, even with factor 1.
        return mx.lr_scheduler.FactorScheduler(step=num_epochs * epoch_size + 1, factor=1.0,
                                               base_lr=lr, warmup_steps=warmup)
    return None


def optimizer_params(lr, mom, wd, scheduler, dtype, begin_num_update):
    """SGD settings. begin_num_update puts a resumed schedule where it stopped."""
    params = {"learning_rate": lr, "momentum": mom, "wd": wd, "begin_num_update": begin_num_update,
              "multi_precision": dtype == "float16"}
    if scheduler is not None:
        params["lr_scheduler"] = scheduler
    return params


def initializer():
    """Xavier(gaussian, in, magnitude 2) for new weights, as in the published recipe;
    biases and BatchNorm parameters get their usual constants (by name suffix)."""
    import mxnet as mx
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def check_top_k(top_k, num_classes):
    if top_k > num_classes:
        raise UserError(f"--top-k {top_k} is more than the {num_classes} classes; valid: 1..{num_classes}")


def training_metric(top_k):
    import mxnet as mx
    return mx.metric.CompositeEvalMetric([mx.metric.Accuracy(), mx.metric.TopKAccuracy(top_k),
                                          mx.metric.CrossEntropy()])


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


def train_epoch(module, data_iter, metric, epoch, batch_size, disp_batches):
    """One pass over data_iter; returns (images seen, seconds)."""
    import mxnet as mx
    speedometer = mx.callback.Speedometer(batch_size, disp_batches, auto_reset=False)
    metric.reset()
    images, tic = 0, time.time()
    for nbatch, batch in enumerate(data_iter):
        module.forward_backward(batch)
        module.update()
        # update_metric reads the outputs back, which also waits for this batch
        module.update_metric(metric, batch.label)
        images += batch.data[0].shape[0] - batch.pad
        speedometer(mx.model.BatchEndParam(epoch=epoch, nbatch=nbatch, eval_metric=metric,
                                           locals=None))
    return images, time.time() - tic


def epoch_record(epoch, metric, val, lr, images, seconds, top_k):
    """One metrics.jsonl line: train and validation figures of an epoch."""
    train = dict(metric.get_name_value())
    record = {"epoch": epoch, "train_acc": train["accuracy"],
              f"train_top{top_k}": train[f"top_k_accuracy_{top_k}"], "train_loss": train["cross-entropy"]}
    record.update({f"val_{k}": v for k, v in val.items() if k != "images"})
    record.update({"lr": lr, "images_per_sec": images / max(seconds, 1e-9), "seconds": seconds})
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}


def current_lr(module):
    """The learning rate the optimizer uses now (after its last update)."""
    optimizer = module._optimizer  # Module exposes no public accessor
    scheduler = optimizer.lr_scheduler
    return float(scheduler(optimizer.num_update)) if scheduler else float(optimizer.lr)


def validate(module, record_set, image_shape, batch_size, threads, num_classes, top_k):
    """Validation figures over every image of `record_set` exactly once."""
    from .data import record_iter
    val_iter = record_iter(record_set, image_shape, batch_size, False, threads)
    probs, labels = evaluate.predict_probabilities(module, val_iter, record_set.labels)
    return evaluate.summarize(probs, labels, num_classes, top_k)


def updates_per_epoch(num_examples, batch_size, num_workers=1):
    """Batches per epoch and worker; ImageRecordIter rounds the last batch up."""
    return max(1, math.ceil(num_examples / num_workers / batch_size))


def check_finite(record):
    """Stop on a diverged run instead of checkpointing NaN weights."""
    if not np.isfinite(record["train_loss"]):
        raise UserError(f"epoch {record['epoch']}: training loss is {record['train_loss']}; "
                        f"the run diverged (try a lower --lr)")
