"""Benchmark: what --hard-mining does on a deliberately hard generated task.

The task: 6 colour classes (tools/imagegen.py), 120 training images in each of
classes 0-2 and 4 in each of 3-5 (30 to 1), 10 validation images per class;
ResNet-20 from scratch at 3x16x16, SGD lr 0.01 momentum 0.9 wd 1e-4, batch 8,
constant learning rate. Each seed trains the plain order and --hard-mining F with
the bit-repeatable engine settings; the table is the validation mean per-class
accuracy after each epoch, mean and standard deviation over the seeds.

    python -m bench.bench_mining                       # 8 seeds, 6 epochs, F = 0.1 (~5 min on 2 cores)
    python -m bench.bench_mining --seeds 2 --fractions 0.1,0.3
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_mining")  # before the imports below, which need the requirements

import concurrent.futures  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from common.cli import HelpFormatter, OneLineArgumentParser, UserError, positive_int, run_entry  # noqa: E402
from common.fsutil import write_json_atomic  # noqa: E402
from tools.benchkit import machine, make_workdir, run_group  # noqa: E402
from tools.imagegen import packed_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_mining.json")
TRAIN_COUNTS = [120] * 3 + [4] * 3
TRAIN = ["--network", "resnet-20", "--image-shape", "3,16,16", "--batch-size", "8", "--cpus", "1", "--top-k", "2",
         "--data-nthreads", "1", "--disp-batches", "1000", "--mode", "scratch", "--lr", "0.01", "--mom", "0.9",
         "--wd", "1e-4"]
REPEATABLE = {"MXNET_ENGINE_TYPE": "NaiveEngine", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_mining", formatter_class=HelpFormatter,
                                   description="Plain order against --hard-mining on an imbalanced generated set.")
    parser.add_argument("--seeds", metavar="N", type=positive_int, default=8, help="seeds 0..N-1")
    parser.add_argument("--epochs", metavar="E", type=positive_int, default=6, help="epochs of every run")
    parser.add_argument("--fractions", metavar="F,F", default="0.1", help="--hard-mining fractions to compare")
    parser.add_argument("--jobs", metavar="J", type=positive_int, default=2, help="runs at a time")
    parser.add_argument("--out", metavar="JSON", default=DEFAULT_OUT, help="results file")
    parser.add_argument("--workdir", metavar="DIR", help="data and runs (default: a temporary folder)")
    return parser


def train(data, folder, name, flags, seed, epochs):
    """(name, seed, [mean per-class accuracy after each epoch]) of one train_caltech.py run."""
    prefix = os.path.join(folder, f"{name}-seed{seed}", "run")
    env = " ".join(f"{k}={v}" for k, v in REPEATABLE.items())
    cmd = ["env", *env.split(), sys.executable, os.path.join(REPO, "train_caltech.py"), "--data-dir", data,
           "--model-prefix", prefix, "--num-epochs", str(epochs), "--seed", str(seed), *TRAIN, *flags]
    code, output = run_group(cmd, timeout=600)
    if code != 0:
        raise UserError(f"{name} seed {seed} failed (exit {code}): {output.strip().splitlines()[-1]}")
    with open(f"{prefix}-metrics.jsonl") as f:
        return name, seed, [json.loads(line)["val_mean_class_acc"] for line in f]


def main(argv=None):
    args = get_parser().parse_args(argv)
    variants = {"plain": []}
    variants.update({f"hard-mining {f}": ["--hard-mining", f] for f in args.fractions.split(",")})
    folder, remove = make_workdir(args.workdir, "bench_mining")
    try:
        data = packed_dataset(os.path.join(folder, "task"), TRAIN_COUNTS)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            runs = [pool.submit(train, data, folder, name, flags, seed, args.epochs)
                    for seed in range(args.seeds) for name, flags in variants.items()]
            results = {}
            for run in runs:
                name, seed, accs = run.result()
                results.setdefault(name, {})[seed] = accs
    finally:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results, args.seeds, args.epochs)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, {"benchmark": "bench_mining", "conditions": dict(
        machine(), train_counts=TRAIN_COUNTS, train=TRAIN, env=REPEATABLE, seeds=args.seeds, epochs=args.epochs),
        "val_mean_class_acc": results})
    print(f"results: {args.out}")


def print_table(results, seeds, epochs):
    """Markdown: mean +- std over seeds of each epoch's mean per-class accuracy, and how many
    seeds each variant beat plain in."""
    print(f"val mean per-class accuracy, mean +- std over {seeds} seeds (chance 0.17):")
    print("| run | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " |")
    print("|---|" + "---|" * epochs)
    plain = np.array([results["plain"][s] for s in range(seeds)])
    for name, by_seed in results.items():
        accs = np.array([by_seed[s] for s in range(seeds)])
        cells = [f"{m:.3f} +- {d:.3f}" for m, d in zip(accs.mean(0), accs.std(0))]
        if name != "plain":
            cells = [f"{c} ({w}>, {t}=)" for c, w, t in zip(cells, (accs > plain).sum(0), (accs == plain).sum(0))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(k>, t=): seeds in which the run beat plain, and tied it")


if __name__ == "__main__":
    raise SystemExit(run_entry(main, "python -m bench.bench_mining"))
