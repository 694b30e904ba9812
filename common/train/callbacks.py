"""What happens after each batch and each epoch, as callbacks the loop calls in order.

Batch-end callbacks take MXNet's own BatchEndParam (epoch, nbatch, eval_metric,
locals), so mx.callback.Speedometer is one; `locals` holds the 'module' and the
'batch'. Epoch-end callbacks take an EpochEnd: MXNet's epoch_end_callback
arguments (epoch, symbol, arg_params, aux_params) plus the module, the epoch's
metrics.jsonl record and its validation figures. Epochs are numbered from 1:
epoch E is the E-th pass, and its checkpoint is PREFIX-000E.params.

A callback stops training by raising StopTraining (or UserError for a failure);
the loop attaches the last finished epoch to a StopTraining and lets it through.
"""
import dataclasses
import logging

import numpy as np

from .. import checkpoint
from ..cli import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EpochEnd:
    """A finished epoch (1-based) and what it produced.

    arg_params/aux_params: the parameters after the epoch (BatchNorm statistics
    averaged over devices), as saved; record: its metrics.jsonl line; val: the
    validation figures of common.evaluate.summarize.
    """
    epoch: int
    module: object
    arg_params: dict
    aux_params: dict
    record: dict
    val: dict

    @property
    def symbol(self):
        return self.module.symbol


class StopTraining(Exception):
    """Raised by a callback to end training; `last` is the last finished EpochEnd (or None)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.last = None


class Diverged(UserError):
    """The training loss or a parameter is no longer finite."""


def speedometer(batch_size, frequent):
    """MXNet's Speedometer: images/s and the running metrics every `frequent` batches."""
    import mxnet as mx
    return mx.callback.Speedometer(batch_size, frequent, auto_reset=False)


class DivergenceGuard:
    """Stop a diverged run before it writes a checkpoint with NaN or Inf in it.

    After each batch it checks the running training loss (a NaN in any batch makes
    the average NaN); after each epoch, before anything is saved, every parameter.
    """

    def batch_end(self, param):
        for name, value in param.eval_metric.get_name_value():
            if name == "cross-entropy" and not np.isfinite(value):
                raise Diverged(f"epoch {param.epoch}, batch {param.nbatch + 1}: training loss is "
                               f"{value}; the run diverged (try a lower --lr)")

    def epoch_end(self, end):
        for kind, params in (("parameter", end.arg_params), ("auxiliary state", end.aux_params)):
            bad = sorted(name for name, array in params.items() if not np.isfinite(array.asnumpy()).all())
            if bad:
                raise Diverged(f"epoch {end.epoch}: {kind} {bad[0]} holds NaN or Inf "
                               f"({len(bad)} such); the run diverged (try a lower --lr); "
                               f"nothing of this epoch was saved")


def log_epoch(top_k):
    """An epoch-end callback that logs the epoch's validation figures."""
    def callback(end):
        val, record = end.val, end.record
        log.info("Epoch[%d] Validation: acc=%.4f top%d=%.4f mean_class_acc=%.4f loss=%.4f "
                 "(train acc=%.4f loss=%.4f, %.1f images/s)", end.epoch, val["acc"], top_k,
                 val[f"top{top_k}"], val["mean_class_acc"], val["loss"], record["train_acc"],
                 record["train_loss"], record["images_per_sec"])
    return callback


def save_checkpoint(prefix):
    """An epoch-end callback that writes PREFIX-symbol.json, PREFIX-E.params and PREFIX-E.states."""
    def callback(end):
        checkpoint.save_checkpoint(prefix, end.epoch, end.symbol, end.arg_params, end.aux_params)
        checkpoint.save_file_atomic(checkpoint.states_path(prefix, end.epoch),
                                    end.module.save_optimizer_states)
        log.info("saved %s", checkpoint.params_path(prefix, end.epoch))
    return callback


def write_metrics(metrics_log):
    """An epoch-end callback that appends the epoch's record to a report.MetricsLog."""
    return lambda end: metrics_log.append(end.record)
