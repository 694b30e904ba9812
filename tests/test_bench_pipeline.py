"""A smoke run of bench/bench_pipeline.py: its probe trains one epoch of each feed a round
in one process, and the figures are computed from those epochs.

No timing is asserted (the machines are shared); what is checked is that every feed
ran each round, that the ratios and the CPU share come from the probe's figures, the
recorded conditions, and that the load process is stopped.
"""
import json
import os
import subprocess
import sys

import pytest

from bench import pipeline_probe
from common import threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_pipeline.json"
    cmd = [sys.executable, "-m", "bench.bench_pipeline", "--network", "resnet-20", "--image-shape", "3,16,16",
           "--classes", "2", "--train-per-class", "8", "--batch-size", "4", "--rounds", str(ROUNDS),
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, TQDM_DISABLE="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_feed_trains_each_round_and_the_ratios_are_theirs(results):
    figures, stdout = results
    runs = figures["probe"]["images_per_sec"]
    assert {name: len(values) for name, values in runs.items()} == {"memory": ROUNDS, "iterator": ROUNDS,
                                                                      "load": ROUNDS}
    for key, name in (("iterator_vs_memory", "iterator"), ("load_vs_memory", "load")):
        assert figures[key]["rounds"] == pytest.approx([x / m for x, m in zip(runs[name], runs["memory"])])
        assert figures[key]["min"] <= figures[key]["median"] <= figures[key]["max"]
    probe = figures["probe"]
    share = probe["iterator_cpu_seconds_per_epoch"] / (probe["memory_epoch_seconds"] * threads.usable_cores())
    assert 0 < figures["iterator_cpu_share"] == pytest.approx(share)
    assert figures["iterator_cost_per_share"] == pytest.approx((1 - figures["iterator_vs_memory"]["median"]) / share)
    assert 0 < probe["load_share_of_one_core"] <= 1
    assert "| iterator_vs_memory |" in stdout


def test_the_conditions_are_train_caltechs_threads(results):
    conditions = results[0]["conditions"]
    assert conditions["network"] == "resnet-20" and conditions["image_shape"] == [3, 16, 16]
    assert conditions["rounds"] == ROUNDS and conditions["train_images"] == 16
    assert conditions["decode_threads"] == conditions["decode_limit"] == threads.decode_limit()
    assert conditions["threads"]["source"] == "chosen"
    assert conditions["threads"]["settings"]["OMP_NUM_THREADS"] == str(threads.usable_cores())


def test_the_load_process_runs_inside_its_block_only():
    with pipeline_probe.Load(0.5) as load:
        assert load.proc.poll() is None
    assert load.proc.returncode is not None
