"""python -m bench (make bench): the top-level figures are those of the steps' files, with
their targets judged; a missing file's figures are kept from the last --out, or left out,
never invented."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONDITIONS = {"platform": "Linux-x86_64", "cores": 2, "threads": {"ours": "OMP_NUM_THREADS=2"},
              "mxnet": "1.9.1", "network": "resnet-18", "image_shape": [3, 64, 64], "batch_size": 32,
              "date": "2026-12-03T12:00:00+00:00"}


def spread(median, low, high):
    return {"median": median, "min": low, "max": high, "rounds": [low, median, high]}


def collect(tmp_path, *extra):
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_train.json").write_text(json.dumps({
        "conditions": CONDITIONS, "pipeline_vs_compute": spread(0.99, 0.95, 1.02),
        "vs_baseline": spread(1.45, 1.4, 1.6), "vs_baseline_wall": spread(1.4, 1.3, 1.5),
        "val_acc": {"ours": spread(0.8, 0.8, 0.8), "baseline": spread(0.79, 0.79, 0.8)}}))
    (results / "bench_records.json").write_text(json.dumps({
        "conditions": {}, "results": {"headers_seconds": {"median": 0.08, "min": 0.07, "max": 0.09}}}))
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--collect", "--results", str(results), "--out", str(out),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    return proc, out


def test_the_figures_are_the_files_and_their_targets_are_judged(tmp_path):
    proc, out = collect(tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["pipeline_vs_compute"] == 0.99 and figures["vs_baseline"] == 1.45
    assert figures["preflight_seconds_15k"] == 0.08 and figures["val_acc_baseline"] == 0.79
    assert figures["figures"]["vs_baseline"]["met"] is False and figures["figures"]["vs_baseline_wall"]["met"]
    assert figures["figures"]["preflight_seconds_15k"]["met"] is True  # a <= target
    assert figures["conditions"]["cores"] == 2 and figures["conditions"]["mxnet"] == "1.9.1"
    assert "cached_head_time_ratio" not in figures and "scaling_dist_2_vs_1" not in figures  # never measured
    table = (tmp_path / "results.md").read_text()
    assert "| `vs_baseline` | 1.45 (1.4-1.6) | >= 1.5 | **no** |" in table
    assert "| `pipeline_vs_compute` | 0.99 (0.95-1.02) | >= 0.97 | yes |" in table


def test_a_step_without_its_file_keeps_its_figures_from_the_last_out(tmp_path):
    out = tmp_path / "results.json"
    cached = {"value": 0.15, "min": 0.14, "max": 0.16, "target": "<= 0.2", "met": True,
              "about": "cached", "source": "bench_cached.json"}
    stale = {**cached, "source": "bench_gone.json"}  # a figure now read from another file
    out.write_text(json.dumps({"figures": {"cached_head_time_ratio": cached, "scaling_dist_2_vs_1": stale,
                                           "vs_baseline": {**cached, "source": "bench_train.json"}},
                               "conditions_by_file": {"bench_cached": {"date": "2026-12-01"}}}))
    proc, _ = collect(tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["cached_head_time_ratio"] == 0.15 and figures["figures"]["cached_head_time_ratio"] == cached
    assert figures["conditions_by_file"]["bench_cached"] == {"date": "2026-12-01"}
    assert figures["vs_baseline"] == 1.45  # its file is there: the file wins
    assert "scaling_dist_2_vs_1" not in figures
    table = (tmp_path / "results.md").read_text()
    assert "| `cached_head_time_ratio` | 0.15 (0.14-0.16) | <= 0.2 | yes |" in table
    # The header's date is bench_train's: a row from an older run says when it was measured.
    assert "Measured 2026-12-03T12:00:00+00:00:" in table and " bench_cached measured 2026-12-01." in table


def test_an_unknown_step_is_one_line_naming_the_valid_ones(tmp_path):
    proc, _ = collect(tmp_path, "--only", "bench_nothing")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m bench: error: argument --only: unknown step 'bench_nothing'; valid: bench_train, bench_pipeline, "
        "bench_cached, bench_prepare, bench_records, bench_scaling, bench_train_resnet50, bench_recipe (see --help)"]
