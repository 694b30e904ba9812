"""A smoke run of bench/bench_prepare.py at tiny scale: every run happened and the figures are theirs.

No timing is asserted (the machines are shared); what is checked is that each round ran
both commands, that the ratios are computed from those runs' figures, that the memory
runs measured the whole process group, and that bad options end in one line.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench.bench_prepare", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, TQDM_DISABLE="1"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_prepare.json"
    proc = bench("--images", "40", "--size", "80-100x60-80", "--resize", "48", "--train-per-class", "2",
                 "--rounds", "2", "--threads", "2", "--num-threads", "1,2", "--rss-images", "20,60",
                 "--rss-size", "40x30", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_round_runs_both_commands_and_the_ratios_are_theirs(results):
    figures, stdout = results
    runs = figures["runs"]
    assert [len(runs["ours"]), len(runs["im2rec"])] == [2, 2]
    assert all(r["images"] == 40 for r in runs["ours"] + runs["im2rec"])  # same lists, every record written
    expected = [o["images_per_sec"] / i["images_per_sec"] for o, i in zip(runs["ours"], runs["im2rec"])]
    ratio = figures["packing_vs_im2rec"]
    assert ratio["rounds"] == pytest.approx(expected)
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert figures["images_per_sec"]["ours"]["max"] == pytest.approx(max(r["images_per_sec"] for r in runs["ours"]))
    assert figures["num_thread"] == {str(r["threads"]): pytest.approx(r["images_per_sec"]) for r in figures["sweep"]}
    assert list(figures["num_thread"]) == ["1", "2"]
    assert "| packing_vs_im2rec" in stdout and "| prepare_rss_ratio_10x |" in stdout


def test_the_memory_ratio_is_that_of_the_two_runs_peaks(results):
    figures = results[0]
    peaks = figures["peak_rss_mb"]
    assert set(peaks) == {"20", "60"}
    assert figures["prepare_rss_ratio_10x"] == pytest.approx(peaks["60"] / peaks["20"])
    # the whole group: prepare_data.sh's Python and its 2 spawned workers, each ~50 MB
    # with NumPy and OpenCV loaded; one process alone stays below 100
    assert all(peak > 100 for peak in peaks.values())
    assert all(figures["memory"][count]["samples"] >= 3 for count in peaks)


def test_the_conditions_are_recorded(results):
    conditions = results[0]["conditions"]
    assert conditions["mxnet"] == "1.9.1" and conditions["cores"] >= 1
    assert (conditions["resize"], conditions["quality"], conditions["threads"]) == (48, 95, 2)
    assert conditions["images"] == 40 and conditions["rss_images"] == [20, 60]


@pytest.mark.parametrize("option", [["--rss-images", "100"], ["--rss-images", "500,100"], ["--images", "x"],
                                    ["--num-threads", "0"], ["--quality", "101"]])
def test_a_bad_option_is_one_line_and_non_zero(option):
    proc = bench(*option, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and option[0] in proc.stderr
