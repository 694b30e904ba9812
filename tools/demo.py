"""`make demo`: the whole pipeline on CPU in a few minutes, offline.

Stand-ins for what cannot be downloaded here: scikit-learn's handwritten digits
(1,797 real 8x8 scans that ship inside the package) for Caltech-256, and a small
ResNet trained on digits 0-4 for the ImageNet checkpoint. The target task is
digits 5-9 with only a few training images per class, which is where
pretraining should pay off. Every step runs the user-facing command
(prepare_data.sh, train_caltech.py, predict.py) as a subprocess.
"""
import os
import re
import shutil
import subprocess
import sys
import time

from common.cli import HelpFormatter, OneLineArgumentParser, UserError, positive_int, run_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIGITS = range(0, 5)  # the "ImageNet" of the demo
TARGET_DIGITS = range(5, 10)  # the "Caltech-256" of the demo
IMAGE_SIDE = 32  # digits are upsampled from 8x8 to this, then packed at this size
NETWORK, IMAGE_SHAPE = "resnet-20", "3,28,28"  # random 28 px crops of the 32 px images
MODES = ("full", "last-layer", "scratch")
# One optimizer for every run, so the table compares starting points only.
SGD = {"lr": 0.05, "mom": 0.9, "wd": 0.0001}
_FINAL = re.compile(r"final: val_acc=([\d.]+) top(\d+)=([\d.]+) mean_class_acc=([\d.]+)")
_FOLDS = re.compile(r" folds=(\d+) fold_val_acc=([\d.]+)")
_TTA = re.compile(r"^score: acc=([\d.]+) .* tta_acc=([\d.]+)", re.M)
KFOLD = 3  # the toolbox table's ensemble
# Another OpenMP thread count sums in another order, and on 50 training images that moves
# every figure by points, not digits: one thread (unless the user sets OMP_NUM_THREADS)
# prints the same table on every machine, and gives the checkpoint the README's commands use.
DEMO_THREADS = {"OMP_NUM_THREADS": "1"}


