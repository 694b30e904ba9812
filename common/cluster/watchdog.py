"""The process side of a launch.py job: no progress, no launcher or a failure ends the process.

A worker whose peer died blocks in MXNet's engine forever (a push that no server
will answer); its Python signal handlers never run there. A watchdog thread
sees that no batch has finished for FINETUNE_WATCHDOG_SECONDS and ends the
process with EXIT_STATUS, so that the launcher ends the job and the scheduler
can requeue it. A process started over ssh also ends when its stdin (the ssh
channel) closes: the launcher is gone, and nobody would stop it. And a worker
whose run fails or is preempted leaves at once (leaving_on_failure).
"""
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback

from ..cli import REPORTED, UserError, report

log = logging.getLogger(__name__)

SECONDS_VAR = "FINETUNE_WATCHDOG_SECONDS"
EOF_VAR = "FINETUNE_EXIT_ON_EOF"
EXIT_STATUS = 75  # EX_TEMPFAIL: the job failed for a reason a rerun may not meet


def seconds_from_env():
    """FINETUNE_WATCHDOG_SECONDS as a float, or None when unset."""
    text = os.environ.get(SECONDS_VAR)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise UserError(f"{SECONDS_VAR}={text!r}: expected a number of seconds > 0 (launch.py --watchdog-seconds)")
    return seconds


def _exit(reason):
    log.error("%s: ending this process (exit %d) so that the job ends", reason, EXIT_STATUS)
    logging.shutdown()
    os._exit(EXIT_STATUS)


def guard_process():
    """Call first in an entry script, before MXNet is imported (a server or scheduler runs
    inside that import): under launch.py over ssh, end when the channel closes; and a
    server or scheduler ignores stop signals.

    Slurm sends its SIGTERM to every process of a job at once. A server that died of it
    would leave the workers unable to finish the batch they agreed to stop after, and to
    commit it; the servers hold nothing worth saving (they only sum), and the launcher
    or Slurm ends them with SIGKILL once the workers are done.
    """
    if os.environ.get("DMLC_ROLE") in ("server", "scheduler"):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
    if os.environ.get(EOF_VAR) != "1":
        return

    def watch():
        # os.read, not sys.stdin: a daemon thread inside the buffered reader would
        # hold its lock at interpreter exit, and Python aborts.
        while os.read(0, 65536):
            pass
        _exit("the launcher's connection closed")
    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


class Watchdog:
    """Ends the process when beat() has not been called for `seconds` (a context manager)."""

    def __init__(self, seconds, what="no training progress"):
        self.seconds, self.what = seconds, what
        self._last, self._done = time.monotonic(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="watchdog")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def beat(self, *_):
        """Progress was made (any arguments are ignored: usable as a callback)."""
        self._last = time.monotonic()

    def _watch(self):
        while not self._done.wait(min(1.0, self.seconds / 4)):
            idle = time.monotonic() - self._last
            if idle > self.seconds:
                _exit(f"{self.what} for {idle:.0f} s (watchdog: {self.seconds:g} s)")


@contextlib.contextmanager
def job_watchdog(kv):
    """Under launch.py with a dist kvstore: a watchdog over the run (launch.py
    --watchdog-seconds); yields its beat, else None."""
    seconds = seconds_from_env()
    if seconds is None or not kv.type.startswith("dist"):
        yield None
        return
    with Watchdog(seconds) as dog:
        yield dog.beat


@contextlib.contextmanager
def leaving_on_failure(kv, prog):
    """Around a dist worker's run: whatever ends it early ends the process at once.

    The kvstore's goodbye when it is freed (a barrier with the other workers) would
    wait forever for peers still blocked in a push to this one, or abort the process
    ("terminate called without an active exception"); the launcher ends the rest of
    the job instead. Everything the run committed is on disk already. The one line
    (or a bug's traceback) and the exit status are what cli.run_entry would give.
    """
    try:
        yield
    except BaseException as exc:
        if not kv.type.startswith("dist"):
            raise
        if isinstance(exc, REPORTED):
            status = report(exc, prog)
        else:
            traceback.print_exc()
            status = 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
