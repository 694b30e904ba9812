#!/usr/bin/env python3
"""Benchmark: train_caltech.py's training speed against the plain MXNet way and the compute bound.

On one generated, packed data set and one zoo-format checkpoint (random weights),
each pair runs, interleaved (A B C, C B A, ...):
  ours      train_caltech.py --mode full (its own thread choice, common/threads.py)
  baseline  bench/baseline_finetune.py: Module.fit as MXNet's example fine-tune.py
            does it, with MXNet's default threads
  compute   bench/compute_bound.py: the same network, batch and contexts fed from memory
Training images/s are those of the epochs after the first (which warms up); wall
seconds are the whole command's, from start to exit. Then ours once per decode
thread count (--data-threads), against the compute bound of the pairs.

    python -m bench.bench_train                    # ResNet-18, 3x64x64, batch 32, 3 pairs (~4 min)
    python -m bench.bench_train --network resnet-50 --image-shape 3,128,128 --pairs 1
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_train")

import json  # noqa: E402
import logging
import os
import re
import sys
import time

from common.cli import (HelpFormatter, OneLineArgumentParser, UserError, int_at_least, positive_int,
                        run_entry, setup_logging)
from common.fsutil import write_json_atomic
from common.report import read_metrics
from common.threads import decode_limit, usable_cores
from common.transforms import image_shape as image_shape_arg
from symbols import NETWORKS
from tools.benchkit import (add_run_args, child_env, failure_line, machine, run_group, spread, thread_list,
                            work_folder)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_train.json")
PREFIX = "bench"  # the data set's file prefix
log = logging.getLogger("bench_train")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_train", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    add_bench_args(parser, DEFAULT_OUT)
    parser.add_argument("--data-threads", metavar="LIST", type=_thread_counts, default=_below_limit(),
                        help="decode thread counts for ours, one run each after the pairs ('' for none; "
                             "default: the powers of two below MXNet's limit, half the cores, which ours uses)")
    return parser


def add_bench_args(parser, default_out):
    """The options of every training benchmark (bench_train, bench_scaling): what Bench reads."""
    add_data_args(parser)
    parser.add_argument("--epochs", metavar="E", type=int_at_least(2), default=3,
                        help="epochs per training run (the first is not counted in images/s)")
    parser.add_argument("--pairs", metavar="P", type=positive_int, default=3, help="interleaved rounds")
    add_run_args(parser, default_out)


def add_data_args(parser):
    """The network, batch and generated data set of Bench.prepare (bench_pipeline needs no more)."""
    parser.add_argument("--network", default="resnet-18", choices=sorted(NETWORKS), metavar="NAME",
                        help="as train_caltech.py's --network")
    parser.add_argument("--image-shape", type=image_shape_arg, default="3,64,64", help="network input C,H,W")
    parser.add_argument("--batch-size", metavar="N", type=positive_int, default=32)
    parser.add_argument("--classes", metavar="C", type=positive_int, default=10)
    parser.add_argument("--train-per-class", metavar="N", type=positive_int, default=32)
    parser.add_argument("--val-per-class", metavar="N", type=positive_int, default=8)


def _thread_counts(text):
    """argparse type: thread_list, or [] for ''."""
    return thread_list(text) if text.strip() else []


def _below_limit():
    """The decode thread counts worth a run beside ours: ImageRecordIter lowers any count above
    threads.decode_limit() to it (none on 2 cores, where the limit is 1)."""
    return ",".join(str(2 ** i) for i in range(8) if 2 ** i < decode_limit())


class Bench:
    """The shared set-up of every run: data, checkpoint, and the common options."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.shape = ",".join(map(str, args.image_shape))
        self.data = os.path.join(work, "data")
        self.pretrained = os.path.join(work, "zoo", args.network)
        self.runs = 0

    def prepare(self):
        """Write the checkpoint (first: it checks the network and shape); generate and pack the data set."""
        from common.prep import main as prepare
        from tools.imagegen import make_class_tree
        from tools.zoocheckpoint import make_pretrained
        try:
            make_pretrained(self.pretrained, num_classes=self.args.classes, num_layers=NETWORKS[self.args.network][1],
                            image_shape=self.args.image_shape)
        except ValueError as exc:  # a depth without a layout at this input size
            raise UserError(f"--network {self.args.network} --image-shape {self.shape}: {exc}") from None
        side = self.args.image_shape[1]
        src = os.path.join(self.work, "src")
        per_class = self.args.train_per_class + self.args.val_per_class
        make_class_tree(src, [per_class] * self.args.classes, min_side=side + side // 4, max_side=2 * side)
        # Each of prepare's passes spawns its pool afresh (seconds on a loaded machine):
        # longer than packing a few hundred small images in this process (~1 ms each).
        pack_workers = 1 if per_class * self.args.classes < 500 else 2
        prepare.main(["--src", src, "--out", self.data, "--prefix", PREFIX, "--resize", str(side + side // 8),
                      "--train-per-class", str(self.args.train_per_class),
                      "--val-per-class", str(self.args.val_per_class), "--num-thread", str(pack_workers)])

    def _run(self, cmd, label=None):
        """(exit-checked output, wall seconds) of cmd, in its own process group, without the
        user's MXNet settings (tools.benchkit.child_env). label: what an error calls it."""
        label = label or " ".join(cmd[:2])
        tic = time.perf_counter()
        try:
            code, output = run_group(cmd, self.args.timeout, env=child_env(PYTHONPATH=REPO), cwd=REPO)
        except RuntimeError as exc:  # the time limit: the whole group was killed
            raise UserError(f"{label}: {exc}") from None
        wall = time.perf_counter() - tic
        if code != 0:
            raise UserError(f"{label} failed (exit {code}): {failure_line(output)}")
        return output, wall

    def _model_prefix(self, tag):
        self.runs += 1
        return os.path.join(self.work, "runs", f"{self.runs:02d}-{tag}", "model")

    def train_command(self, prefix, *extra, batch_size=None, mode="full"):
        """train_caltech.py --mode MODE on the data and checkpoint, writing to `prefix`; extra: more options."""
        return [sys.executable, "train_caltech.py", "--data-dir", self.data, "--prefix", PREFIX,
                "--network", self.args.network, "--image-shape", self.shape, "--mode", mode,
                "--pretrained-model", self.pretrained, "--pretrained-epoch", "0",
                "--num-epochs", str(self.args.epochs), "--batch-size", str(batch_size or self.args.batch_size),
                "--model-prefix", prefix, *extra]

    def ours(self, data_threads=None):
        prefix = self._model_prefix("ours")
        extra = [] if data_threads is None else ["--data-nthreads", str(data_threads)]
        _, wall = self._run(self.train_command(prefix, "--cpus", "1", *extra))
        figures, recorded = read_run(prefix)
        return {**figures, "wall_seconds": wall, "data_threads": recorded["data_nthreads"],
                "threads": recorded["threads"]["settings"], "first_batch_seconds": first_batch_seconds(prefix)}

    def baseline(self):
        prefix = self._model_prefix("baseline")
        os.makedirs(os.path.dirname(prefix))
        output, wall = self._run([sys.executable, os.path.join("bench", "baseline_finetune.py"),
                                  "--pretrained", self.pretrained, "--num-classes", str(self.args.classes),
                                  "--data-train", os.path.join(self.data, f"{PREFIX}-train.rec"),
                                  "--data-val", os.path.join(self.data, f"{PREFIX}-val.rec"),
                                  "--image-shape", self.shape, "--batch-size", str(self.args.batch_size),
                                  "--num-epochs", str(self.args.epochs), "--model-prefix", prefix])
        figures = _last_json(output)
        steady = figures["train_seconds"][1:]
        return {"images_per_sec": figures["images_per_epoch"] * len(steady) / sum(steady),
                "wall_seconds": wall, "val_acc": figures["val_acc"]}

    def compute(self):
        steps = (self.args.epochs - 1) * self.args.classes * self.args.train_per_class // self.args.batch_size
        output, wall = self._run([sys.executable, "-m", "bench.compute_bound", "--pretrained", self.pretrained,
                                  "--num-classes", str(self.args.classes), "--image-shape", self.shape,
                                  "--batch-size", str(self.args.batch_size), "--steps", str(max(steps, 5))])
        figures = _last_json(output)
        return {"images_per_sec": figures["images_per_sec"], "wall_seconds": wall,
                "threads": figures["threads"]["settings"]}


def run_conditions(args):
    """The machine and the options of add_bench_args, as a benchmark's conditions."""
    return {**data_conditions(args), "epochs": args.epochs, "pairs": args.pairs}


def data_conditions(args):
    """The machine and the options of add_data_args, as a benchmark's conditions."""
    return {**machine(), "cores": usable_cores(), "decode_limit": decode_limit(), "network": args.network,
            "image_shape": list(args.image_shape), "batch_size": args.batch_size,
            "train_images": args.classes * args.train_per_class, "val_images": args.classes * args.val_per_class}


def read_run(prefix):
    """({images_per_sec, val_acc}, PREFIX-args.json) of a finished train_caltech.py run:
    images/s of the epochs after the first (PREFIX-metrics.jsonl), the last epoch's val_acc."""
    records = read_metrics(f"{prefix}-metrics.jsonl")[1:]
    images = sum(r["images_per_sec"] * r["seconds"] for r in records)
    with open(f"{prefix}-args.json", encoding="utf-8") as f:
        recorded = json.load(f)
    figures = {"images_per_sec": images / sum(r["seconds"] for r in records), "val_acc": records[-1]["val_acc"]}
    return figures, recorded


def first_batch_seconds(prefix):
    """Seconds from launch to the first trained batch, as PREFIX-train.log says (None if it does not)."""
    with open(f"{prefix}-train.log", encoding="utf-8") as f:
        found = re.search(r"first training batch done ([0-9.]+) s after launch", f.read())
    return float(found.group(1)) if found else None


def _last_json(output):
    return json.loads(output.strip().splitlines()[-1])


def interleaved(run, names, pairs):
    """{name: [figures of each round]}: round r calls run(name) for each of `names` in
    order, or reversed when r is odd."""
    runs = {name: [] for name in names}
    for round_ in range(pairs):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            figures = run(name)
            log.info("round %d/%d %-12s %6.1f images/s, %5.1f s%s", round_ + 1, pairs, name,
                     figures["images_per_sec"], figures["wall_seconds"],
                     f", val_acc {figures['val_acc']:.4f}" if "val_acc" in figures else "")
            runs[name].append(figures)
    return runs


def ratios(numerators, denominators, key, invert=False):
    """spread() of the per-round ratios numerator/denominator of `key` (invert: d/n)."""
    values = [(d[key] / n[key]) if invert else (n[key] / d[key]) for n, d in zip(numerators, denominators)]
    return {**spread(values), "rounds": values}


def summarize(runs, sweep):
    ours, base, compute = runs["ours"], runs["baseline"], runs["compute"]
    bound = spread([c["images_per_sec"] for c in compute])["median"]
    return {
        "vs_baseline": ratios(ours, base, "images_per_sec"),
        "vs_baseline_wall": ratios(ours, base, "wall_seconds", invert=True),
        "pipeline_vs_compute": ratios(ours, compute, "images_per_sec"),
        "images_per_sec": {name: spread([r["images_per_sec"] for r in rows]) for name, rows in runs.items()},
        "wall_seconds": {name: spread([r["wall_seconds"] for r in rows]) for name, rows in runs.items()},
        "val_acc": {name: spread([r["val_acc"] for r in rows]) for name, rows in runs.items() if name != "compute"},
        "launch_to_first_batch_seconds": spread([r["first_batch_seconds"] for r in ours]),
        "data_threads": [{"data_threads": r["data_threads"], "images_per_sec": r["images_per_sec"],
                          "vs_compute_median": r["images_per_sec"] / bound} for r in sweep],
    }


def print_table(summary):
    print("| figure | median | min | max |\n|---|---:|---:|---:|")
    for key in ("vs_baseline", "vs_baseline_wall", "pipeline_vs_compute"):
        s = summary[key]
        print(f"| {key} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    for name, s in summary["images_per_sec"].items():
        print(f"| {name} images/s | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    for name, s in summary["val_acc"].items():
        print(f"| {name} val_acc | {s['median']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
    for row in summary["data_threads"]:
        print(f"| ours, --data-nthreads {row['data_threads']}: images/s (vs compute) | "
              f"{row['images_per_sec']:.1f} ({row['vs_compute_median']:.2f}) | | |")


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    with work_folder(args.workdir, "bench-train", args.out) as work:
        bench = Bench(args, work)
        bench.prepare()
        runs = interleaved(lambda name: getattr(bench, name)(), ("ours", "baseline", "compute"), args.pairs)
        sweep = [bench.ours(data_threads=n) for n in args.data_threads]
        for row in sweep:
            log.info("ours, --data-nthreads %d: %.1f images/s", row["data_threads"], row["images_per_sec"])
    summary = summarize(runs, sweep)
    conditions = {**run_conditions(args), "threads": {
                      "ours": runs["ours"][0]["threads"], "compute": runs["compute"][0]["threads"],
                      "baseline": f"MXNet's default: {max(1, usable_cores() // 2)} OpenMP thread(s)"}}
    write_json_atomic(args.out, {"conditions": conditions, **summary, "runs": runs, "sweep": sweep})
    print_table(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_train"))
