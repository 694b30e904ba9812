#!/usr/bin/env python3
"""Predict the top-k classes of image files with any checkpoint (predict only, no training).

    python predict.py --model-prefix model/caltech256-resnet-50-full --epoch 8 photo.jpg
    python predict.py --model-prefix model/imagenet1k-resnet-50 --epoch 0 --classes synset.txt --json DIR

Images get the validation pipeline (shorter side to --resize, center crop to
--image-shape); defaults come from the training run's PREFIX-args.json and data.
Exit status 1 if any file could not be read (the others are still predicted).
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("predict.py")  # before the imports below, which need the requirements
    from common import threads
    threads.configure()  # before MXNet is imported: every core at work (common/threads.py)

import json
import logging
import sys

from common import cli, devices, evaluate
from common.infer import model as infer_model, predict as infer_predict, settings, tta

log = logging.getLogger("predict")
TOP_K = 3


def get_parser(add_help=True):
    parser = settings.base_parser("predict.py", __doc__.split("\n")[1], TOP_K,
                                   "classes shown per image", add_help)
    group = parser.add_argument_group("prediction")
    group.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files and/or folders (every image file in them, recursively)")
    settings.add_resize_arg(group)
    tta.add_tta_args(group)
    group.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    group.add_argument("--verbose", action="store_true", help="log the settings used on stderr")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    if not args.verbose:
        # stderr carries only problems, one line each: MXNet's bind notice goes too
        logging.getLogger().setLevel(logging.WARNING)
    args.tta_scales = tta.resolve_scales(args.tta, args.tta_scales)
    files, problems = infer_predict.find_images(args.paths)
    for path, reason in problems:
        print(f"predict.py: {path}: {reason}", file=sys.stderr)
    if not files:
        return 1
    recorded = settings.recorded_args(args.model_prefix)
    shape = settings.resolve_image_shape(args.image_shape, recorded)
    resize = settings.resolve_resize(args.resize, recorded, shape.value)
    contexts = devices.contexts(args.gpus, args.cpus)
    batch = infer_model.inference_batch(args.batch_size, len(files), len(contexts))
    model = infer_model.load_model(args.model_prefix, args.epoch, shape.value, contexts, batch)
    top_k = evaluate.resolve_top_k(args.top_k, TOP_K, model.num_classes)
    classes = settings.resolve_classes(args.classes, args.model_prefix, model.num_classes)
    if classes.value is None:
        log.warning("class names: %s", classes.source)
    log.info("input %s (%s), resize %d (%s)", shape.value, shape.source, resize.value, resize.source)
    results = infer_predict.predict_files(model, files, resize.value, top_k, tta_scales=args.tta_scales)
    failed = _print_results(results, classes, args.json, _header(args, model, classes, shape, resize))
    return 1 if failed or problems else 0


def _header(args, model, classes, shape, resize):
    views = (f"; TTA: {tta.views_per_image(args.tta_scales)} views (scales "
             f"{','.join(map(str, args.tta_scales))})" if args.tta else "")
    return (f"# {args.model_prefix} epoch {args.epoch}: {model.num_classes} classes, names from "
            f"{classes.source}; input {','.join(map(str, shape.value))} ({shape.source}); "
            f"resize {resize.value} ({resize.source}){views}")


def _print_results(results, classes, as_json, header):
    """Print each prediction (stdout) and each unreadable file (stderr); returns failures."""
    records, failed = [], 0
    if not as_json:
        print(header)
    for path, ranked, reason in results:
        if reason:
            failed += 1
            print(f"predict.py: {path}: {reason}", file=sys.stderr, flush=True)
        elif as_json:
            records.append(infer_predict.prediction_record(path, ranked, classes.value))
        else:
            print(infer_predict.format_prediction(path, ranked, classes.value), flush=True)
    if as_json:
        print(json.dumps(records, indent=2))
    return failed


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "predict.py"))
