"""A smoke run of bench/bench_cached.py: each round ran both commands, the ratio is theirs,
and the rerun read the rows the cached run computed (no timing is asserted)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("bench") / "bench_cached.json", tmp_path_factory.mktemp("work")
    cmd = [sys.executable, "-m", "bench.bench_cached", "--image-shape", "3,40,40", "--classes", "3",
           "--train-per-class", "8", "--val-per-class", "2", "--batch-size", "8", "--epochs", "2",
           "--pairs", "2", "--out", str(out), "--workdir", str(work)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, TQDM_DISABLE="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, work


def test_every_round_runs_both_commands_and_the_ratio_is_theirs(results):
    figures, stdout, _ = results
    runs = figures["runs"]
    assert {name: len(rows) for name, rows in runs.items()} == {"uncached": 2, "cached": 2}
    expected = [c["wall_seconds"] / u["wall_seconds"] for c, u in zip(runs["cached"], runs["uncached"])]
    ratio = figures["cached_head_time_ratio"]
    assert ratio["rounds"] == pytest.approx(expected) and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert all(0 <= r["val_acc"] <= 1 for r in runs["cached"] + runs["uncached"])
    assert figures["conditions"]["epochs"] == 2 and figures["conditions"]["train_images"] == 24
    assert "| cached_head_time_ratio |" in stdout


def test_the_cached_runs_compute_their_rows_and_the_rerun_reads_them(results):
    work = results[2]
    def log(run, suffix=""):
        with open(os.path.join(work, "runs", run, f"model{suffix}-train.log"), encoding="utf-8") as f:
            return f.read()
    # rounds: 01 uncached, 02 cached; then 03 cached, 04 uncached; the rerun beside 03
    assert "from the cache" not in log("02-cached") and "from the cache" not in log("03-cached")
    assert "train features: 24 x 512 from the cache" in log("03-cached", "-rerun")
