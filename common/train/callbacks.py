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
import os
import time

import numpy as np

from .. import checkpoint, report
from ..fsutil import partial_path, remove_file
from ..cli import EXIT, UserError, WriteFailed, mxnet_reason

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EpochEnd:
    """A finished epoch (1-based) and what it produced.

    arg_params/aux_params: the parameters after the epoch (BatchNorm statistics
    averaged over devices), as saved (with --ema, the averages); record: its
    metrics.jsonl line; val: the validation figures of common.evaluate.summarize;
    raw: with --ema, the raw (arg_params, aux_params) the optimizer continues from.
    """
    epoch: int
    module: object
    arg_params: dict
    aux_params: dict
    record: dict
    val: dict
    raw: tuple = None

    @property
    def symbol(self):
        return self.module.symbol


class StopTraining(Exception):
    """Raised by a callback to end training; `last` is the last finished EpochEnd (or None);
    fields: more for the `final:` line ({name: value})."""

    def __init__(self, reason, fields=None):
        super().__init__(reason)
        self.last, self.fields = None, fields or {}


class EarlyStopping:
    """Epoch-end (--early-stopping PATIENCE): StopTraining once validation accuracy has not
    improved on the best epoch's for `patience` epochs.

    The best is resume.retain's: the highest accuracy, the earliest of equals, so its
    checkpoint is the one retention keeps (this callback follows the commit). history:
    (epoch, val acc) of the epochs a resumed run continues after (from PREFIX-metrics.jsonl).
    """

    def __init__(self, patience, history=()):
        self.patience, self.best_epoch, self.best_acc = patience, None, None
        for epoch, acc in history:
            self._see(epoch, acc)

    @classmethod
    def resumed(cls, patience, prefix, begin_epoch):
        """The callback of a run that continues after `begin_epoch` under `prefix`."""
        records = report.read_metrics(f"{prefix}-metrics.jsonl")
        return cls(patience, [(r["epoch"], r["val_acc"]) for r in records if r["epoch"] <= begin_epoch])

    def _see(self, epoch, acc):
        if self.best_acc is None or acc > self.best_acc:
            self.best_epoch, self.best_acc = epoch, acc

    def reason(self, epoch):
        """Why training ends after `epoch`, or None to go on."""
        if self.best_epoch is None or epoch - self.best_epoch < self.patience:
            return None
        return (f"--early-stopping {self.patience}: validation accuracy has not improved for {epoch - self.best_epoch} "
                f"epochs; the best is epoch {self.best_epoch} (val_acc={self.best_acc:.4f}), whose checkpoint "
                f"is kept (PREFIX-best.json)")

    def __call__(self, end):
        self._see(end.epoch, end.val["acc"])
        why = self.reason(end.epoch)
        if why:
            raise StopTraining(why, fields={"best_epoch": self.best_epoch, "best_val_acc": f"{self.best_acc:.4f}"})


class Diverged(UserError):
    """The training loss or a parameter is no longer finite."""
    status = EXIT["diverged"]


def speedometer(batch_size, frequent):
    """MXNet's Speedometer: images/s and the running metrics every `frequent` batches."""
    import mxnet as mx
    return mx.callback.Speedometer(batch_size, frequent, auto_reset=False)


class FirstBatch:
    """Batch-end: log, once, how long after the process started its first batch was trained
    (start-up: imports, checks, binding, the first batch itself)."""

    def __init__(self):
        self.done = False

    def __call__(self, param):
        if not self.done:
            self.done = True
            seconds = seconds_since_launch()
            if seconds is not None:
                log.info("first training batch done %.1f s after launch", seconds)