def get_parser():
    parser = OneLineArgumentParser(prog="demo", formatter_class=HelpFormatter,
                                   description="Offline end-to-end demo on scikit-learn's digits.")
    parser.add_argument("--out", default="demo", help="work folder (replaced)")
    parser.add_argument("--train-per-class", type=positive_int, default=10,
                        help="target training images per class")
    parser.add_argument("--pretrain-epochs", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=12, help="fine-tuning epochs per mode")
    parser.add_argument("--cpus", type=positive_int, default=1, help="CPU contexts per run")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def write_digits(root, digits, images=slice(None)):
    """Write scikit-learn's digits `digits` as PNG class folders digit-N/; returns counts.

    images: which of each digit's images (in the data set's order), e.g. slice(0, None, 2)
    for every other one; the files keep their index in that order as their name.
    """
    import cv2
    import numpy as np
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("scikit-learn is not installed: run `make demo`, which installs "
                        "requirements.txt into .venv") from None
    data = load_digits()
    counts = {}
    for digit in digits:
        folder = os.path.join(root, f"digit-{digit}")
        os.makedirs(folder, exist_ok=True)
        scans = data.images[data.target == digit]
        indices = range(len(scans))[images]
        for i in indices:
            gray = np.round(scans[i] * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels
            big = cv2.resize(gray, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(os.path.join(folder, f"{i:04d}.png"), big)
        counts[digit] = len(indices)
    return counts


def run(cmd, log_path):
    """Run a project command; its output goes to log_path; returns its stdout."""
    env = {**DEMO_THREADS, **os.environ, "PYTHON": sys.executable, "TQDM_DISABLE": "1", "PYTHONPATH": REPO}
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        log.write(result.stdout)
    if result.returncode != 0:
        raise UserError(f"{' '.join(cmd[:3])} failed (exit {result.returncode}); see {log_path}")
    return result.stdout


def prepare(out, name, digits, train_per_class, seed, images=slice(None)):
    """Digit folders (write_digits' `images` of each) -> RecordIO via prepare_data.sh; returns the data folder."""
    src, data = os.path.join(out, f"{name}-images"), os.path.join(out, f"{name}-data")
    write_digits(src, digits, images)
    run(["bash", "prepare_data.sh", "--src", src, "--out", data, "--prefix", name,
         "--train-per-class", str(train_per_class), "--resize", str(IMAGE_SIDE),
         "--seed", str(seed)], os.path.join(out, f"prepare-{name}.log"))
    return data


def train(out, data, name, mode, epochs, cpus, seed, *extra, tag=None, share=1.0):
    """One train_caltech.py run under PREFIX out/model/NAME-TAG (TAG: the mode unless
    given); share: the part of the training set each model trains on (K-fold).
    Returns (figures dict, seconds)."""
    tag = tag or mode
    prefix = os.path.join(out, "model", f"{name}-{tag}")
    batch = demo_batch(data, name, cpus, share)
    tic = time.time()
    stdout = run([sys.executable, "train_caltech.py", "--data-dir", data, "--prefix", name,
                  "--network", NETWORK, "--image-shape", IMAGE_SHAPE, "--mode", mode,
                  "--num-epochs", str(epochs), "--cpus", str(cpus), "--batch-size", str(batch),
                  "--top-k", "2", "--seed", str(seed), "--model-prefix", prefix,
                  "--disp-batches", "1000", *extra], os.path.join(out, f"train-{name}-{tag}.log"))
    acc, k, topk, mean_class = _FINAL.search(stdout).groups()
    figures = {"prefix": prefix, "acc": float(acc), f"top{k}": float(topk), "mean_class_acc": float(mean_class)}
    folds = _FOLDS.search(stdout)
    if folds:
        figures["fold_val_acc"] = float(folds.group(2))
    return figures, time.time() - tic


def demo_batch(data, name, cpus, share=1.0):
    """16 images per context, but no more than `share` of the training set holds (split evenly)."""
    from common.prep.imagefolder import read_lst
    images = int(len(read_lst(os.path.join(data, f"{name}-train.lst"))) * share)
    return min(16 * cpus, images - images % cpus)


def score_tta(out, data, name, prefix, epoch, cpus):
    """score.py --tta on the validation set; returns ((plain acc, TTA acc), seconds)."""
    tic = time.time()
    stdout = run([sys.executable, "score.py", "--model-prefix", prefix, "--epoch", str(epoch), "--data-val",
                  os.path.join(data, f"{name}-val.rec"), "--top-k", "2", "--cpus", str(cpus), "--tta"],
                 os.path.join(out, "score-tta.log"))
    plain, tta = _TTA.search(stdout).groups()
    return (float(plain), float(tta)), time.time() - tic


def export_zoo(prefix, epoch, zoo_prefix):
    """Copy a checkpoint to the zoo's layout: ZOO-symbol.json + ZOO-0000.params."""
    shutil.copyfile(f"{prefix}-symbol.json", f"{zoo_prefix}-symbol.json")
    shutil.copyfile(f"{prefix}-{epoch:04d}.params", f"{zoo_prefix}-0000.params")
    return zoo_prefix


def fresh_folder(out):
    """Empty `out`, but only if it is missing, empty, or an earlier demo's folder."""
    marker = os.path.join(out, ".demo-output")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(marker):
        raise UserError(f"--out {out} exists and was not made by the demo; choose another folder")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "model"))
    open(marker, "w").close()


def predict_examples(out, data, name, prefix, epochs):
    """predict.py top-3 on the first validation image of each class."""
    from common.prep.imagefolder import read_lst
    rows = read_lst(os.path.join(data, f"{name}-val.lst"))
    src = os.path.join(out, f"{name}-images")
    firsts = {}
    for _, label, rel in rows:
        firsts.setdefault(label, os.path.join(src, rel))
    return run([sys.executable, "predict.py", "--model-prefix", prefix, "--epoch", str(epochs),
                "--top-k", "3", *firsts.values()], os.path.join(out, "predict.log"))


