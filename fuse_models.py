#!/usr/bin/env python3
"""Fuse two or more trained checkpoints into one network: their features concatenated, a new head.

    python fuse_models.py --model-prefix model/a --epoch 8 --model-prefix model/b --epoch 8 \\
        --num-classes 10 --out model/fused
    python train_caltech.py --pretrained-model model/fused --model-prefix model/fused-trained ...

Each backbone's layers, parameters and BatchNorm statistics get the prefix
net0_, net1_, ...; their flatten0 outputs are concatenated (a Concat named
flatten0) and a FullyConnected fc1 + SoftmaxOutput go on top. Writes OUT-symbol.json,
OUT-0000.params (each backbone's arrays checked bit-identical under its prefix),
OUT-args.json (the input shape) and OUT-fusion.json (what was fused). Trained
with train_caltech.py, the backbones stay frozen unless --mode full says otherwise.
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("fuse_models.py")  # before the imports below, which need the requirements
    from common import threads
    threads.configure()  # before MXNet is imported: every core at work (common/threads.py)

import sys

from common import cli
from common.infer import ensemble
from common.train import fusion
from common.transforms import image_shape as image_shape_type


def get_parser(add_help=True):
    parser = cli.OneLineArgumentParser(prog="fuse_models.py", description=__doc__.split("\n")[1],
                                       add_help=add_help, formatter_class=cli.HelpFormatter)
    group = parser.add_argument_group("fusion")
    group.add_argument("--model-prefix", metavar="PREFIX", action="append", required=True,
                       help="a source checkpoint (PREFIX-symbol.json, PREFIX-EPOCH.params); repeat it, "
                            "each --model-prefix followed by its --epoch: backbone i gets the prefix net<i>_")
    group.add_argument("--epoch", metavar="N", type=cli.nonnegative_int, action="append", required=True,
                       help="the epoch of the --model-prefix before it (0 for the model zoo's files)")
    group.add_argument("--num-classes", metavar="C", type=cli.positive_int, required=True,
                       help="classes of the new head")
    group.add_argument("--out", metavar="PREFIX", required=True,
                       help="the fused checkpoint's prefix: PREFIX-symbol.json, PREFIX-0000.params, ...")
    group.add_argument("--layer-before-fullc", metavar="LAYER", default=fusion.FUSED_LAYER,
                       help="cut every source at this layer's output (an (N, D) layer)")
    group.add_argument("--image-shape", metavar="C,H,W", type=image_shape_type,
                       help="input of every backbone (default: the shape their training runs recorded "
                            "in PREFIX-args.json, which must agree, else 3,224,224)")
    group.add_argument("--classes", metavar="FILE",
                       help="class names, one per line, copied as PREFIX-classes.txt")
    return parser


def main(argv=None):
    """Fuse and write; returns OUT-fusion.json's dict."""
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    pairs = ensemble.pair_checkpoints(args.model_prefix, args.epoch)
    summary = fusion.fuse_checkpoints(pairs, num_classes=args.num_classes, out=args.out,
                                      layer=args.layer_before_fullc, image_shape=args.image_shape,
                                      classes=args.classes)
    parts = ", ".join(f"{b['tag']} {b['prefix']} epoch {b['epoch']} ({b['features']})" for b in summary["backbones"])
    print(f"fused: {parts} -> {fusion.FUSED_LAYER} ({summary['features']}) -> {fusion.HEAD} "
          f"({args.num_classes} classes), input {','.join(map(str, summary['image_shape']))}; "
          f"{summary['checked'].split(';')[0]}: {args.out}-symbol.json, {args.out}-0000.params", flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "fuse_models.py"))
