#!/usr/bin/env python3
"""Extract the output of any layer of a checkpoint for a .rec or image files, as .npy.

    python extract_features.py --model-prefix model/caltech256-resnet-50-full --epoch 8 \\
        data/caltech256-val.rec --out features/caltech256-val
    python extract_features.py --model-prefix model/imagenet1k-resnet-50 --epoch 0 \\
        --layer stage4_unit3_relu1 photos/ --out features/photos

Writes OUT-features.npy (float32, one row per image), OUT-labels.npy (a .rec's
labels), OUT-names.txt (record ids or files, one per row) and OUT-features.json
(checkpoint, layer, shapes, preprocessing, counts). The default layer is the
classifier's input (flatten0). A .rec gets the validation pipeline, every record
once; image files the same preprocessing as predict.py.
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("extract_features.py")  # before the imports below, which need the requirements
    from common import threads
    threads.configure()  # before MXNet is imported: every core at work (common/threads.py)

import os
import sys
import time

from common import cli, devices, fsutil, threads
from common.infer import features, settings


def get_parser(add_help=True):
    parser = cli.OneLineArgumentParser(prog="extract_features.py", description=__doc__.split("\n")[1],
                                       add_help=add_help, formatter_class=cli.HelpFormatter)
    settings.add_checkpoint_args(parser, classes=False)
    group = parser.add_argument_group("features")
    group.add_argument("paths", nargs="+", metavar="PATH",
                       help="one .rec (its .idx beside it), or image files and/or folders (recursively)")
    group.add_argument("--out", metavar="OUT", required=True,
                       help="output prefix: OUT-features.npy, OUT-labels.npy, OUT-names.txt, "
                            "OUT-features.json (replaced if there)")
    group.add_argument("--layer", metavar="NAME",
                       help="layer whose output is extracted (default: the input of the classifier, "
                            "e.g. flatten0; draw_net.py lists the layers)")
    group.add_argument("--keep-shape", action="store_true",
                       help="keep a layer's (C, H, W) per image instead of flattening it to C*H*W")
    settings.add_resize_arg(group)
    group.add_argument("--data-nthreads", metavar="N", type=cli.positive_int,
                       help="a .rec's decoding threads (default: the most MXNet 1.9.1 uses, half the cores)")
    return parser


def main(argv=None):
    """Extract and write; returns the exit status (1 when an image file could not be read)."""
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    tic = time.time()
    kind, source, problems = features.split_inputs(args.paths)
    _report(problems)
    recorded = settings.recorded_args(args.model_prefix)
    shape = settings.resolve_image_shape(args.image_shape, recorded)
    options = dict(prefix=args.model_prefix, epoch=args.epoch, layer=args.layer, shape=shape,
                  contexts=devices.contexts(args.gpus, args.cpus), batch_size=args.batch_size,
                  keep_shape=args.keep_shape)
    try:
        # OUT's folder first: a path that cannot be written fails before the extraction, and
        # a failed run removes the folders it made
        with fsutil.output_folder(os.path.dirname(args.out) or "."):
            extraction = _extract(args, kind, source, recorded, options)
            conditions = {"contexts": [str(c) for c in options["contexts"]],
                          "seconds": round(time.time() - tic, 3)}
            written = features.write_outputs(args.out, extraction.rows, extraction.labels, extraction.names,
                                             features.describe(extraction, conditions))
    except fsutil.CannotCreate as exc:
        raise cli.WriteFailed(f"--out {args.out}: cannot create its folder ({exc.strerror})") from None
    _report(extraction.failed)
    rows = extraction.rows
    print(f"features: {len(rows)} x {'x'.join(map(str, rows.shape[1:]))} float32, layer "
          f"{extraction.extractor.layer} of {args.model_prefix} epoch {args.epoch}: {', '.join(written)}",
          flush=True)
    return 1 if extraction.failed or problems else 0


def _extract(args, kind, source, recorded, options):
    if kind == "rec":
        if args.resize is not None:
            raise cli.UserError(f"--resize {args.resize} is for image files: the images of {source} "
                                f"were resized when it was packed")
        return features.from_records(source, threads=threads.decode_threads(args.data_nthreads), **options)
    resize = settings.resolve_resize(args.resize, recorded, options["shape"].value)
    return features.from_files(args.paths, source, resize=resize, **options)


def _report(problems):
    for path, reason in problems:
        print(f"extract_features.py: {path}: {reason}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "extract_features.py"))
