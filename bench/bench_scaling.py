#!/usr/bin/env python3
"""Benchmark: what train_caltech.py's multi-device and multi-machine paths cost here.

On bench_train's generated, packed data set and zoo-format checkpoint (random
weights), each round runs five commands, interleaved (A B C D E, E D C B A, ...):
  cpus1         train_caltech.py --mode full --cpus 1
  cpus2_device  the same with --cpus 2 --kv-store device
  cpus2_local   the same with --cpus 2 --kv-store local
  launcher1     launch.py -n 1 -s 1 --launcher local train_caltech.py ... --cpus 1 --kv-store dist_sync
  launcher2     launch.py -n 2 -s 1 --launcher local, the same command (all on 127.0.0.1)
Every command makes the same updates with the same job batch (--batch-size): --cpus 2
splits it between its contexts, and each of N workers gets batch / N. Images/s are
those of the epochs after the first (which warms up); a job's are every worker's images
over rank 0's epoch seconds (dist_sync keeps the workers in lockstep).

    python -m bench.bench_scaling                  # ResNet-18, 3x64x64, batch 32, 3 rounds (~7 min)
    python -m bench.bench_scaling --pairs 1 --epochs 2
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_scaling")

import logging  # noqa: E402
import os
import re
import sys

from bench.bench_train import REPO, Bench, add_bench_args, interleaved, ratios, read_run, run_conditions
from common.cli import HelpFormatter, OneLineArgumentParser, UserError, run_entry, setup_logging
from common.fsutil import write_json_atomic
from tools.benchkit import spread, work_folder

DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_scaling.json")
# name: (launch.py workers, 0 for a plain process; train_caltech.py's options)
CONFIGS = {
    "cpus1": (0, ["--cpus", "1"]),
    "cpus2_device": (0, ["--cpus", "2", "--kv-store", "device"]),
    "cpus2_local": (0, ["--cpus", "2", "--kv-store", "local"]),
    "launcher1": (1, ["--cpus", "1", "--kv-store", "dist_sync"]),
    "launcher2": (2, ["--cpus", "1", "--kv-store", "dist_sync"]),
}
RATIOS = {"device_2_vs_1": ("cpus2_device", "cpus1"), "local_2_vs_1": ("cpus2_local", "cpus1"),
          "dist_2_vs_1": ("launcher2", "launcher1")}
# What each worker of a job logs once (common.train.sampling): its rank and images an epoch.
WORKER_PART = re.compile(r"worker (\d+) of (\d+): (\d+) of the \d+ training images each epoch")
log = logging.getLogger("bench_scaling")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_scaling", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    add_bench_args(parser, DEFAULT_OUT)
    return parser


def batch_per_process(batch_size, workers):
    """--batch-size of each of a job's `workers` (0: a plain process takes the whole batch)."""
    return batch_size // max(workers, 1)


def check_batch(batch_size):
    """The job batch must split evenly into 2 contexts and into 2 workers' batches."""
    most = max(max(workers, int(options[1])) for workers, options in CONFIGS.values())
    if batch_size % most:
        raise UserError(f"--batch-size {batch_size}: must divide by {most} (the contexts of --cpus {most} "
                        f"and the workers of launch.py -n {most} share it)")


class Scaling(Bench):
    """Bench's data and checkpoint; run(name) runs one of CONFIGS."""

    def run(self, name):
        workers, options = CONFIGS[name]
        prefix = self._model_prefix(name)
        cmd = self.train_command(prefix, *options,
                                 batch_size=batch_per_process(self.args.batch_size, workers))
        if workers:
            cmd = [sys.executable, "launch.py", "-n", str(workers), "-s", "1", "--launcher", "local",
                   "--grace-seconds", "3", *cmd]
        output, wall = self._run(cmd, label=name)
        figures, recorded = read_run(prefix)  # a job's rank 0 alone writes them
        if workers > 1:
            parts = worker_parts(output, workers)
            figures["images_per_sec"] *= sum(parts) / parts[0]
            figures["worker_images"] = parts
        return {**figures, "wall_seconds": wall, "threads": recorded["threads"]["settings"]}


def worker_parts(output, workers):
    """[training images an epoch of rank 0, 1, ...] of a job, from its workers' log lines.

    Rank 0's metrics count its own images; the others trained theirs in the same
    seconds (as many batches, each step waiting for every worker's push), so the job's
    images/s are rank 0's times sum(parts) / parts[0].
    """
    parts = {int(rank): int(count) for rank, total, count in WORKER_PART.findall(output)
             if int(total) == workers}
    if sorted(parts) != list(range(workers)):
        raise UserError(f"launch.py -n {workers}: expected each worker's 'worker R of {workers}: N of the ... "
                        f"training images' line in the job's log, found ranks {sorted(parts)}")
    return [parts[rank] for rank in range(workers)]


def summarize(runs):
    return {
        "images_per_sec": {name: spread([r["images_per_sec"] for r in rows]) for name, rows in runs.items()},
        "ratios": {key: ratios(runs[num], runs[den], "images_per_sec") for key, (num, den) in RATIOS.items()},
        "val_acc": {name: spread([r["val_acc"] for r in rows])["median"] for name, rows in runs.items()},
        "wall_seconds": {name: spread([r["wall_seconds"] for r in rows]) for name, rows in runs.items()},
    }


def print_table(summary):
    print("| figure | median | min | max |\n|---|---:|---:|---:|")
    for key, s in summary["ratios"].items():
        print(f"| {key} (images/s) | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    for name, s in summary["images_per_sec"].items():
        print(f"| {name} images/s | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    for name, s in summary["wall_seconds"].items():
        print(f"| {name} wall s | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    for name, value in summary["val_acc"].items():
        print(f"| {name} val_acc | {value:.4f} | | |")


def conditions(args, runs):
    return {**run_conditions(args),
            "batch_per_process": {name: batch_per_process(args.batch_size, workers)
                                  for name, (workers, _) in CONFIGS.items()},
            # each run's own report (PREFIX-args.json; a job's rank 0)
            "threads": {name: [r["threads"] for r in rows] for name, rows in runs.items()}}


def main(argv=None):
    args = get_parser().parse_args(argv)
    check_batch(args.batch_size)
    setup_logging()
    with work_folder(args.workdir, "bench-scaling", args.out) as work:
        bench = Scaling(args, work)
        bench.prepare()
        runs = interleaved(bench.run, tuple(CONFIGS), args.pairs)
    summary = summarize(runs)
    write_json_atomic(args.out, {"scaling": summary, "conditions": conditions(args, runs), "runs": runs})
    print_table(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_scaling"))
