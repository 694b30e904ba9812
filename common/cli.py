"""Command-line plumbing shared by every entry point.

Bad input must end in one line that names the bad value and the valid ones, and
a non-zero exit, never a traceback: `UserError` carries such a line, the parser
below reports its own errors the same way, and `run_entry` turns both into exit
codes.
"""
import argparse
import collections
import copy
import logging
import math
import os
import signal
import sys
import time

from tqdm import tqdm


# Exit statuses, by what went wrong, so that a scheduler's script can tell them apart
# (README: the exit status table). 2 is argparse's; 130 and 143 are a preemption's
# (common.train.preempt); launch.py adds 75 and a dead process's status.
EXIT = {"success": 0, "bad input or data": 1, "usage": 2, "missing file": 3, "no GPU build": 4,
        "diverged": 5, "I/O": 6}


class UserError(Exception):
    """A problem the user can fix (bad option value, corrupt file, mismatched data).

    The message is the whole report: one line naming the bad value and, where
    there is a closed set, the valid values. `status` is the exit status.
    """
    status = EXIT["bad input or data"]


class MissingFile(UserError):
    """A file or folder the command needs does not exist."""
    status = EXIT["missing file"]


class NoGPUBuild(UserError):
    """--gpus with the CPU build of MXNet."""
    status = EXIT["no GPU build"]


class WriteFailed(UserError):
    """A write or a transfer failed (full disk, file-size limit, permissions, network)."""
    status = EXIT["I/O"]


class Stop(Exception):
    """A deliberate early end with its own exit status (a preempted run): one line, that status."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class OneLineArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (argparse adds a usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' except for unset options, flags, and helps that say it."""

    def _get_help_string(self, action):
        # `is`, not `in`: 0 == False, and a default of 0 is worth showing.
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _int_at_least(low, text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _int_at_least(1, text)


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    return _int_at_least(0, text)


def int_at_least(low):
    """argparse type factory: an integer >= low."""
    def parse(text):
        return _int_at_least(low, text)
    parse.__name__ = f"int >= {low}"
    return parse


def int_in_range(low, high):
    """argparse type factory: an integer in [low, high]."""
    def parse(text):
        value = _int_at_least(low, text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value
    parse.__name__ = f"int in [{low}, {high}]"
    return parse


def float_range(low=None, high=None, *, low_open=False, high_open=False):
    """argparse type factory: a finite float in an interval, e.g. [0, 1) for momentum.

    low/high: bounds (None: unbounded); low_open/high_open: the bound itself is
    excluded. The error names the interval and the value given.
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = "a number " + " and ".join(bounds) if bounds else "a finite number"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value
    parse.__name__ = wanted
    return parse


positive_float = float_range(0, low_open=True)
nonnegative_float = float_range(0)


def mxnet_reason(exc):
    """The line of an MXNetError that says what went wrong (not 'Traceback ...', not a frame)."""
    frames = ("Traceback", "File ", "[bt]", "Stack trace")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(frames)), type(exc).__name__)


_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# logging `extra` for a record that belongs in the run's log file but would only
# clutter the console (full parameter lists, an error run_entry prints anyway).
FILE_ONLY = {"file_only": True}


class _Console(logging.StreamHandler):
    """The console handler: stderr as it is at each record (tests swap sys.stderr),
    without FILE_ONLY records."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        self.addFilter(lambda record: not getattr(record, "file_only", False))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; stderr is looked up instead
        pass


_FORMATTER = logging.Formatter()


class _EarlyRecords(logging.Handler):
    """Holds the records logged before a run's log file exists; add_log_file writes them first."""

    def __init__(self, capacity=100000):
        super().__init__()
        self.records = collections.deque(maxlen=capacity)

    def emit(self, record):
        # Kept as logged, a record's args and exc_info would keep their objects alive for the
        # whole process (on a dist worker without a log file, to its exit): a StopTraining holds
        # the module and its kvstore, whose goodbye at interpreter exit aborts the process.
        record = copy.copy(record)
        if record.exc_info:
            record.exc_text = record.exc_text or _FORMATTER.formatException(record.exc_info)
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        self.records.append(record)


def setup_logging(verbose=False, log_file_later=False):
    """Configure the root logger; called by entry points only (again in the same process: no-op).

    log_file_later: keep every record from now on, so that the log file the run
    opens later (add_log_file) holds the whole log, warnings included.
    """
    # MXNet logs "Subgraph backend MKLDNN is activated" at every bind unless told not to.
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in [h for h in root.handlers if isinstance(h, (_Console, _EarlyRecords))]:
        root.removeHandler(handler)
    root.addHandler(_Console())
    if log_file_later:
        root.addHandler(_EarlyRecords())
    logging.captureWarnings(True)  # Python warnings (MXNet's, numpy's) become log records


def add_log_file(path):
    """Also write the log to `path` (appending: a resumed run continues it), starting
    with what was logged since setup_logging(log_file_later=True).

    Returns the handler; remove_log_file(handler) detaches and closes it.
    """
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    for early in [h for h in root.handlers if isinstance(h, _EarlyRecords)]:
        root.removeHandler(early)
        for record in early.records:
            handler.handle(record)
    root.addHandler(handler)
    return handler


def remove_log_file(handler):
    logging.getLogger().removeHandler(handler)
    handler.close()


def progress(iterable=None, **kwargs):
    """Progress on stderr: a tqdm bar on a terminal, plain lines in a log file or pipe.

    tqdm redraws its bar with carriage returns, which a log file keeps as one long
    line of fragments; so without a TTY this prints 'DESC: N/TOTAL UNIT (P%), RATE
    UNIT/s, T s' lines instead, every `mininterval` seconds (default 10) and once at
    the end. Both take tqdm's arguments as the callers use them (desc, total,
    initial, unit, unit_scale, unit_divisor, mininterval) and offer iteration,
    update(n), close() and `with`. TQDM_DISABLE=1 in the environment prints nothing.
    """
    disable = _progress_disabled()
    if sys.stderr.isatty():
        kwargs.setdefault("mininterval", 0.2)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=sys.stderr, disable=disable, **kwargs)
    return PlainProgress(iterable, disable=disable, **kwargs)


def _progress_disabled():
    # Read per call (tqdm reads TQDM_* once, at import) and passed to tqdm too, so
    # both modes agree; tqdm alone would take TQDM_DISABLE=0 as "disable".
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


_clock = time.monotonic  # a module attribute so tests can drive time


class PlainProgress:
    """tqdm's interface (the part progress() offers) as plain, newline-ended lines."""

    def __init__(self, iterable=None, desc=None, total=None, initial=0, unit="it",
                 unit_scale=False, unit_divisor=1000, mininterval=10.0, disable=False):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.n = iterable, desc, total, initial
        self.unit, self.unit_scale, self.unit_divisor = unit, unit_scale, unit_divisor
        self.interval, self.disable, self.file = mininterval, disable, sys.stderr
        self._initial, self._closed = initial, False
        self._start = self._last = _clock()

    def update(self, n=1):
        self.n += n
        now = _clock()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def close(self):
        """Print the last line (once)."""
        if not self._closed:
            self._closed = True
            self._print(_clock())

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _amount(self, value):
        if self.unit_scale:
            return tqdm.format_sizeof(value, self.unit, self.unit_divisor)  # '1.18MB'
        return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.3g}"

    def _print(self, now):
        if self.disable:
            return
        elapsed = now - self._start
        unit = "" if self.unit_scale else f" {self.unit}"  # format_sizeof appends the unit
        line = f"{self.desc}: " if self.desc else ""
        line += self._amount(self.n)
        if self.total is not None:
            line += f"/{self._amount(self.total)}"
        line += unit
        if self.total:
            line += f" ({100 * self.n // self.total:.0f}%)"
        if elapsed > 0:  # the rate of this run: bytes resumed from `initial` do not count
            line += f", {self._amount((self.n - self._initial) / elapsed)}{unit}/s"
        self.file.write(f"{line}, {elapsed:.0f} s\n")
        self.file.flush()


