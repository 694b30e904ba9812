#!/usr/bin/env python3
"""Benchmark: what feeding from ImageRecordIter costs training, beside MXNet's OpenMP threads.

bench_train's pipeline_vs_compute compares two commands; this looks inside one process
(bench/pipeline_probe.py, with train_caltech.py's thread choice) at what the gap is
made of. On bench_train's kind of data set and zoo-format checkpoint, one bound module
trains one epoch of each feed a round, in a shuffled order: `memory` (the epoch's
batches decoded beforehand), `iterator` (a fresh ImageRecordIter, as the training loop
builds one) and `load` (the memory batches beside a process keeping one core as busy as
the iterator alone keeps this one). It reports each feed's images/s against memory's
(per-round ratios: median, min-max), the iterator's CPU as a share of the machine, and
`iterator_cost_per_share`: the throughput lost per unit of that share (1 would mean
its CPU is all it costs).

    python -m bench.bench_pipeline                 # ResNet-18, 3x64x64, batch 32, 12 rounds (~2 min)
    python -m bench.bench_pipeline --rounds 4 --network resnet-50 --image-shape 3,128,128
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_pipeline")

import json  # noqa: E402
import os
import sys

from bench.bench_train import Bench, add_data_args, data_conditions
from common.cli import HelpFormatter, OneLineArgumentParser, positive_int, run_entry, setup_logging
from common.fsutil import write_json_atomic
from common.threads import usable_cores
from tools.benchkit import add_run_args, spread, work_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_pipeline.json")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_pipeline", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    add_data_args(parser)
    parser.add_argument("--rounds", metavar="R", type=positive_int, default=12,
                        help="rounds of one epoch of each feed")
    add_run_args(parser, DEFAULT_OUT)
    return parser


class PipelineBench(Bench):
    def probe(self):
        """The probe's JSON line, run on the prepared data set and checkpoint."""
        output, _ = self._run([sys.executable, "-m", "bench.pipeline_probe", "--pretrained", self.pretrained,
                               "--num-classes", str(self.args.classes), "--image-shape", self.shape,
                               "--batch-size", str(self.args.batch_size), "--rounds", str(self.args.rounds),
                               "--train-rec", os.path.join(self.data, "bench-train.rec")], "pipeline_probe")
        return json.loads(output.strip().splitlines()[-1])


def summarize(probe, cores):
    runs = probe["images_per_sec"]

    def versus_memory(name):
        values = [x / m for x, m in zip(runs[name], runs["memory"])]
        return {**spread(values), "rounds": values}

    iterator = versus_memory("iterator")
    share = probe["iterator_cpu_seconds_per_epoch"] / (probe["memory_epoch_seconds"] * cores)
    return {"iterator_vs_memory": iterator, "load_vs_memory": versus_memory("load"),
            "iterator_cpu_share": share, "iterator_cost_per_share": (1 - iterator["median"]) / share,
            "images_per_sec": {name: spread(values) for name, values in runs.items()}}


def print_table(summary):
    print("| figure | median | min | max |\n|---|---:|---:|---:|")
    for key in ("iterator_vs_memory", "load_vs_memory"):
        s = summary[key]
        print(f"| {key} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    for name, s in summary["images_per_sec"].items():
        print(f"| {name} images/s | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    print(f"| iterator's CPU, share of the machine | {summary['iterator_cpu_share']:.3f} | | |")
    print(f"| throughput lost per unit of that share | {summary['iterator_cost_per_share']:.1f} | | |")


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    with work_folder(args.workdir, "bench-pipeline", args.out) as work:
        bench = PipelineBench(args, work)
        bench.prepare()
        probe = bench.probe()
    summary = summarize(probe, usable_cores())
    conditions = {**data_conditions(args), "rounds": args.rounds, "threads": probe["threads"],
                  "decode_threads": probe["decode_threads"]}
    write_json_atomic(args.out, {"conditions": conditions, **summary, "probe": probe})
    print_table(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_pipeline"))
