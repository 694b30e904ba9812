"""A smoke run of bench/bench_scaling.py: its five commands run and its figures are theirs.

No timing is asserted (the machines are shared); what is checked is that each
configuration ran, that the images/s and ratios are computed from those runs'
metrics (a job's from rank 0's and every worker's part), that the user's thread
settings did not reach the runs, and the one-line errors.
"""
import json
import os
import subprocess
import sys

import pytest

from bench.bench_train import read_run
from common.threads import usable_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--network", "resnet-20", "--image-shape", "3,16,16", "--classes", "2", "--train-per-class", "8",
        "--val-per-class", "2", "--batch-size", "8", "--epochs", "2", "--pairs", "1"]
CONFIGS = ["cpus1", "cpus2_device", "cpus2_local", "launcher1", "launcher2"]
# What a user may have set: none of it may reach the benchmarked commands.
USER_ENV = {"OMP_NUM_THREADS": "1", "MXNET_ENGINE_TYPE": "NaiveEngine", "DMLC_ROLE": "worker"}


def bench(*argv, timeout=300, user_env=None):
    return subprocess.run([sys.executable, "-m", "bench.bench_scaling", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, TQDM_DISABLE="1", **(user_env or {})))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    out, work = root / "bench_scaling.json", root / "work"
    proc = bench(*TINY, "--out", str(out), "--workdir", str(work), user_env=USER_ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, work


def test_every_configuration_runs_and_the_ratios_are_theirs(results):
    figures, stdout, _ = results
    runs, scaling = figures["runs"], figures["scaling"]
    assert {name: len(rows) for name, rows in runs.items()} == {name: 1 for name in CONFIGS}
    for key, (num, den) in {"device_2_vs_1": ("cpus2_device", "cpus1"), "local_2_vs_1": ("cpus2_local", "cpus1"),
                            "dist_2_vs_1": ("launcher2", "launcher1")}.items():
        ratio = scaling["ratios"][key]
        assert ratio["rounds"] == pytest.approx([runs[num][0]["images_per_sec"] / runs[den][0]["images_per_sec"]])
        assert ratio["median"] == ratio["min"] == ratio["max"] == ratio["rounds"][0]
    for name in CONFIGS:
        assert scaling["images_per_sec"][name]["median"] == runs[name][0]["images_per_sec"]
        assert 0 <= scaling["val_acc"][name] <= 1
    assert "| dist_2_vs_1 (images/s) |" in stdout and "| launcher2 images/s |" in stdout


def test_the_figures_are_the_runs_metrics_and_a_job_counts_every_worker(results):
    figures, _, work = results
    runs = figures["runs"]
    folders = sorted(os.listdir(work / "runs"))
    assert folders == [f"{i:02d}-{name}" for i, name in enumerate(CONFIGS, 1)]
    for folder, name in zip(folders, CONFIGS):
        rank0 = read_run(str(work / "runs" / folder / "model"))[0]["images_per_sec"]
        if name == "launcher2":
            # 16 training images: 8 a worker; rank 0's metrics count its own 8
            assert runs[name][0]["worker_images"] == [8, 8]
            assert runs[name][0]["images_per_sec"] == pytest.approx(2 * rank0)
        else:
            assert runs[name][0]["images_per_sec"] == pytest.approx(rank0)


def test_the_users_thread_settings_do_not_reach_the_runs(results):
    conditions = results[0]["conditions"]
    cores = usable_cores()
    # each run's own choice (common/threads.py): the cores shared among its contexts or workers
    assert conditions["threads"] == {"cpus1": [{"OMP_NUM_THREADS": str(cores)}],
                                     "cpus2_device": [{"OMP_NUM_THREADS": str(max(1, cores // 2))}],
                                     "cpus2_local": [{"OMP_NUM_THREADS": str(max(1, cores // 2))}],
                                     "launcher1": [{"OMP_NUM_THREADS": str(cores)}],
                                     "launcher2": [{"OMP_NUM_THREADS": str(max(1, cores // 2))}]}
    assert conditions["batch_per_process"] == {"cpus1": 8, "cpus2_device": 8, "cpus2_local": 8,
                                               "launcher1": 8, "launcher2": 4}
    assert conditions["train_images"] == 16 and conditions["val_images"] == 4 and conditions["pairs"] == 1
    assert conditions["mxnet"] == "1.9.1" and conditions["image_shape"] == [3, 16, 16]


@pytest.mark.parametrize("argv,status,message", [
    (["--batch-size", "7"], 1, "--batch-size 7: must divide by 2"),
    (["--pairs", "0"], 2, "argument --pairs: expected an integer >= 1, got 0"),
    (["--network", "resnet-7"], 2, "argument --network: invalid choice: 'resnet-7'"),
], ids=["odd-batch", "pairs", "network"])
def test_bad_options_are_one_line(tmp_path, argv, status, message):
    proc = bench(*argv, "--out", str(tmp_path / "out.json"), timeout=60)
    assert proc.returncode == status and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out.json").exists(), proc.stderr


def test_a_run_over_its_time_is_stopped_with_one_line(tmp_path):
    proc = bench(*TINY, "--timeout", "1", "--out", str(tmp_path / "out.json"), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == "bench_scaling: error: cpus1: timed out after 1 s (--timeout)"
    assert not (tmp_path / "out.json").exists()
