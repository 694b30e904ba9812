"""The optimizer and its learning-rate schedule: SGD settings, warm-up, steps, cosine.

Epochs count whole passes over the training data; MXNet's schedulers count
updates, so every epoch figure is converted with the number of updates per
epoch (per worker, with a distributed kvstore).
"""
import argparse
import dataclasses
import logging
import math

from ..cli import UserError, float_range, nonnegative_float, positive_float, positive_int

log = logging.getLogger(__name__)

SCHEDULES = ("step", "cosine")


@dataclasses.dataclass
class Schedule:
    """Optimizer and learning-rate schedule; epochs count whole passes over the data.

    num_epochs: last epoch to train. lr: base learning rate. mom, wd: SGD momentum
    and weight decay. kind: 'step' or 'cosine'. step_epochs: epochs after which a
    step schedule multiplies lr by `factor`. warmup_epochs: linear ramp from 0.
    """
    num_epochs: int
    lr: float
    mom: float
    wd: float
    kind: str = "step"
    step_epochs: list = dataclasses.field(default_factory=list)
    factor: float = 0.1
    warmup_epochs: float = 0.0
    clip_gradient: float = None


def epoch_list(text):
    """argparse type: '20,30' -> [20, 30] (increasing epochs >= 1); '' -> []."""
    try:
        epochs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        epochs = None
    if epochs is None or any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise argparse.ArgumentTypeError(f"expected increasing epochs like 20,30, got {text!r}")
    return epochs


def add_schedule_args(parser):
    """The optimizer argument group. Epochs, lr, momentum and weight decay have no
    default here: the entry script's recipe sets them (train_caltech.py RECIPE)."""
    group = parser.add_argument_group("optimizer (SGD) and schedule")
    group.add_argument("--num-epochs", metavar="N", type=positive_int, help="last epoch to train")
    group.add_argument("--lr", metavar="X", type=positive_float, help="base learning rate (> 0)")
    group.add_argument("--mom", metavar="X", type=float_range(0, 1, high_open=True),
                       help="SGD momentum, in [0, 1)")
    group.add_argument("--wd", metavar="X", type=nonnegative_float, help="weight decay (>= 0)")
    group.add_argument("--lr-schedule", choices=SCHEDULES, default="step", help="decay shape")
    group.add_argument("--lr-step-epochs", metavar="E,E", type=epoch_list, default="",
                       help="step schedule: epochs at which lr *= --lr-factor, e.g. 20,30 (default: none)")
    group.add_argument("--lr-factor", metavar="X", type=float_range(0, 1, low_open=True), default=0.1,
                       help="step schedule: decay factor, in (0, 1]")
    group.add_argument("--warmup-epochs", metavar="E", type=nonnegative_float, default=0.0,
                       help="linear warm-up from 0 to --lr over this many epochs (>= 0)")
    group.add_argument("--no-wd-bn-bias", dest="no_wd_bn_bias", action="store_true", default=False,
                       help="no weight decay on BatchNorm gamma/beta and on biases (MXNet already spares "
                            "betas and biases; this also spares the gammas); only weights decay (default: off; "
                            "on with --recipe modern)")
    group.add_argument("--wd-bn-bias", dest="no_wd_bn_bias", action="store_false",
                       help="MXNet's rule, --recipe classic's (default): weights and BatchNorm gammas "
                            "decay; switches off --recipe modern's --no-wd-bn-bias")
    group.add_argument("--clip-gradient", metavar="X", type=positive_float,
                       help="clip every gradient element to [-X, X], X > 0 (default: no clipping)")
    return group


def schedule_from_args(args):
    """The Schedule the parsed options describe.

    Warns of steps or a warm-up this run does not get to: they act only if the run
    is continued later with a larger --num-epochs.
    """
    late = [e for e in args.lr_step_epochs if e >= args.num_epochs]
    if late:
        log.warning("--lr-step-epochs %s: the step after epoch %d comes at or after the last epoch "
                    "(--num-epochs %d); it acts only if the run is continued with more epochs",
                    ",".join(map(str, args.lr_step_epochs)), late[0], args.num_epochs)
    if args.warmup_epochs >= args.num_epochs:
        log.warning("--warmup-epochs %g does not end before the last epoch (--num-epochs %d): "
                    "the learning rate never reaches --lr in this run", args.warmup_epochs, args.num_epochs)
    return Schedule(num_epochs=args.num_epochs, lr=args.lr, mom=args.mom, wd=args.wd,
                    kind=args.lr_schedule, step_epochs=args.lr_step_epochs, factor=args.lr_factor,
                    warmup_epochs=args.warmup_epochs, clip_gradient=args.clip_gradient)


def lr_scheduler(schedule, epoch_size):
    """An mx.lr_scheduler counting updates, or None for a constant rate.

    epoch_size: updates per epoch. Steps and warm-up are given in epochs.
    """
    import mxnet as mx
    warmup = int(round(schedule.warmup_epochs * epoch_size))
    if schedule.kind == "cosine":
        return mx.lr_scheduler.CosineScheduler(max_update=max(schedule.num_epochs * epoch_size, warmup + 1),
                                               base_lr=schedule.lr, final_lr=0.0, warmup_steps=warmup)
    steps = [e * epoch_size for e in schedule.step_epochs]
    if steps:
        return mx.lr_scheduler.MultiFactorScheduler(step=steps, factor=schedule.factor,
                                                    base_lr=schedule.lr, warmup_steps=warmup)
    if warmup:
        # Warm-up only. The step lies past the run's end: FactorScheduler logs a
        # "change" at every step, even with factor 1.
        return mx.lr_scheduler.FactorScheduler(step=schedule.num_epochs * epoch_size + 1, factor=1.0,
                                               base_lr=schedule.lr, warmup_steps=warmup)
    return None


def optimizer_params(schedule, *, epoch_size, dtype, begin_update=0):
    """SGD settings; a resumed run starts its schedule at the update it stopped after."""
    params = {"learning_rate": schedule.lr, "momentum": schedule.mom, "wd": schedule.wd,
              "begin_num_update": begin_update, "multi_precision": dtype == "float16"}
    scheduler = lr_scheduler(schedule, epoch_size)
    if scheduler is not None:
        params["lr_scheduler"] = scheduler
    if schedule.clip_gradient is not None:
        params["clip_gradient"] = schedule.clip_gradient
    return params


def current_lr(module):
    """The learning rate the optimizer uses now (after its last update)."""
    optimizer = module._optimizer  # Module exposes no public accessor
    scheduler = optimizer.lr_scheduler
    return float(scheduler(optimizer.num_update)) if scheduler else float(optimizer.lr)


def updates_per_epoch(num_examples, batch_size, num_workers=1):
    """Batches per epoch and worker; ImageRecordIter rounds the last batch up.

    With several workers each trains on N // W images an epoch (common.train.sampling):
    the same number of batches for all, since one with a batch more would wait
    forever for the others' push.
    """
    if num_examples < num_workers:
        raise UserError(f"{num_examples} training images cannot give each of {num_workers} workers one; "
                        f"valid: at most {num_examples} workers")
    return math.ceil(num_examples // num_workers / batch_size)
