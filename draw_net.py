#!/usr/bin/env python3
"""Draw a network (symbols/ or a checkpoint) with Graphviz, and list its layers and parameters.

    python draw_net.py --network resnet-50 --format pdf
    python draw_net.py --model-prefix model/imagenet1k-resnet-50 --epoch 0 --cut --num-classes 256

Writes OUT.gv (the Graphviz source) always and OUT.png/.pdf/.svg (--format) with
the Graphviz that the pygraphviz wheel bundles, or a system `dot`; without either
it says how to render the .gv. --cut draws fine-tuning's head surgery
(common.train.surgery): the old head greyed out, the new one in red.
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("draw_net.py")  # before the imports below, which need the requirements

import sys

import symbols
from common import cli
from common.infer import graph
from common.transforms import image_shape as image_shape_type
from tools import drawnet


def get_parser():
    parser = cli.OneLineArgumentParser(prog="draw_net.py", description=__doc__.split("\n")[1],
                                       formatter_class=cli.HelpFormatter)
    net = parser.add_argument_group("network")
    which = net.add_mutually_exclusive_group(required=True)
    which.add_argument("--network", choices=list(symbols.NETWORKS), metavar="NAME",
                       help="a symbols/ network (" + ", ".join(symbols.NETWORKS) + ")")
    which.add_argument("--model-prefix", metavar="PREFIX", help="a checkpoint's PREFIX-symbol.json (ours or the zoo's)")
    net.add_argument("--epoch", metavar="N", type=cli.nonnegative_int,
                     help="--model-prefix: also load PREFIX-EPOCH.params; its arrays are checked against the "
                          "network (and with --cut, against the backbone, as training does)")
    net.add_argument("--image-shape", metavar="C,H,W", type=image_shape_type,
                     help="input C,H,W (default: the training run's, from PREFIX-args.json, else 3,224,224)")
    net.add_argument("--num-classes", metavar="N", type=cli.positive_int,
                     help="classes of the head: --network's (default 1000, the zoo's ImageNet head), or with "
                          "--cut the new head's (default: the dataset's, in --data-dir)")
    cut = parser.add_argument_group("head surgery")
    cut.add_argument("--cut", action="store_true",
                     help="draw the network fine-tuning makes: cut at --layer-before-fullc, the old head greyed "
                          "out, a new head of --num-classes marked red")
    cut.add_argument("--layer-before-fullc", metavar="LAYER", default="flatten0", help="where --cut cuts")
    cut.add_argument("--data-dir", metavar="DIR", default="data",
                     help="--cut without --num-classes: the folder prepare_data.sh wrote")
    cut.add_argument("--prefix", help="--cut without --num-classes: the dataset in --data-dir (default: its one)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="OUT", help="OUT.gv and OUT.FORMAT (default: PREFIX-graph beside the "
                                                  "checkpoint, or NETWORK-graph here; -cut added with --cut)")
    out.add_argument("--format", choices=graph.FORMATS, default="png", help="the picture's format")
    out.add_argument("--last", metavar="N", type=cli.positive_int,
                     help="draw only the last N layers (and the new head): the end of a large network")
    return parser


def main(argv=None):
    """Print the summary, write OUT.gv and the picture; returns the Drawing."""
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    if args.network and args.epoch is not None:
        raise cli.UserError(f"--epoch {args.epoch} goes with --model-prefix: --network {args.network} has no weights")
    if args.model_prefix and args.num_classes and not args.cut:
        raise cli.UserError(f"--num-classes {args.num_classes} sizes --network's head or --cut's new one; "
                            f"{args.model_prefix}'s head has its own")
    cut_classes = _cut_classes(args) if args.cut else None
    if args.network:
        source = drawnet.network_source(args.network, None if args.cut else args.num_classes, args.image_shape)
    else:
        source = drawnet.checkpoint_source(args.model_prefix, args.epoch, args.image_shape)
    drawing = drawnet.draw(source, cut_classes, args.layer_before_fullc)
    print("\n".join(graph.summary_lines(drawing.table, drawing.totals, drawing.check)))
    out = args.out or f"{args.model_prefix or args.network}-graph{'-cut' if args.cut else ''}"
    picture, renderer = drawnet.write_picture(drawing, out, args.format, args.last)
    if picture is None:
        print(f"draw_net.py: note: no Graphviz to draw {out}.{args.format} here (pip install pygraphviz, "
              f"whose wheel bundles it, or apt install graphviz); render the source with: "
              f"dot -T{args.format} {out}.gv -o {out}.{args.format}", file=sys.stderr)
    print(f"source: {out}.gv" + (f"; picture: {picture} ({renderer})" if picture else ""), flush=True)
    return drawing


def _cut_classes(args):
    if args.num_classes:
        return args.num_classes
    try:
        return drawnet.dataset_classes(args.data_dir, args.prefix)
    except cli.UserError as exc:
        raise type(exc)(f"--cut needs the new head's classes: pass --num-classes N, or {exc}") from None


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "draw_net.py"))
