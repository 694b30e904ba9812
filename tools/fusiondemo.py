"""Model fusion on the demo's digits: two backbones that each know half of the classes, fused.

One ResNet-20 is pretrained on the odd digits, another on the even ones (each from
scratch, on every other image of its digits); the task is all ten digits with a few
training images each, drawn from the other images, so no validation image was seen in
pretraining. Three heads are trained the same way (--mode last-layer: the backbones
frozen, the same optimizer and epochs): on the odd backbone alone, on the even one
alone, and on their fusion (fuse_models.py). Every step runs the user-facing command.

    python -m tools.fusiondemo --out demo-fusion
"""
import os
import sys
import time

from common.cli import HelpFormatter, OneLineArgumentParser, positive_int, run_entry
from tools import demo

HALVES = {"odd": range(1, 10, 2), "even": range(0, 10, 2)}
PRETRAIN_IMAGES, TASK_IMAGES = slice(0, None, 2), slice(1, None, 2)  # disjoint halves of each digit's scans
PRETRAIN_PER_CLASS = 70  # of a digit's ~90 pretraining scans; the rest validates the pretraining
ROWS = {"odd": "backbone of odd digits alone", "even": "backbone of even digits alone",
        "fusion": "fusion of two backbones"}


def get_parser():
    parser = OneLineArgumentParser(prog="python -m tools.fusiondemo", formatter_class=HelpFormatter,
                                   description="Two half-class backbones fused, against each alone, on digits.")
    parser.add_argument("--out", default="demo-fusion", help="work folder (replaced)")
    parser.add_argument("--train-per-class", type=positive_int, default=10, help="task training images per digit")
    parser.add_argument("--pretrain-epochs", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=12, help="epochs of each head")
    parser.add_argument("--cpus", type=positive_int, default=1, help="CPU contexts per run")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def fusion_figures(out, *, train_per_class=10, pretrain_epochs=8, epochs=12, cpus=1, seed=0):
    """Pretrain the two backbones, fuse them, train the three heads, all under `out` (which must exist).

    Returns {"odd", "even", "fusion"} -> (figures, seconds) as demo.train gives them: figures
    {"prefix", "acc", "top2", "mean_class_acc"} on the task's validation set (all ten digits),
    seconds of that head's training run; plus "pretrained" -> {half: its own val_acc}.
    """
    sgd = [arg for key, value in demo.SGD.items() for arg in (f"--{key}", str(value))]
    backbones, pretrained = {}, {}
    for half, digits in HALVES.items():
        name = f"digits-{half}"
        data = demo.prepare(out, name, digits, PRETRAIN_PER_CLASS, seed, images=PRETRAIN_IMAGES)
        figures, _ = demo.train(out, data, name, "scratch", pretrain_epochs, cpus, seed, *sgd)
        backbones[half], pretrained[half] = figures["prefix"], figures["acc"]
    task = demo.prepare(out, "digits09", range(10), train_per_class, seed, images=TASK_IMAGES)
    fused = os.path.join(out, "model", "digits-odd-even-fused")
    demo.run([sys.executable, "fuse_models.py", *[arg for half in HALVES for arg in (
        "--model-prefix", backbones[half], "--epoch", str(pretrain_epochs))], "--num-classes", "10",
        "--classes", os.path.join(task, "digits09-classes.txt"), "--out", fused],
        os.path.join(out, "fuse.log"))
    results = {}
    for key, (prefix, epoch) in {**{h: (backbones[h], pretrain_epochs) for h in HALVES}, "fusion": (fused, 0)}.items():
        results[key] = demo.train(out, task, "digits09", "last-layer", epochs, cpus, seed, *sgd,
                                  "--pretrained-model", prefix, "--pretrained-epoch", str(epoch), tag=key)
    return dict(results, pretrained=pretrained)


def main(argv=None):
    args = get_parser().parse_args(argv)
    out = os.path.abspath(args.out)
    demo.fresh_folder(out)
    tic = time.time()
    results = fusion_figures(out, train_per_class=args.train_per_class, pretrain_epochs=args.pretrain_epochs,
                             epochs=args.epochs, cpus=args.cpus, seed=args.seed)
    print(f"Backbones ({demo.NETWORK}, {args.pretrain_epochs} epochs from scratch): val_acc "
          + ", ".join(f"{results['pretrained'][h]:.4f} on the {h} digits" for h in HALVES))
    print(f"Digits 0-9, {args.train_per_class} training images per class, last layer only, {args.epochs} epochs, "
          f"SGD lr {demo.SGD['lr']} momentum {demo.SGD['mom']}, {args.cpus} CPU context(s):")
    print("| model | val top-1 | val top-2 | mean per-class | seconds |\n|---|---|---|---|---|")
    for key, row in ROWS.items():
        figures, seconds = results[key]
        print(f"| {row} | {figures['acc']:.4f} | {figures['top2']:.4f} | {figures['mean_class_acc']:.4f} "
              f"| {seconds:.0f} |")
    print(f"(chance: 0.10)\nfusion demo finished in {time.time() - tic:.0f} s; everything is under {out}")


if __name__ == "__main__":
    sys.exit(run_entry(main, "python -m tools.fusiondemo"))
