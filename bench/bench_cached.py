#!/usr/bin/env python3
"""Benchmark: ten `--mode last-layer` epochs with `--cache-features` against without.

On bench_train's generated, packed set and zoo-format checkpoint (random weights),
each round runs, interleaved (A B, B A, ...), each command from start to exit:
  uncached  train_caltech.py --mode last-layer: the frozen backbone runs every epoch
  cached    the same with --cache-features, in a fresh folder: it computes the rows
            (its first run), then trains the head on them
Then one rerun from the last cached run's rows. The figure is the whole command's
seconds, cached / uncached (start-up, the rows' computation and validation included),
with both final validation accuracies.

    python -m bench.bench_cached                   # ResNet-18, 3x96x96, 480 training images, 3 rounds (~3 min)
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_cached")

import logging  # noqa: E402
import os
import sys

from bench.bench_train import Bench, add_bench_args, interleaved, ratios, run_conditions
from common.cli import HelpFormatter, OneLineArgumentParser, UserError, run_entry, setup_logging
from common.fsutil import write_json_atomic
from common.report import read_metrics
from tools.benchkit import spread, work_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_cached.json")
log = logging.getLogger("bench_cached")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_cached", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    add_bench_args(parser, DEFAULT_OUT)
    # Larger images than bench_train's: the backbone's share of an epoch is what the cache
    # saves, and at 64 px the commands' start-up would weigh as much.
    parser.set_defaults(image_shape="3,96,96", train_per_class=48, val_per_class=12, epochs=10)
    return parser


class CachedBench(Bench):
    """bench_train's set-up; runs of --mode last-layer, cached or not."""

    def uncached(self):
        return self._last_layer(self._model_prefix("uncached"))

    def cached(self):
        self.last_cached = self._model_prefix("cached")
        return self._last_layer(self.last_cached, *self._cache(self.last_cached))

    def rerun(self):
        """--cache-features beside the last cached run: its rows are read, not computed."""
        return self._last_layer(self.last_cached + "-rerun", *self._cache(self.last_cached))

    @staticmethod
    def _cache(prefix):
        # The run's own folder: the default (under --model-dir) would be shared by every run.
        return ["--cache-features", "--feature-cache", os.path.join(os.path.dirname(prefix), "feature-cache")]

    def _last_layer(self, prefix, *extra):
        _, wall = self._run(self.train_command(prefix, "--cpus", "1", *extra, mode="last-layer"))
        records = read_metrics(f"{prefix}-metrics.jsonl")
        if len(records) != self.args.epochs:
            raise UserError(f"{prefix}: {len(records)} epochs in its metrics.jsonl, expected {self.args.epochs}")
        images = self.args.classes * self.args.train_per_class * self.args.epochs
        return {"wall_seconds": wall, "images_per_sec": images / wall, "val_acc": records[-1]["val_acc"],
                "train_seconds": sum(r["seconds"] for r in records)}


def summarize(runs, rerun):
    cached, uncached = runs["cached"], runs["uncached"]
    return {
        "cached_head_time_ratio": ratios(cached, uncached, "wall_seconds"),
        "rerun_time_ratio": rerun["wall_seconds"] / spread([u["wall_seconds"] for u in uncached])["median"],
        "wall_seconds": {**{name: spread([r["wall_seconds"] for r in rows]) for name, rows in runs.items()},
                         "rerun": rerun["wall_seconds"]},
        "val_acc": {**{name: spread([r["val_acc"] for r in rows]) for name, rows in runs.items()},
                    "rerun": rerun["val_acc"]},
    }


def print_table(summary):
    s = summary["cached_head_time_ratio"]
    print("| figure | median | min | max |\n|---|---:|---:|---:|")
    print(f"| cached_head_time_ratio | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    print(f"| rerun from the cache / uncached | {summary['rerun_time_ratio']:.3f} | | |")
    for name, s in summary["wall_seconds"].items():
        if name != "rerun":
            print(f"| {name} seconds | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    for name, s in summary["val_acc"].items():
        if name != "rerun":
            print(f"| {name} val_acc | {s['median']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    with work_folder(args.workdir, "bench-cached", args.out) as work:
        bench = CachedBench(args, work)
        bench.prepare()
        runs = interleaved(lambda name: getattr(bench, name)(), ("uncached", "cached"), args.pairs)
        rerun = bench.rerun()
        log.info("rerun from the cache: %.1f s, val_acc %.4f", rerun["wall_seconds"], rerun["val_acc"])
    summary = summarize(runs, rerun)
    write_json_atomic(args.out, {"conditions": run_conditions(args), **summary, "runs": runs, "rerun": rerun})
    print_table(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_cached"))
