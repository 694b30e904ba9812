"""Command-line plumbing shared by every entry point.

Bad input must end in one line that names the bad value and the valid ones, and
a non-zero exit, never a traceback: `UserError` carries such a line, the parser
below reports its own errors the same way, and `run_entry` turns both into exit
codes.
"""
import argparse
import collections
import logging
import math
import os
import sys

from tqdm import tqdm


class UserError(Exception):
    """A problem the user can fix (bad option, missing or corrupt file).

    The message is the whole report: one line naming the bad value and, where
    there is a closed set, the valid values.
    """


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


class _EarlyRecords(logging.Handler):
    """Holds the records logged before a run's log file exists; add_log_file writes them first."""

    def __init__(self, capacity=100000):
        super().__init__()
        self.records = collections.deque(maxlen=capacity)

    def emit(self, record):
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
    """A tqdm bar on stderr; in a log file (no TTY) it updates every 10 s, not 10 times a second."""
    kwargs.setdefault("mininterval", 0.2 if sys.stderr.isatty() else 10.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def run_entry(main, prog, argv=None):
    """Run `main(argv)`; report UserError/OSError as one line. Returns the exit status."""
    try:
        result = main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Disk full, permission denied mid-run: the OS message names the file.
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    # An int is an exit status; anything else (an entry's metrics) means success.
    return result if isinstance(result, int) else 0


def software_versions():
    """Software and hardware a result was produced with, for the files that record it."""
    import os
    import platform
    import cv2
    import mxnet as mx
    import numpy as np
    return {"python": platform.python_version(), "mxnet": mx.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