def main(argv=None):
    args = get_parser().parse_args(argv)
    out = os.path.abspath(args.out)
    fresh_folder(out)
    tic = time.time()
    sgd = [arg for key, value in SGD.items() for arg in (f"--{key}", str(value))]
    print(f"[1/5] pretraining {NETWORK} on digits 0-4 (the demo's ImageNet) ...", flush=True)
    source = prepare(out, "digits04", SOURCE_DIGITS, 150, args.seed)
    pre, _ = train(out, source, "digits04", "scratch", args.pretrain_epochs, args.cpus, args.seed, *sgd)
    zoo = export_zoo(pre["prefix"], args.pretrain_epochs, os.path.join(out, "model", f"digits04-{NETWORK}"))
    print(f"      val_acc {pre['acc']:.4f} on digits 0-4; saved as zoo checkpoint {zoo}-0000.params")
    print(f"[2/5] preparing digits 5-9 with {args.train_per_class} training images per class ...", flush=True)
    target = prepare(out, "digits59", TARGET_DIGITS, args.train_per_class, args.seed)
    results = {}
    for step, mode in enumerate(MODES, 1):
        print(f"[3/5] fine-tuning, mode {mode} ({step}/{len(MODES)}) ...", flush=True)
        extra = [] if mode == "scratch" else ["--pretrained-model", zoo]
        results[mode] = train(out, target, "digits59", mode, args.epochs, args.cpus, args.seed, *sgd, *extra)
    print_table(results, args)
    print("[4/5] the fine-tuning toolbox on the same task ...", flush=True)
    print_toolbox(toolbox(out, target, zoo, args, sgd, results), args)
    print("[5/5] predict.py --top-k 3 on one validation image per class (model: full):", flush=True)
    print(predict_examples(out, target, "digits59", results["full"][0]["prefix"], args.epochs))
    print(f"demo finished in {time.time() - tic:.0f} s; everything is under {out}")


def print_table(results, args):
    total = sum(1 for _ in TARGET_DIGITS)
    print(f"\nDigits 5-9, {args.train_per_class} training images per class, {NETWORK}, "
          f"{args.epochs} epochs, SGD lr {SGD['lr']} momentum {SGD['mom']}, {args.cpus} CPU context(s):")
    print("| mode | val top-1 | val top-2 | mean per-class | seconds |\n|---|---|---|---|---|")
    for mode, (figures, seconds) in results.items():
        print(f"| {mode} | {figures['acc']:.4f} | {figures['top2']:.4f} | "
              f"{figures['mean_class_acc']:.4f} | {seconds:.0f} |")
    print(f"(chance: {1 / total:.2f})\n")


def toolbox(out, target, zoo, args, sgd, results):
    """[(what, val top-1, seconds)]: TTA, a K-fold ensemble and a cached-feature head beside
    the runs of `results` they compare with; then model fusion, on a task of its own."""
    full, full_seconds = results["full"]
    (plain, tta), tta_seconds = score_tta(out, target, "digits59", full["prefix"], args.epochs, args.cpus)
    common = (args.epochs, args.cpus, args.seed, *sgd, "--pretrained-model", zoo)
    kfold, kfold_seconds = train(out, target, "digits59", "full", *common, "--kfold", str(KFOLD),
                                 tag=f"full-kfold{KFOLD}", share=(KFOLD - 1) / KFOLD)
    cached, cached_seconds = train(out, target, "digits59", "last-layer", *common, "--cache-features",
                                   tag="last-layer-cached")
    return [("full, center crop (score.py)", plain, None),
            ("full, TTA: center + 4 corners, mirrored (score.py --tta)", tta, tta_seconds),
            (f"full, {KFOLD}-fold ensemble (--kfold {KFOLD}; fold models' mean {kfold['fold_val_acc']:.4f})",
             kfold["acc"], kfold_seconds),
            ("last-layer (the table above)", results["last-layer"][0]["acc"], results["last-layer"][1]),
            ("last-layer, cached features (--cache-features)", cached["acc"], cached_seconds),
            *fusion_rows(out, args)]


def fusion_rows(out, args):
    """The fusion demo's rows (tools/fusiondemo.py: its own task, all ten digits)."""
    from tools import fusiondemo  # it imports this module
    fused = fusiondemo.fusion_figures(out, train_per_class=args.train_per_class, pretrain_epochs=args.pretrain_epochs,
                                      epochs=args.epochs, cpus=args.cpus, seed=args.seed)
    return [(f"digits 0-9, last-layer: {fusiondemo.ROWS[key]}", figures["acc"], seconds)
            for key, (figures, seconds) in fused.items() if key in fusiondemo.ROWS]


def print_toolbox(rows, args):
    print(f"\nThe toolbox on the same task and budget ({args.epochs} epochs per model; seconds: whole commands):")
    print("| what | val top-1 | seconds |\n|---|---|---|")
    for what, acc, seconds in rows:
        print(f"| {what} | {acc:.4f} | {'' if seconds is None else f'{seconds:.0f}'} |")
    print()


if __name__ == "__main__":
    sys.exit(run_entry(main, "demo"))
