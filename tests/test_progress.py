"""common/cli.progress: a tqdm bar on a terminal, plain lines in a log file or pipe."""
import io
import os
import subprocess
import sys

import pytest
from tqdm import tqdm

from common import cli
from common.prep.parallel import parallel_map
from tools.imagegen import make_class_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    """A clock the test moves by hand: clock.now = seconds."""
    class Clock:
        now = 100.0
    monkeypatch.setattr(cli, "_clock", lambda: Clock.now)
    return Clock


@pytest.fixture
def log_file(monkeypatch, capsys):
    """What progress wrote to stderr, which (as in a log file) is not a terminal."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)

    class Log:
        @staticmethod
        def getvalue():
            assert not sys.stderr.isatty()
            return capsys.readouterr().err
    return Log


def test_without_a_tty_it_prints_a_plain_line_every_interval_and_at_the_end(log_file, clock):
    with cli.progress(total=5000, desc="pack train", unit="img") as bar:
        for second in range(1, 26):  # 200 images a second for 25 s
            clock.now += 1
            bar.update(200)
    text = log_file.getvalue()
    assert text.splitlines() == [
        "pack train: 2000/5000 img (40%), 200 img/s, 10 s",
        "pack train: 4000/5000 img (80%), 200 img/s, 20 s",
        "pack train: 5000/5000 img (100%), 200 img/s, 25 s"]
    assert "\r" not in text


def test_plain_bytes_count_from_the_resumed_offset(log_file, clock):
    mib = 1 << 20
    with cli.progress(total=4 * mib, initial=mib, desc="a.tar", unit="B", unit_scale=True,
                      unit_divisor=1024) as bar:
        clock.now += 3
        bar.update(3 * mib)
    # The rate counts the 3 MiB of this run, not the one resumed from an earlier run.
    assert log_file.getvalue() == "a.tar: 4.00MB/4.00MB (100%), 1.00MB/s, 3 s\n"


def test_plain_iteration_yields_every_item_and_ends_with_a_line(log_file, clock):
    assert list(cli.progress(["a", "b", "c"], desc="extract", unit="file")) == ["a", "b", "c"]
    assert log_file.getvalue() == "extract: 3/3 file (100%), 0 s\n"


def test_plain_without_a_total_shows_the_count(log_file, clock):
    with cli.progress(desc="blob.bin", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        clock.now += 2
        bar.update(4096)
    assert log_file.getvalue() == "blob.bin: 4.00kB, 2.00kB/s, 2 s\n"


def test_on_a_tty_it_is_a_tqdm_bar(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    terminal = FakeTTY()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli.progress(total=10, desc="pack val", unit="img") as bar:
        bar.update(10)
    assert isinstance(bar, tqdm)
    assert "\r" in terminal.getvalue() and "pack val" in terminal.getvalue()
    assert "10/10" in terminal.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO, FakeTTY], ids=["log-file", "tty"])
def test_tqdm_disable_prints_nothing(monkeypatch, clock, stream):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(sys, "stderr", stream())
    with cli.progress(total=10, desc="pack", unit="img") as bar:
        clock.now += 60
        bar.update(10)
    assert list(cli.progress(range(3), desc="extract")) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""


def test_prepare_data_sh_log_has_whole_progress_lines(tmp_path):
    # What a user saw: `bash prepare_data.sh ... 2> log` full of '\r'-joined bar fragments.
    src = tmp_path / "shapes"
    make_class_tree(str(src), [3, 3], min_side=16, max_side=24)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", os.path.join(REPO, "prepare_data.sh"), "--src", str(src),
                           "--out", str(tmp_path / "out"), "--resize", "16", "--num-thread", "1",
                           "--train-per-class", "2"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    for expected in ("check: 6/6 img (100%)", "pack train: 4 records, 4 encoded while checking",
                     "pack val: 2 records, 2 encoded while checking"):
        assert any(line.startswith(expected) or f" INFO {expected}" in line for line in lines), proc.stderr


def test_parallel_map_prints_its_last_line_when_it_hands_out_the_last_result(log_file, clock):
    results = parallel_map(str, [1, 2, 3], workers=1, desc="check")
    # zip() stops pulling after the third result: the generator stays suspended.
    assert list(zip([1, 2, 3], results)) == [(1, "1"), (2, "2"), (3, "3")]
    assert log_file.getvalue() == "check: 3/3 img (100%), 0 s\n"
