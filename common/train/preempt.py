"""Preemption: SIGTERM, SIGINT and SIGUSR1 end a run cleanly, at a batch boundary.

Schedulers send SIGTERM before they kill a job (and `sbatch --signal=B:USR1@90`
sends SIGUSR1 before a time limit); a user sends SIGINT with Ctrl-C. Raising
from a signal handler could land anywhere, inside MXNet's kvstore updater
callback even, where ctypes swallows the exception and a parameter's update is
skipped. So the handler only records the signal; the batch-end callback finishes
the batch, commits a mid-epoch checkpoint and stops with the signal's exit
status (130 for SIGINT, 143 otherwise). A signal during validation or a commit is
acted on at the end of that epoch, after its commit. A second signal (but not a
SIGTERM repeated within DUPLICATE_SECONDS) stops at once, without a checkpoint. With --requeue under Slurm, SIGUSR1 also requeues
the job (`scontrol requeue`), exactly once; Slurm then ends the job with a SIGTERM,
which may come before scontrol has returned: the run is stopping with its
checkpoint committed already, so that SIGTERM is ignored, not a second signal.
"""
import logging
import os
import signal
import subprocess
import time

from ..cli import Stop, UserError

log = logging.getLogger(__name__)

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 143}
# A job's srun steps get Slurm's SIGTERM from their slurmstepd and again from their srun:
# one request, twice, a moment apart. A second SIGINT (Ctrl-C) always stops at once.
DUPLICATE_SECONDS = 5


class Preempted(Stop):
    """Training ended on a signal, after committing what it had."""


def slurm_job():
    """The job id `scontrol requeue` takes ('123', or '123_4' for an array task), or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def check_requeue(requeue):
    """--requeue needs a Slurm job to requeue."""
    if requeue and slurm_job() is None:
        raise UserError("--requeue: this process is not a Slurm job (no SLURM_JOB_ID); run it with sbatch, "
                        "or leave --requeue out")


class Preemption:
    """Catches the signals while installed; call batch_end/epoch_end from the loop's callbacks.

    commit_mid_epoch(param): commits the mid-epoch checkpoint of a BatchEndParam.
    agree(flag): with a dist kvstore, True on every worker if flag is on any
    (common.train.dist.DistSync.any), so that all of them stop after the same batch.
    settle(): finishes the epoch-end writes still under way (background.Writer.join);
    called before the mid-epoch commit and before a stop requeues the job.
    """

    def __init__(self, commit_mid_epoch, requeue=False, agree=None, settle=lambda: None):
        self.commit_mid_epoch, self.requeue, self.agree, self.settle = commit_mid_epoch, requeue, agree, settle
        self.signum, self._previous, self._requeued, self._first = None, {}, False, None

    def __enter__(self):
        for signum in EXIT_STATUS:
            self._previous[signum] = signal.signal(signum, self._caught)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            # Slurm's SIGTERM for the requeued job may still be on its way: ignored,
            # it cannot cut short the exit of a run that committed its checkpoint.
            requeued = self._requeued and signum == signal.SIGTERM
            signal.signal(signum, signal.SIG_IGN if requeued else handler)

    def _caught(self, signum, frame):
        name = signal.Signals(signum).name
        if self._requeued and signum == signal.SIGTERM:
            log.info("SIGTERM from Slurm for the requeued job: stopping as planned")
            return
        if self.signum is not None and self._same_request(signum):
            log.info("%s: the stop request under way (Slurm signals a job's steps and their srun alike)", name)
            self._first = self._first or (signum, time.monotonic())
            return
        if self.signum is not None:
            # Not an exception: it could surface inside an MXNet callback and be lost.
            log.error("second signal (%s): stopping now, without a checkpoint", name)
            logging.shutdown()
            os._exit(EXIT_STATUS[signum])
        self.signum, self._first = signum, (signum, time.monotonic())
        log.warning("%s received: stopping after this batch with a checkpoint (send it again to stop at once)",
                    name)

    def _same_request(self, signum):
        """A signal that repeats the stop under way rather than asking to stop at once: the
        first one this worker gets after the others' agreement stopped it, or a SIGTERM
        within DUPLICATE_SECONDS of the first."""
        if self._first is None:
            return True
        first, at = self._first
        return signum == first == signal.SIGTERM and time.monotonic() - at < DUPLICATE_SECONDS

    def batch_end(self, param):
        if not self._stopping():
            return
        self.settle()  # the last epoch's commit first: it drops the mid-epoch checkpoint it supersedes
        self.commit_mid_epoch(param)
        self._stop(f"epoch {param.epoch}, batch {param.nbatch + 1}")

    def epoch_end(self, end):
        if self._stopping():
            self.settle()  # this epoch's commit, before the job is requeued (and killed)
            self._stop(f"the end of epoch {end.epoch}")

    def _stopping(self):
        if self.agree is None:
            return self.signum is not None
        # Every worker asks, every batch: a worker that stopped alone would leave the others
        # waiting. A signal arriving during the question counts at the next batch.
        if not self.agree(self.signum is not None):
            return False
        if self.signum is None:
            log.warning("another worker received a stop signal: stopping after this batch")
            self.signum = signal.SIGTERM
        return True

    def _stop(self, where):
        name = signal.Signals(self.signum).name
        if self.signum == signal.SIGUSR1 and self.requeue:
            self._requeue()
        raise Preempted(f"{name}: stopped at {where}; the same command resumes from there",
                        EXIT_STATUS[self.signum])

    def _requeue(self):
        if self._requeued:
            return
        self._requeued = True
        job = slurm_job()
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("scontrol requeue %s could not run: %s", job, exc)
            return
        if result.returncode:
            log.error("scontrol requeue %s failed (exit %d): %s", job, result.returncode,
                      (result.stderr or result.stdout).strip())
        else:
            log.info("requeued Slurm job %s", job)
