"""Ordered parallel map over worker processes, with a progress bar."""
import multiprocessing

from ..cli import progress

# Workers are spawned, not forked: a fork of a process that has started MXNet's
# or OpenMP's thread pools can deadlock, and the workers need only NumPy/OpenCV.
_CONTEXT = multiprocessing.get_context("spawn")


def _init_worker():
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
        with _CONTEXT.Pool(min(workers, len(items)), initializer=_init_worker) as pool:
            for result in pool.imap(func, items, chunksize=chunksize):
                yield _counted(bar, len(items), result)


def _counted(bar, total, result):
    # Counted, and the bar closed after the last one, before it is handed out: a
    # consumer such as zip() may stop pulling then, leaving this generator suspended
    # (and its bar's last line unprinted) until it is garbage-collected.
    bar.update()
    if bar.n >= total:
        bar.close()
    return result
