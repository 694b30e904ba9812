"""A smoke run of bench/bench_train.py: its three commands run and its figures are theirs.

No timing is asserted (the machines are shared); what is checked is that every round
ran each command, that the ratios are computed from those runs, and that the
conditions are recorded.
"""
import json
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_train.json"
    cmd = [sys.executable, "-m", "bench.bench_train", "--network", "resnet-18", "--image-shape", "3,40,40",
           "--classes", "3", "--train-per-class", "8", "--val-per-class", "2", "--batch-size", "8",
           "--epochs", "2", "--pairs", "2", "--data-threads", "1", "--out", str(out)]
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_round_runs_each_command_and_the_ratios_are_theirs(results):
    figures, stdout = results
    runs = figures["runs"]
    assert {name: len(rows) for name, rows in runs.items()} == {"ours": 2, "baseline": 2, "compute": 2}
    for key, name, invert in (("vs_baseline", "baseline", False), ("pipeline_vs_compute", "compute", False)):
        expected = [o["images_per_sec"] / b["images_per_sec"] for o, b in zip(runs["ours"], runs[name])]
        assert figures[key]["rounds"] == pytest.approx(expected)
        assert figures[key]["min"] <= figures[key]["median"] <= figures[key]["max"]
    wall = [b["wall_seconds"] / o["wall_seconds"] for o, b in zip(runs["ours"], runs["baseline"])]
    assert figures["vs_baseline_wall"]["rounds"] == pytest.approx(wall)
    assert all(0 <= r["val_acc"] <= 1 for r in runs["ours"] + runs["baseline"])
    assert [row["data_threads"] for row in figures["data_threads"]] == [1]
    # from each run's log: launch to its first trained batch
    assert all(0 < r["first_batch_seconds"] < r["wall_seconds"] for r in runs["ours"])
    assert figures["launch_to_first_batch_seconds"]["median"] == pytest.approx(
        statistics.median(r["first_batch_seconds"] for r in runs["ours"]))
    assert "| vs_baseline |" in stdout


def test_the_conditions_are_recorded(results):
    conditions = results[0]["conditions"]
    assert conditions["network"] == "resnet-18" and conditions["image_shape"] == [3, 40, 40]
    assert conditions["batch_size"] == 8 and conditions["train_images"] == 24
    assert conditions["mxnet"] == "1.9.1" and conditions["cpu_count"] >= 1
    # the compute bound ran with the thread choice ours made (each run reports its own)
    assert conditions["threads"]["compute"] == conditions["threads"]["ours"]
