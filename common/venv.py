"""Entry scripts run in the project's environment, however they were started.

`make demo` and `make test` install the pinned requirements into .venv; a user
who then types `python train_caltech.py ...` with another Python would get a
traceback (`No module named 'tqdm'`). Each entry script calls ensure() before
importing anything else: in the project's .venv it returns at once; started by
a Python that lacks the requirements, it re-runs the same command with
.venv/bin/python when that exists, and otherwise says in one line what to do.

Standard library only: this runs before the requirements are known to be there.
"""
import importlib.util
import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
# Import names of requirements.txt's packages (opencv-python-headless is cv2).
REQUIRED = ("mxnet", "numpy", "cv2", "requests", "tqdm", "matplotlib", "sklearn")
_REEXEC_MARK = "FINETUNE_VENV_REEXEC"  # set on the re-run, so it cannot loop


def missing_modules():
    """The required modules this Python cannot find (found without importing them)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def ensure(prog):
    """Return if the requirements are importable; else re-exec under .venv or exit 1.

    Also makes a Ctrl-C during the imports that follow (MXNet's take seconds) end
    in one line instead of a traceback; cli.run_entry restores Python's handler.
    """
    signal.signal(signal.SIGINT, lambda *_: _interrupted(prog))
    missing = missing_modules()
    if not missing:
        # The mark guards this process only: a python3 it starts (launch.py's roles) may re-exec too.
        os.environ.pop(_REEXEC_MARK, None)
        return
    if os.access(VENV_PYTHON, os.X_OK) and not os.environ.get(_REEXEC_MARK):
        os.environ[_REEXEC_MARK] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON] + _same_command())
    fix = ("reinstall it with `make clean-venv test`" if os.environ.get(_REEXEC_MARK) else
           "create it with `make test` (or `make demo`), then run this again")
    sys.stderr.write(f"{prog}: error: Python module {missing[0]!r} is missing from {sys.executable} "
                     f"and this project's .venv is not usable; {fix}\n")
    sys.exit(1)


def _same_command():
    """This process's command line, for another Python: `-m MODULE` or the script's path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name] if spec is not None else [os.path.abspath(sys.argv[0])]
    return head + sys.argv[1:]


def _interrupted(prog):
    sys.stderr.write(f"{prog}: interrupted\n")
    raise SystemExit(130)
