"""Ordered parallel map over worker processes, with a progress bar.

Ctrl-C is the parent's to handle: the workers ignore SIGINT (a terminal sends it
to the whole process group), so that the parent alone stops, terminates the pool
and reports one line, instead of every worker printing a traceback and the pool
hanging on its dead workers.
"""
import contextlib
import multiprocessing
import signal

from ..cli import progress

# Workers are spawned, not forked: a fork of a process that has started MXNet's
# or OpenMP's thread pools can deadlock, and the workers need only NumPy/OpenCV.
_CONTEXT = multiprocessing.get_context("spawn")


def _init_worker():
    # Blocked since before the spawn (see _sigint_blocked): ignored from now on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import cv2
    # One OpenCV thread per worker process: the processes are the parallelism.
    cv2.setNumThreads(1)


class WorkerPool:
    """`workers` spawned processes, started at the first parallel_map that needs
    them and shared by every later one: a run spawns its workers once (a spawn
    imports NumPy and OpenCV afresh, ~0.3 s of CPU a worker), not once per step.
    With one worker nothing is spawned. Use it as a context manager: leaving it
    terminates the processes.
    """

    def __init__(self, workers):
        self.workers = workers
        self._pool = None

    def get(self):
        if self._pool is None:
            with _sigint_blocked():
                self._pool = _CONTEXT.Pool(self.workers, initializer=_init_worker)
        return self._pool

    def close(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parallel_map(func, items, workers, desc, unit="img", chunksize=8):
    """Yield func(item) for each item, in order, using `workers` processes: a
    count (a pool of its own, closed at the end) or a WorkerPool (left open).

    `func` must be a module-level function (it is pickled by name). With one
    worker, or one item, everything runs in this process.
    """
    items = list(items)
    if not items:
        return
    shared = isinstance(workers, WorkerPool)
    count = workers.workers if shared else workers
    with progress(total=len(items), desc=desc, unit=unit) as bar:
        if count <= 1 or len(items) <= 1:
            for item in items:
                yield _counted(bar, len(items), func(item))
            return
        pool = workers if shared else WorkerPool(min(count, len(items)))
        try:
            for result in pool.get().imap(func, items, chunksize=chunksize):
                yield _counted(bar, len(items), result)
        except BaseException:
            # Stopped early (an error, Ctrl-C, the consumer quit): its workers may
            # still be busy with this map's items. A consumer that stops pulling after
            # the last result (zip) closes a generator with nothing left to do.
            if bar.n < len(items):
                pool.close()
            raise
        finally:
            if not shared:
                pool.close()


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT held back while workers start: a spawned child inherits the blocked
    signal and cannot be interrupted in its imports, before _init_worker ignores it.
    A Ctrl-C meanwhile reaches this process when the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _counted(bar, total, result):
    # Counted, and the bar closed after the last one, before it is handed out: a
    # consumer such as zip() may stop pulling then, leaving this generator suspended
    # (and its bar's last line unprinted) until it is garbage-collected.
    bar.update()
    if bar.n >= total:
        bar.close()
    return result
