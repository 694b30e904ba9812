#!/usr/bin/env python3
"""Score a checkpoint on a RecordIO set: accuracy, per-class figures, confusion matrix.

    python score.py --model-prefix model/caltech256-resnet-50-full --epoch 8 \\
        --data-val data/caltech256-val.rec --cpus 2

Every image of the set is counted exactly once, with the validation pipeline of
training (center crop to --image-shape). Writes score.json, per_class.csv,
confusion.csv and confusion.png to --out-dir (default PREFIX-score-EPOCH-SET/).
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("score.py")  # before the imports below, which need the requirements

import datetime
import logging
import os
import sys

from common import cli, devices, evaluate, fsutil, records, report
from common.infer import model as infer_model, score as infer_score, settings, tta

log = logging.getLogger("score")
TOP_K = 5


def get_parser(add_help=True):
    parser = settings.base_parser("score.py", __doc__.split("\n")[1], TOP_K,
                                   "also report top-k accuracy", add_help)
    group = parser.add_argument_group("scoring")
    group.add_argument("--data-val", metavar="REC", required=True,
                       help="the .rec to score (its .idx beside it), e.g. data/caltech256-val.rec")
    group.add_argument("--data-nthreads", metavar="N", type=cli.positive_int, default=4, help="decoding threads")
    tta.add_tta_args(group)
    group.add_argument("--out-dir", metavar="DIR",
                       help="where the reports go (default: PREFIX-score-EPOCH, beside the checkpoint)")
    return parser


def main(argv=None):
    """Score, write the reports, print the summary; returns the score.json dict."""
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    args.tta_scales = tta.resolve_scales(args.tta, args.tta_scales)
    records.require_record_files(args.data_val, "--data-val")
    shape = settings.resolve_image_shape(args.image_shape, settings.recorded_args(args.model_prefix))
    contexts = devices.contexts(args.gpus, args.cpus)
    model = infer_model.load_model(args.model_prefix, args.epoch, shape.value, contexts, args.batch_size)
    top_k = evaluate.resolve_top_k(args.top_k, TOP_K, model.num_classes)
    classes = settings.resolve_classes(args.classes, args.model_prefix, model.num_classes)
    infer_score.check_class_map(classes, args.data_val)
    record_set = records.check_record_set(args.data_val, model.num_classes, "--data-val")
    records.warn_if_upscaled(args.data_val, shape.value)
    identity = infer_score.report_identity(args.model_prefix, args.epoch, args.data_val, shape.value)
    out_dir = args.out_dir or infer_score.default_out_dir(args.model_prefix, args.epoch, args.data_val, shape)
    infer_score.check_out_dir(out_dir, identity)
    try:
        with fsutil.output_folder(out_dir):
            figures = _score_and_write(args, model, record_set, classes, shape, contexts, top_k, out_dir)
    except fsutil.CannotCreate as exc:
        raise cli.WriteFailed(f"--out-dir {out_dir}: cannot create it ({exc.strerror})") from None
    _print_summary(figures, top_k, out_dir)
    return figures


def _score_and_write(args, model, record_set, classes, shape, contexts, top_k, out_dir):
    """Evaluate every image of the set and write the four report files; returns score.json's dict."""
    log.info("scoring %s epoch %d (%d classes, names: %s) on the %d images of %s; input %s (%s), "
             "batch %d on %s", args.model_prefix, args.epoch, model.num_classes, classes.source,
             len(record_set), args.data_val, shape.value, shape.source, args.batch_size,
             ", ".join(map(str, contexts)))
    score = evaluate.evaluate_set(model.module, record_set, image_shape=model.image_shape,
                                  batch_size=model.batch_size, threads=args.data_nthreads,
                                  num_classes=model.num_classes, top_k=top_k)
    identity = infer_score.report_identity(args.model_prefix, args.epoch, args.data_val, shape.value)
    figures = dict(identity, **_report(args, model, classes, shape, contexts, top_k, score))
    if args.tta_scales:
        figures["tta"] = _tta_figures(model, record_set, args.tta_scales, top_k)
    rows = report.per_class_rows(score.counts, score.hits, classes.value)
    title = (f"{os.path.basename(args.model_prefix)} epoch {args.epoch} on "
             f"{os.path.basename(args.data_val)}: top-1 {figures['acc']:.2%} ({figures['images']} images)")
    infer_score.write_score_files(out_dir, figures, score.matrix, rows, classes.value, title)
    return figures


def _tta_figures(model, record_set, scales, top_k):
    """score.json's "tta": the figures of the softmax averaged over the test-time views."""
    log.info("test-time augmentation: %d views an image (scales %s)", tta.views_per_image(scales),
             ",".join(map(str, scales)))
    probs = tta.record_probabilities(model, record_set, scales=scales)
    figures = evaluate.summarize(probs, record_set.labels, model.num_classes, top_k)
    return dict(figures, views=tta.views_per_image(scales), scales=list(scales))


def _report(args, model, classes, shape, contexts, top_k, score):
    """score.json: every figure and the conditions it was measured under."""
    figures = score.figures
    return {
        "num_classes": model.num_classes, "top_k": top_k, **figures,
        "classes": classes.source if classes.value else None,
        "conditions": {
            "image_shape": list(shape.value), "image_shape_from": shape.source,
            "batch_size": args.batch_size, "contexts": [str(c) for c in contexts],
            "data_nthreads": args.data_nthreads, "seconds": round(score.seconds, 3),
            "images_per_sec": round(figures["images"] / max(score.seconds, 1e-9), 2),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "versions": cli.software_versions(), "argv": sys.argv,
        },
    }


def _print_summary(report, top_k, out_dir):
    print(f"images: {report['images']} ({report['num_classes']} classes)")
    print(f"top-1 accuracy: {report['acc']:.4f}")
    print(f"top-{top_k} accuracy: {report[f'top{top_k}']:.4f}")
    print(f"mean per-class accuracy: {report['mean_class_acc']:.4f}")
    print(f"loss (cross-entropy): {report['loss']:.4f}")
    print(f"reports: {out_dir}/ (score.json, per_class.csv, confusion.csv, confusion.png)")
    line = (f"score: acc={report['acc']:.4f} top{top_k}={report[f'top{top_k}']:.4f} "
            f"mean_class_acc={report['mean_class_acc']:.4f}")
    if "tta" in report:
        t = report["tta"]
        print(f"with TTA ({t['views']} views): top-1 {t['acc']:.4f}, top-{top_k} {t[f'top{top_k}']:.4f}, "
              f"mean per-class {t['mean_class_acc']:.4f}")
        line += f" tta_acc={t['acc']:.4f} tta_top{top_k}={t[f'top{top_k}']:.4f} " \
                f"tta_mean_class_acc={t['mean_class_acc']:.4f}"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "score.py"))
