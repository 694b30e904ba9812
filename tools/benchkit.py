"""What every benchmark under bench/ shares: a work folder, subprocesses that cannot
outlive their time limit, median/min/max summaries, and the conditions of a run."""
import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile

from common.cli import UserError, positive_int
from common.threads import USER_SETTINGS


def add_run_args(parser, default_out, timeout=900):
    """--timeout, --out and --workdir, as every bench takes them, on `parser` (or a group of it)."""
    parser.add_argument("--timeout", metavar="S", type=positive_int, default=timeout, help="seconds per run")
    parser.add_argument("--out", metavar="JSON", default=default_out, help="results file")
    parser.add_argument("--workdir", metavar="DIR", help="work folder (default: a temporary one, removed)")


def make_workdir(path, prefix):
    """Create (or accept an empty) work folder; returns (path, remove_at_end).

    path None: a new temporary folder named prefix-*, to be removed at the end.
    """
    if path is None:
        return tempfile.mkdtemp(prefix=f"{prefix}-"), True
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        # Stale files would change the work (im2rec packs every PREFIX*.lst it finds).
        raise UserError(f"--workdir {path}: must be a new or empty folder")
    os.makedirs(path, exist_ok=True)
    return path, False


@contextlib.contextmanager
def work_folder(path, prefix, out):
    """The work folder of a benchmark that writes `out` (make_workdir), removed at the end
    unless it was given; out's folder is made first, before minutes of runs."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    work, remove = make_workdir(path, prefix)
    try:
        yield work
    finally:
        if remove:
            shutil.rmtree(work, ignore_errors=True)


def run_group(cmd, timeout, started=None, **popen):
    """Run cmd in its own process group; returns (exit code, stdout + stderr).

    started: called with the Popen object once the process exists (its pid is the
    group's id), e.g. to watch the group while it runs.
    popen: more subprocess.Popen arguments (env, cwd).

    On timeout the whole group is killed (children that a tool forks would
    otherwise outlive it, blocked on their queues) and RuntimeError is raised.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)
    if started is not None:
        started(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"timed out after {timeout} s (--timeout)") from None
    return proc.returncode, output


def child_env(**extra):
    """This process's environment for a benchmarked command, plus `extra`: without the
    user's OpenMP and MXNet settings (OMP_NUM_THREADS, MXNET_*), which would change what
    is measured, nor a job's DMLC_* roles (a command would think launch.py started it);
    progress bars off."""
    env = {k: v for k, v in os.environ.items()
           if k not in USER_SETTINGS and not k.startswith(("MXNET_", "DMLC_"))}
    return {**env, "TQDM_DISABLE": "1", **extra}


def failure_line(output):
    """The line of a failed command's output that says why: its last 'error:' line (a
    one-line error, a traceback's exception; a launch.py job's worker before the launcher's
    own lines), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    return (errors or lines or ["(no output)"])[-1]


def spread(values):
    """{'median', 'min', 'max'} of a non-empty list of figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine():
    """The machine and software a figure was measured with."""
    import cv2
    import mxnet as mx
    import numpy as np
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "mxnet": mx.__version__,
            "opencv": cv2.__version__, "numpy": np.__version__, "opencv_threads": cv2.getNumThreads(),
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def thread_list(text):
    """argparse type: '1,2' -> [1, 2] (each >= 1, duplicates dropped, order kept)."""
    try:
        values = [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1, e.g. 1,2, got {text!r}") from None
    return list(dict.fromkeys(values))
