"""Epoch-end writes (the curve plot, the checkpoint commit) off the training path.

A Writer runs them in one background thread, in the order they were submitted,
while the next epoch trains: the plot and the commit's digests and fsyncs no
longer stop the devices at each epoch's end. What they write is taken when they
are submitted (copies of the parameters, the optimizer state in a file), so the
next epoch's updates cannot reach it.

A failed write stops the run in the training thread: after the batch during
which it happened (batch_end), at the next submit, or at join. Join before
anything that needs the writes done: a mid-epoch commit, a stop that requeues
the job, the end of the run (leaving the `with` block joins).
"""
import concurrent.futures
import logging

from ..cli import Stop
from .callbacks import StopTraining

log = logging.getLogger(__name__)


class Writer:
    """One background thread for epoch-end writes, run in order; a failure raised here."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-end-writes")
        self._pending, self._closing = [], []

    def at_close(self, submit):
        """Call submit() when the block ends, whichever way, before the last join: the
        writes it submits (a curve that was not drawn yet) end the run's writes."""
        self._closing.append(submit)

    def submit(self, write):
        """Queue write() (no arguments); first raise the failure of an earlier one, if any."""
        self.raise_failure()
        self._pending.append(self._pool.submit(write))

    def raise_failure(self):
        """Raise the exception of the first finished write that failed (and forget the finished)."""
        finished = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in finished:
            future.result()

    def batch_end(self, param):
        """A batch-end callback: a failed write stops training after the batch it failed in."""
        self.raise_failure()

    def join(self):
        """Wait for every queued write; raise the first failure among them."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)
        for future in pending:
            future.result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            for submit in self._closing:
                submit()
            self.join()
        except Exception as failure:
            # A deliberate stop (early stopping, a signal) would hide a checkpoint that was not
            # written; any other error is the cause, and the write's failure is only logged.
            if exc is None or isinstance(exc, (StopTraining, Stop)):
                raise
            log.error("an epoch-end write failed as well: %s", failure)
        finally:
            self._pool.shutdown(wait=True)
        return False


class Synchronous:
    """A Writer that writes at once, in the calling thread (a run of one epoch-end, a test)."""

    @staticmethod
    def submit(write):
        write()

    def at_close(self, submit):
        pass  # a synchronous write left nothing behind

    def batch_end(self, param):
        pass

    def join(self):
        pass
