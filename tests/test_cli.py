"""Command-line behaviour every entry script shares: its environment, option ranges, errors."""
import argparse
import os
import re
import subprocess
import sys
import venv as stdlib_venv

import pytest

import train_caltech
from common import cli
from common import venv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_SCRIPTS = ("train_caltech.py", "score.py", "predict.py", "fuse_models.py")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python with none of the requirements: a fresh virtualenv without packages."""
    root = tmp_path_factory.mktemp("bare-venv")
    stdlib_venv.create(str(root), with_pip=False)
    python = str(root / "bin" / "python")
    probe = subprocess.run([python, "-c", "import tqdm"], capture_output=True)
    assert probe.returncode != 0, "the bare environment must lack the requirements"
    return python


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_script_started_by_another_python_reruns_in_the_venv(bare_python, script):
    assert os.access(venv.VENV_PYTHON, os.X_OK), "run the suite as `make test` (it creates .venv)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([bare_python, script, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}")


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_script_without_a_usable_venv_says_what_to_do_in_one_line(bare_python, script):
    # The mark says the re-run already happened: this is what .venv itself lacking
    # the requirements looks like (and the mark is what stops an endless re-run).
    env = dict(os.environ, FINETUNE_VENV_REEXEC="1")
    result = subprocess.run([bare_python, script, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{script}: error: Python module ") and "make clean-venv test" in lines[0]


@pytest.mark.parametrize("module,prog", [("bench.bench_pack", "python -m bench.bench_pack"),
                                         ("common.prep", "prepare_data.sh")])
def test_modules_run_with_python_m_rerun_in_the_venv_too(bare_python, module, prog):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([bare_python, "-m", module, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {prog}")


def test_prepare_data_sh_started_with_a_bare_python_says_what_to_do(bare_python):
    env = dict(os.environ, PYTHON=bare_python, FINETUNE_VENV_REEXEC="1")
    result = subprocess.run(["bash", "prepare_data.sh", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("prepare_data.sh: error: Python module ")


def test_the_project_python_needs_no_rerun():
    assert venv.missing_modules() == []


# ---------------------------------------------------------------- ranges

@pytest.mark.parametrize("low,high,kw,good,bad", [
    (0, None, {"low_open": True}, ["1e-5", "3"], ["0", "-1", "nan", "inf", "x"]),
    (0, 1, {"high_open": True}, ["0", "0.9"], ["1", "1.5", "-0.1"]),
    (0, 1, {"low_open": True}, ["1", "0.5"], ["0", "1.01"]),
    (0, None, {}, ["0", "2.5"], ["-1e-9", "-inf"]),
])
def test_float_range_accepts_the_interval_only(low, high, kw, good, bad):
    parse = cli.float_range(low, high, **kw)
    for text in good:
        assert parse(text) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number"):
            parse(text)


# option, bad values, words the one-line error must name
NUMERIC_OPTIONS = [
    ("--lr", ["-1", "0", "nan"], "> 0"),
    ("--mom", ["1.5", "1", "-0.1"], ">= 0 and < 1"),
    ("--wd", ["-0.0001"], ">= 0"),
    ("--warmup-epochs", ["-1"], ">= 0"),
    ("--lr-factor", ["0", "1.5"], "> 0 and <= 1"),
    ("--lr-mult-pretrained", ["-0.1"], ">= 0"),
    ("--pretrained-epoch", ["-1"], ">= 0"),
    ("--seed", ["-3"], ">= 0"),
    ("--num-epochs", ["0"], ">= 1"),
    ("--batch-size", ["0"], ">= 1"),
    ("--top-k", ["0"], ">= 1"),
    ("--data-nthreads", ["0"], ">= 1"),
    ("--disp-batches", ["0"], ">= 1"),
]


@pytest.mark.parametrize("option,values,words", NUMERIC_OPTIONS, ids=[o[0] for o in NUMERIC_OPTIONS])
def test_train_numeric_options_are_range_checked(option, values, words, capsys):
    for value in values:
        with pytest.raises(SystemExit) as exit_info:
            train_caltech.get_parser().parse_args([f"{option}={value}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert option in err and value in err and words in err, err


def test_train_accepts_the_edges_of_each_range():
    args = train_caltech.get_parser().parse_args(
        ["--lr", "1e-6", "--mom", "0", "--wd", "0", "--warmup-epochs", "0", "--lr-factor", "1",
         "--lr-mult-pretrained", "0", "--seed", "0"])
    assert (args.lr, args.mom, args.wd, args.lr_factor, args.lr_mult_pretrained) == (1e-6, 0, 0, 1, 0)


def test_the_readme_exit_status_table_lists_every_status_of_cli_exit():
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
                  encoding="utf-8").read()
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", readme, re.M))
    for meaning, status in cli.EXIT.items():
        assert meaning.lower() in rows.get(str(status), "").lower(), (status, meaning)


def test_processes_an_entry_rerun_in_the_venv_starts_with_another_python_rerun_too(bare_python, tmp_path):
    """launch.py started by a bare python re-runs in .venv; the roles it starts with that bare
    python must be able to do the same (the re-run's mark is not inherited)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([bare_python, "launch.py", "-n", "1", "-s", "1", "--launcher", "local", bare_python,
                             "predict.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("usage: predict.py") == 3  # scheduler, server, worker


EARLY_RECORDS = """
import gc, logging, sys, weakref
from common import cli
class Held:
    def __repr__(self):
        return "<held>"
cli.setup_logging(log_file_later=True)
held = Held()
alive = weakref.ref(held)
logging.getLogger("t").info("stopped: %s", held)
try:
    raise ValueError("broken")
except ValueError:
    logging.getLogger("t").exception("the run failed")
del held
gc.collect()
print("alive" if alive() else "freed")
cli.remove_log_file(cli.add_log_file(sys.argv[1]))
"""


def test_records_kept_for_the_log_file_hold_no_objects_but_keep_their_text(tmp_path):
    # A record's args (a StopTraining holding the module and its dist kvstore) must not
    # outlive the logging call: a kvstore freed at interpreter exit aborts the worker.
    log_file = tmp_path / "run.log"
    proc = subprocess.run([sys.executable, "-c", EARLY_RECORDS, str(log_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["freed"]
    text = log_file.read_text()
    assert "stopped: <held>" in text and "the run failed" in text and "ValueError: broken" in text
