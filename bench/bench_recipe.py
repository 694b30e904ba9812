#!/usr/bin/env python3
"""Benchmark: time to accuracy of --recipe modern against --recipe classic, on real photographs.

The task is tools/photoset.py's: each photograph is cut into GRID x GRID regions, a
region is a class, its images are random crops of it. Pretraining: train_caltech.py
--mode full from random weights on the regions of --pretrain-photos (one run, SGD with
momentum, cosine); the checkpoint it writes stands in for a zoo model. Then, for each
seed, on the regions of --finetune-photos (other photographs), interleaved:
  classic       --recipe classic, --epochs epochs (the published recipe)
  modern        --recipe modern, the same epochs
  modern-half   --recipe modern, half the epochs (a schedule that ends there)
  and each --variant: modern plus its options, --epochs epochs
Every run's validation accuracy per epoch comes from its PREFIX-metrics.jsonl. The
figures: the epochs modern needs to reach classic's final accuracy (same seed), over
classic's epochs (target <= 0.5), and each recipe's final accuracy; a plot of the curves.

    pip install -r requirements-bench.txt        # scikit-image's photographs (once)
    python -m bench.bench_recipe                 # ResNet-20 at 3x32x32, 3 seeds (~25 min on 2 cores)
    python -m bench.bench_recipe --variant mixup="--mixup 0.2" --variant ema="--ema 0.99"
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_recipe")

import argparse  # noqa: E402
import logging
import os
import sys

from bench.bench_train import Bench
from common.cli import (HelpFormatter, OneLineArgumentParser, UserError, int_at_least, positive_int,
                        run_entry, setup_logging)
from common.fsutil import write_json_atomic
from common.report import read_metrics
from common.threads import usable_cores
from symbols import NETWORKS
from tools import photoset
from tools.benchkit import add_run_args, machine, spread, work_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_recipe.json")
PREFIX = "photos"
TARGET = 0.5  # modern's epochs to classic's final accuracy, over classic's epochs
log = logging.getLogger("bench_recipe")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_recipe", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    task = parser.add_argument_group("task (tools/photoset.py)")
    task.add_argument("--pretrain-photos", metavar="NAMES", type=_photos, default=",".join(photoset.PRETRAIN))
    task.add_argument("--finetune-photos", metavar="NAMES", type=_photos, default=",".join(photoset.FINETUNE))
    task.add_argument("--grid", metavar="G", type=int_at_least(2), default=4, help="G x G regions a photograph")
    task.add_argument("--side", metavar="PX", type=int_at_least(16), default=40,
                      help="generated images' side; packed at 9/10 of it, trained at 4/5 (crops)")
    task.add_argument("--pretrain-per-class", metavar="N", type=positive_int, default=60)
    task.add_argument("--train-per-class", metavar="N", type=positive_int, default=30)
    task.add_argument("--val-per-class", metavar="N", type=positive_int, default=20)
    runs = parser.add_argument_group("runs")
    runs.add_argument("--network", default="resnet-20", choices=sorted(NETWORKS), metavar="NAME")
    runs.add_argument("--batch-size", metavar="N", type=positive_int, default=32)
    runs.add_argument("--pretrain-epochs", metavar="E", type=positive_int, default=12)
    runs.add_argument("--epochs", metavar="E", type=int_at_least(2), default=8, help="classic's and modern's")
    runs.add_argument("--seeds", metavar="LIST", type=_seeds, default="0,1,2")
    runs.add_argument("--variant", metavar="NAME=OPTIONS", type=_variant, action="append", default=[],
                      help="one more run per seed: modern plus OPTIONS (e.g. mixup=\"--mixup 0.2\")")
    add_run_args(parser, DEFAULT_OUT, timeout=3600)
    return parser


def _photos(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in photoset.PHOTOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown photograph {(unknown or [text])[0]!r}; valid: "
                                         f"{', '.join(photoset.PHOTOS)}")
    return names


def _seeds(text):
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = [-1]
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, e.g. 0,1,2, got {text!r}")
    return list(dict.fromkeys(seeds))


def _variant(text):
    name, sep, options = text.partition("=")
    if not sep or not name.strip() or not options.split() or name.strip() in RECIPES:
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS with a new NAME (not {', '.join(RECIPES)}), "
                                         f"e.g. ema=\"--ema 0.99\", got {text!r}")
    return name.strip(), options.split()


# name: (options, epochs as a fraction of --epochs)
RECIPES = {"classic": (["--recipe", "classic"], 1), "modern": (["--recipe", "modern"], 1),
           "modern-half": (["--recipe", "modern"], 0.5)}
# The pretraining's own options: from random weights, so none of modern's pretrained-layer rate.
PRETRAIN_OPTIONS = ["--lr", "0.1", "--mom", "0.9", "--wd", "1e-4", "--lr-schedule", "cosine",
                    "--warmup-epochs", "1"]


class RecipeBench(Bench):
    """Bench's runs of train_caltech.py, on the photograph task."""

    def __init__(self, args, work):
        args.image_shape = (3, args.side * 4 // 5, args.side * 4 // 5)
        super().__init__(args, work)
        self.source = os.path.join(work, "zoo", "pretrained")

    def prepare(self):
        """Both sets generated and packed; the pretraining run, whose last epoch is the
        fine-tuning runs' --pretrained-model."""
        from common.prep import main as prepare
        from tools.zoocheckpoint import make_pretrained
        sets = {"pretrain": (self.args.pretrain_photos, self.args.pretrain_per_class * 5 // 6,
                             self.args.pretrain_per_class - self.args.pretrain_per_class * 5 // 6),
                "finetune": (self.args.finetune_photos, self.args.train_per_class, self.args.val_per_class)}
        for seed, (name, (photos, train, val)) in enumerate(sets.items()):
            src = os.path.join(self.work, f"src-{name}")
            photoset.make_photo_classes(src, photos, grid=self.args.grid, per_class=train + val,
                                        side=self.args.side, seed=seed)
            prepare.main(["--src", src, "--out", os.path.join(self.work, f"data-{name}"), "--prefix", PREFIX,
                          "--resize", str(self.args.side * 9 // 10), "--train-per-class", str(train),
                          "--val-per-class", str(val), "--num-thread", "2"])
        classes = len(self.args.pretrain_photos) * self.args.grid ** 2
        make_pretrained(self.source, num_classes=classes, num_layers=NETWORKS[self.args.network][1],
                        image_shape=self.args.image_shape)
        self.data = os.path.join(self.work, "data-pretrain")
        prefix = os.path.join(self.work, "pretrain", "model")
        self._run(self._command(self.source, prefix, self.args.pretrain_epochs, PRETRAIN_OPTIONS), "pretraining")
        self.pretraining = read_metrics(f"{prefix}-metrics.jsonl")
        log.info("pretrained: %d classes, validation accuracy %.4f after %d epochs", classes,
                 self.pretraining[-1]["val_acc"], self.args.pretrain_epochs)
        self.data, self.pretrained = os.path.join(self.work, "data-finetune"), (prefix, self.args.pretrain_epochs)

    def _command(self, source, prefix, epochs, options, source_epoch=0, seed=0):
        return [sys.executable, "train_caltech.py", "--data-dir", self.data, "--prefix", PREFIX,
                "--network", self.args.network, "--image-shape", self.shape, "--mode", "full",
                "--pretrained-model", source, "--pretrained-epoch", str(source_epoch),
                "--num-epochs", str(epochs), "--batch-size", str(self.args.batch_size), "--seed", str(seed),
                "--cpus", "1", "--model-prefix", prefix, *options]

    def finetune(self, name, options, epochs, seed):
        """{name, seed, epochs, val_acc: [per epoch], wall_seconds} of one fine-tuning run."""
        prefix = self._model_prefix(f"{name}-seed{seed}")
        _, wall = self._run(self._command(self.pretrained[0], prefix, epochs, options, self.pretrained[1], seed),
                            f"{name} seed {seed}")
        records = read_metrics(f"{prefix}-metrics.jsonl")
        if len(records) != epochs:
            raise UserError(f"{prefix}: {len(records)} epochs in its metrics.jsonl, expected {epochs}")
        log.info("seed %d %-12s val_acc by epoch %s (%.0f s)", seed, name,
                 " ".join(f"{r['val_acc']:.3f}" for r in records), wall)
        return {"name": name, "seed": seed, "epochs": epochs, "val_acc": [r["val_acc"] for r in records],
                "wall_seconds": wall}


def run_all(bench, args):
    """Every run: per seed, the recipes and variants, in alternating order."""
    plan = {name: (options, max(1, round(args.epochs * fraction))) for name, (options, fraction) in RECIPES.items()}
    plan.update({name: (["--recipe", "modern", *options], args.epochs) for name, options in args.variant})
    runs = []
    for k, seed in enumerate(args.seeds):
        for name in (list(plan) if k % 2 == 0 else list(plan)[::-1]):
            runs.append(bench.finetune(name, plan[name][0], plan[name][1], seed))
    return runs


def epochs_to_reach(curve, accuracy):
    """The first epoch (1-based) whose accuracy reaches `accuracy`, or None."""
    return next((epoch for epoch, value in enumerate(curve, 1) if value >= accuracy), None)


def summarize(runs, epochs):
    """Per recipe the final accuracies; per seed the epochs each non-classic run needs to
    reach classic's final accuracy; time_to_accuracy: modern's over classic's epochs."""
    by = {}
    for run in runs:
        by.setdefault(run["name"], {})[run["seed"]] = run
    classic = by["classic"]
    summary = {"final_val_acc": {name: spread([r["val_acc"][-1] for r in rows.values()]) for name, rows in by.items()},
               "epochs_to_classic_final": {}}
    for name, rows in by.items():
        if name != "classic":
            summary["epochs_to_classic_final"][name] = {
                str(seed): epochs_to_reach(run["val_acc"], classic[seed]["val_acc"][-1]) for seed, run in rows.items()}
    reached = summary["epochs_to_classic_final"]["modern"]
    # A seed whose modern run never reaches classic's accuracy counts as more than all epochs.
    summary["time_to_accuracy"] = spread([(e if e is not None else epochs + 1) / epochs for e in reached.values()])
    summary["time_to_accuracy"]["never_reached"] = sum(e is None for e in reached.values())
    summary["half_reaches_classic"] = {str(seed): run["val_acc"][-1] >= classic[seed]["val_acc"][-1]
                                       for seed, run in by["modern-half"].items()}
    return summary


def plot(runs, path, title):
    """Validation accuracy per epoch: each recipe's median over seeds, min-max shaded."""
    import numpy as np
    from common.report import _figure, _save_png
    fig = _figure((7, 4.2))
    axis = fig.subplots()
    names = list(dict.fromkeys(r["name"] for r in runs))
    for name in names:
        curves = np.array([r["val_acc"] for r in runs if r["name"] == name])
        epochs = np.arange(1, curves.shape[1] + 1)
        line, = axis.plot(epochs, np.median(curves, axis=0), marker="o", label=f"{name} ({len(curves)} seeds)")
        axis.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.15)
    axis.set(xlabel="epoch", ylabel="validation top-1 accuracy", title=title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    _save_png(fig, path)


def print_table(summary, epochs):
    t = summary["time_to_accuracy"]
    print("| figure | median | min | max |\n|---|---:|---:|---:|")
    print(f"| time_to_accuracy (modern's epochs to classic's final / {epochs}) | {t['median']:.3f} | "
          f"{t['min']:.3f} | {t['max']:.3f} |")
    for name, s in summary["final_val_acc"].items():
        print(f"| {name} final val_acc | {s['median']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
    for name, seeds in summary["epochs_to_classic_final"].items():
        print(f"| {name}: epochs to classic's final, by seed | "
              f"{', '.join(f'{s}: {e}' for s, e in seeds.items())} | | |")


def conditions(args, bench):
    return {**machine(), "cores": usable_cores(), "network": args.network, "image_shape": list(args.image_shape),
            "batch_size": args.batch_size, "epochs": args.epochs, "seeds": args.seeds, "grid": args.grid,
            "pretrain_photos": args.pretrain_photos, "finetune_photos": args.finetune_photos,
            "pretrain_epochs": args.pretrain_epochs,
            "pretrain_images": len(args.pretrain_photos) * args.grid ** 2 * args.pretrain_per_class,
            "train_images": len(args.finetune_photos) * args.grid ** 2 * args.train_per_class,
            "val_images": len(args.finetune_photos) * args.grid ** 2 * args.val_per_class,
            "pretrain_val_acc": bench.pretraining[-1]["val_acc"],
            "variants": {name: " ".join(options) for name, options in args.variant}}


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    shared = [name for name in args.finetune_photos if name in args.pretrain_photos]
    if shared:
        raise UserError(f"--finetune-photos {','.join(shared)}: also in --pretrain-photos; the fine-tuning task "
                        f"must be photographs the pretraining never saw")
    for name in args.pretrain_photos + args.finetune_photos:
        try:
            photoset.photo_path(name)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    with work_folder(args.workdir, "bench-recipe", args.out) as work:
        bench = RecipeBench(args, work)
        bench.prepare()
        runs = run_all(bench, args)
    summary = summarize(runs, args.epochs)
    picture = os.path.splitext(args.out)[0] + ".png"
    plot(runs, picture, f"{args.network}, {len(args.finetune_photos) * args.grid ** 2} photograph regions, "
                        f"{args.train_per_class} training images each")
    write_json_atomic(args.out, {"conditions": conditions(args, bench), **summary, "runs": runs,
                                 "pretraining": bench.pretraining})
    print_table(summary, args.epochs)
    print(f"wrote {args.out} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_recipe"))