def seconds_since_launch():
    """Seconds since this process started (Linux: /proc; None elsewhere)."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        with open("/proc/self/stat", encoding="ascii") as f:
            # the command name, field 2, may hold spaces: count the fields after its ')'
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


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


class CommitCheckpoint:
    """Epoch-end: commit PREFIX-E (params, optimizer states, then the manifest), drop the
    mid-epoch checkpoint it supersedes, and keep only what resume.retain keeps.

    What the checkpoint holds is taken at once: copies of the parameters, the
    optimizer state written to a hidden file. The commit itself runs through
    `writer` (a background.Writer: while the next epoch trains). A failed write
    (disk full, a file size limit, a read-only folder) stops the run with one line;
    what was committed before stays intact. fields(): more for the manifest to
    record (a dict of JSON values), or None.

    When epochs end faster than their commits (a head trained on cached features:
    a fraction of a second an epoch, the whole network to write), a queued commit
    that retention would delete as soon as the later ones are in is skipped: `keep`
    later epochs were submitted and it is not the best of those submitted.
    """

    def __init__(self, prefix, identity, keep, writer, fields=None):
        self.prefix, self.identity, self.keep, self.writer, self.fields = prefix, identity, keep, writer, fields
        self._submitted = []  # (epoch, validation accuracy) of each commit submitted, in order

    def __call__(self, end):
        optimizer = end.module._optimizer  # Module exposes no public accessor
        info = {"epoch": end.epoch, "batch": 0, "run": self.identity, "val": end.val, "record": end.record,
                "num_update": optimizer.num_update, **(self.fields() if self.fields else {})}
        what = f"epoch {end.epoch}"
        states = checkpoint.states_path(self.prefix, end.epoch)
        taken = partial_path(states) + ".taken"
        try:
            _committing(what, lambda: end.module.save_optimizer_states(taken), path=states)
        except WriteFailed:
            remove_file(taken)
            raise
        # copy() is queued on the engine: the copies are of the parameters as they are now.
        arg_params, aux_params = _copies(end.arg_params), _copies(end.aux_params)
        raw = end.raw and (_copies(end.raw[0]), _copies(end.raw[1]))
        self._submitted.append((end.epoch, end.val["acc"]))
        self.writer.submit(lambda: self._commit(what, end.epoch, end.symbol, arg_params, aux_params, taken, info,
                                                raw))

    def superseded(self, epoch):
        """True if retention would delete epoch's checkpoint once the later ones submitted are
        committed: at least `keep` of them, and a better one (or an equal, earlier one) among all."""
        submitted = list(self._submitted)  # appended to by the training thread
        if sum(1 for e, _ in submitted if e > epoch) < self.keep:
            return False
        best = max(submitted, key=lambda item: (item[1], -item[0]))  # the earliest of equals, as retain
        return best[0] != epoch

    def _commit(self, what, epoch, symbol, arg_params, aux_params, taken, info, raw=None):
        from . import resume
        if self.superseded(epoch):
            remove_file(taken)
            log.info("epoch %d not committed: %d or more later epochs are queued and it is not the best", epoch,
                     self.keep)
            return
        try:
            _committing(what, lambda: checkpoint.commit(
                self.prefix, epoch, symbol=symbol, arg_params=arg_params, aux_params=aux_params,
                write_states=lambda tmp: os.replace(taken, tmp), info=info, raw=raw))
        finally:
            remove_file(taken)
        checkpoint.remove_checkpoint(self.prefix, checkpoint.RESUME)
        best = resume.retain(self.prefix, self.keep)
        log.info("committed %s (best so far: epoch %d)", checkpoint.manifest_path(self.prefix, epoch), best)


def _copies(params):
    return {k: v.copy() for k, v in params.items()}


def commit_mid_epoch(prefix, identity, metric_state, *, write=True, gather_aux=None, fields=None, ema=None):
    """The function that commits PREFIX-resume from a BatchEndParam (a preempted epoch).

    metric_state(metric): the training metric's sums, to resume them exactly.
    fields(): more for the manifest to record (as CommitCheckpoint's), or None.
    With a dist kvstore every worker calls it: gather_aux(aux_params) adds the
    other workers' BatchNorm statistics (dist.DistSync.with_worker_aux), and only
    rank 0 has write=True. ema: the run's ema.EMA, whose averages are then the .params
    and the raw weights the .raw.params.
    """
    def commit(param):
        module = param.locals["module"]
        arg_params, aux_params = module.get_params()
        if gather_aux is not None:
            aux_params = gather_aux(aux_params)
        if not write:
            return
        raw = None
        if ema is not None:
            raw, (arg_params, aux_params) = (arg_params, aux_params), ema.merged(arg_params, aux_params)
        info = {"epoch": param.epoch, "batch": param.nbatch + 1, "run": identity,
                "num_update": module._optimizer.num_update,
                "train_state": {"images": param.locals["images"], "seconds": param.locals["seconds"],
                                "metric": metric_state(param.eval_metric)}, **(fields() if fields else {})}
        _committing(f"epoch {param.epoch}, batch {param.nbatch + 1}", lambda: checkpoint.commit(
            prefix, checkpoint.RESUME, symbol=module.symbol, arg_params=arg_params, aux_params=aux_params,
            write_states=module.save_optimizer_states, info=info, raw=raw))
        log.info("committed the mid-epoch checkpoint %s (epoch %d, batch %d)",
                 checkpoint.manifest_path(prefix, checkpoint.RESUME), param.epoch, param.nbatch + 1)
    return commit


def _committing(what, commit, path=None):
    """commit(), with a failed write reported in one line (mx.nd.save, for arrays paramfile leaves
    to it, fails with an MXNetError).

    path: the file being written, for the message of an OSError that names none (a
    failed f.write does not).
    """
    import mxnet as mx
    try:
        return commit()
    except (OSError, mx.base.MXNetError) as exc:
        # mx.nd.save reports a short write without the reason (EFBIG, ENOSPC).
        reason = (f"{exc.strerror} ({exc.filename or path})" if isinstance(exc, OSError) and exc.strerror else
                  f"the write was cut short (a full disk or a file-size limit?): {mxnet_reason(exc)}")
        raise WriteFailed(f"cannot write the checkpoint of {what}: {reason}; the checkpoints committed "
                        f"before are intact") from None


def write_metrics(metrics_log):
    """An epoch-end callback that appends the epoch's record to a report.MetricsLog."""
    return lambda end: metrics_log.append(end.record)


class CurvePlot:
    """Epoch-end: draw PREFIX-curve.png (report.plot_curves) of the records so far, through
    `writer`.

    Often enough to follow a run, seldom enough to cost it little: an epoch's curve is
    drawn when the time since the last drawing began (or the run, for the first) is at
    least `spacing` times what that drawing took (FIRST_DRAWING_SECONDS for the first;
    spacing 0: every epoch). finish() draws what was skipped (the loop calls it when
    the run ends, whichever way).
    """
    FIRST_DRAWING_SECONDS = 0.5  # matplotlib's import and a first drawing, measured on 2 cores

    def __init__(self, metrics_log, writer, spacing):
        self.metrics_log, self.writer, self.spacing = metrics_log, writer, spacing
        self._began, self._seconds = time.monotonic(), self.FIRST_DRAWING_SECONDS
        self._drawn = len(metrics_log.records)

    def __call__(self, end):
        if time.monotonic() - self._began >= self.spacing * self._seconds:
            self._draw()

    def finish(self):
        if self._drawn < len(self.metrics_log.records):
            self._draw()

    def _draw(self):
        records, path = list(self.metrics_log.records), self.metrics_log.plot_path
        self._drawn = len(records)

        def draw():  # in the writer's thread; read back by the next epoch's __call__
            began = time.monotonic()
            report.plot_curves(records, path)
            self._began, self._seconds = began, time.monotonic() - began
        self.writer.submit(draw)