def logging_failures(function, *args):
    """function(*args), with whatever ends it early also in the log (a run's log file).

    FILE_ONLY: the console gets the same from run_entry (or, for a bug, the traceback).
    """
    log = logging.getLogger(__name__)
    try:
        return function(*args)
    except (UserError, OSError) as exc:
        log.error("%s", exc, extra=FILE_ONLY)
        raise
    except Stop as exc:
        log.warning("%s", exc, extra=FILE_ONLY)
        raise
    except KeyboardInterrupt:
        log.error("interrupted", extra=FILE_ONLY)
        raise
    except Exception:
        log.exception("the run failed", extra=FILE_ONLY)
        raise


def run_entry(main, prog, argv=None):
    """Run `main(argv)`; report UserError/OSError as one line. Returns the exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # venv.ensure's, for the imports
    try:
        result = main(argv)
    except REPORTED as exc:
        return report(exc, prog)
    # An int is an exit status; anything else (an entry's metrics) means success.
    return result if isinstance(result, int) else 0


REPORTED = (UserError, Stop, OSError, KeyboardInterrupt)  # what report() turns into one line


def report(exc, prog):
    """Print the one line for a REPORTED exception that ended `prog`; returns the exit status."""
    if isinstance(exc, Stop):
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`predict.py ... | head`): no error to report, and
        # nothing may be flushed to the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a process killed by SIGPIPE reports, as `cat` would
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    # UserError, or OSError: disk full, permission denied mid-run (the OS message names the file).
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exc.status if isinstance(exc, UserError) else EXIT["I/O"]


def software_versions():
    """Software and hardware a result was produced with, for the files that record it."""
    import platform
    import cv2
    import numpy as np
    return {"python": platform.python_version(), "mxnet": _mxnet_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}


def _mxnet_version():
    """MXNet's version, from the installed package's metadata unless MXNet is loaded:
    prepare_data.sh does not import it (1.5-2 s) just to record its version."""
    import importlib.metadata
    loaded = sys.modules.get("mxnet")
    if loaded is not None:
        return loaded.__version__
    try:
        return importlib.metadata.version("mxnet")
    except importlib.metadata.PackageNotFoundError:
        import mxnet as mx  # an MXNet on the path without package metadata (a source build)
        return mx.__version__
