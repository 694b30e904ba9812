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


def parallel_map(func, items, workers, desc, unit="img", chunksize=8):
    """Yield func(item) for each item, in order, using `workers` processes.

    `func` must be a module-level function (it is pickled by name). With one
    worker everything runs in this process.
    """
    items = list(items)
    if not items:
        return
    with progress(total=len(items), desc=desc, unit=unit) as bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield _counted(bar, len(items), func(item))
            return
        pool = None
        try:
            with _sigint_blocked():
                pool = _CONTEXT.Pool(min(workers, len(items)), initializer=_init_worker)
            for result in pool.imap(func, items, chunksize=chunksize):
                yield _counted(bar, len(items), result)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


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
