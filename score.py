#!/usr/bin/env python3
"""Score a checkpoint (or an ensemble) on a RecordIO set: accuracy, per-class figures, confusion matrix.

    python score.py --model-prefix model/caltech256-resnet-50-full --epoch 8 \\
        --data-val data/caltech256-val.rec --cpus 2
    python score.py --model-prefix model/a --epoch 8 --model-prefix model/b --epoch 6 \\
        --data-val data/caltech256-val.rec

Every image of the set is counted exactly once, with the validation pipeline of
training (center crop to --image-shape). Writes score.json, per_class.csv,
confusion.csv and confusion.png to --out-dir (default PREFIX-score-EPOCH-SET/).
Several --model-prefix/--epoch pairs score each checkpoint and their ensemble
(the softmax averaged); the reports and the last line are then the ensemble's.
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("score.py")  # before the imports below, which need the requirements
    from common import threads
    threads.configure()  # before MXNet is imported: every core at work (common/threads.py)

import datetime
import logging
import os
import sys

from common import cli, devices, evaluate, fsutil, records, report, threads
from common.infer import ensemble, score as infer_score, settings, tta

log = logging.getLogger("score")
TOP_K = 5


def get_parser(add_help=True):
    parser = settings.base_parser("score.py", __doc__.split("\n")[1], TOP_K,
                                   "also report top-k accuracy", add_help, several=True)
    group = parser.add_argument_group("scoring")
    group.add_argument("--data-val", metavar="REC", required=True,
                       help="the .rec to score (its .idx beside it), e.g. data/caltech256-val.rec")
    group.add_argument("--data-nthreads", metavar="N", type=cli.positive_int,
                       help="decoding threads (default: the most MXNet 1.9.1 uses, half the cores)")
    tta.add_tta_args(group)
    group.add_argument("--out-dir", metavar="DIR",
                       help="where the reports go (default: PREFIX-score-EPOCH, beside the checkpoint)")
    return parser


def main(argv=None):
    """Score, write the reports, print the summary; returns the score.json dict."""
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    args.tta_scales = tta.resolve_scales(args.tta, args.tta_scales)
    args.data_nthreads = threads.decode_threads(args.data_nthreads)  # score.json records what decoded
    pairs = ensemble.pair_checkpoints(args.model_prefix, args.epoch)
    records.require_record_files(args.data_val, "--data-val")
    contexts = devices.contexts(args.gpus, args.cpus)
    devices.per_device_batch(args.batch_size, len(contexts))
    members = ensemble.plan(pairs, image_shape=args.image_shape, classes_file=args.classes)
    top_k = evaluate.resolve_top_k(args.top_k, TOP_K, members[0].num_classes)
    classes = ensemble.class_names(members)
    infer_score.check_class_map(classes, args.data_val)
    record_set = records.check_record_set(args.data_val, members[0].num_classes, "--data-val")
    for shape in sorted({m.shape.value for m in members}):
        records.warn_if_upscaled(args.data_val, shape)
    identity = infer_score.report_identity(members, args.data_val)
    out_dir = args.out_dir or infer_score.default_out_dir(members, args.data_val)
    infer_score.check_out_dir(out_dir, identity)
    try:
        with fsutil.output_folder(out_dir):
            figures = _score_and_write(args, members, record_set, classes, contexts, top_k, out_dir, identity)
    except fsutil.CannotCreate as exc:
        raise cli.WriteFailed(f"--out-dir {out_dir}: cannot create it ({exc.strerror})") from None
    _print_summary(figures, top_k, out_dir)
    return figures


def _score_and_write(args, members, record_set, classes, contexts, top_k, out_dir, identity):
    """Evaluate every image of the set and write the four report files; returns score.json's dict."""
    what = (f"{args.model_prefix[0]} epoch {args.epoch[0]}" if len(members) == 1 else
            f"the ensemble of {len(members)} checkpoints (softmax averaged)")
    log.info("scoring %s (%d classes, names: %s) on the %d images of %s; batch %d on %s", what,
             members[0].num_classes, classes.source, len(record_set), args.data_val, args.batch_size,
             ", ".join(map(str, contexts)))
    result = ensemble.score_members(members, record_set, contexts=contexts, batch_size=args.batch_size,
                                    threads=args.data_nthreads, top_k=top_k, tta_scales=args.tta_scales)
    # One checkpoint: its own figures (exactly as evaluate_set computes them), not a mean of one.
    one = result.members[0] if len(members) == 1 else None
    score, tta_figures = (one.score, one.tta) if one else (result.score, result.tta)
    figures = dict(identity, **_report(args, members, classes, contexts, top_k, score))
    if not one:
        figures["members"] = [dict(m.member.identity(), image_shape_from=m.member.shape.source,
                                   **m.score.figures, **({"tta": m.tta} if m.tta else {}))
                              for m in result.members]
    if tta_figures:
        figures["tta"] = tta_figures
    rows = report.per_class_rows(score.counts, score.hits, classes.value)
    title = (f"{os.path.basename(args.model_prefix[0])} epoch {args.epoch[0]}" if one else
             f"ensemble of {len(members)}") + f" on {os.path.basename(args.data_val)}: top-1 " \
        f"{figures['acc']:.2%} ({figures['images']} images)"
    infer_score.write_score_files(out_dir, figures, score.matrix, rows, classes.value, title)
    return figures


def _report(args, members, classes, contexts, top_k, score):
    """score.json: every figure and the conditions it was measured under (an ensemble's
    seconds: all of it, every member's loading and passes; its images/s: member images)."""
    figures = score.figures
    shape = members[0].shape
    return {
        "num_classes": members[0].num_classes, "top_k": top_k, **figures,
        "classes": classes.source if classes.value else None,
        "conditions": {
            **({"image_shape": list(shape.value), "image_shape_from": shape.source} if len(members) == 1 else {}),
            "batch_size": args.batch_size, "contexts": [str(c) for c in contexts],
            "data_nthreads": args.data_nthreads, "seconds": round(score.seconds, 3),
            "images_per_sec": round(figures["images"] * len(members) / max(score.seconds, 1e-9), 2),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "versions": cli.software_versions(), "threads": threads.describe(), "argv": sys.argv,
        },
    }


def _print_summary(report, top_k, out_dir):
    members = report.get("members")
    print(f"images: {report['images']} ({report['num_classes']} classes)"
          + (f", ensemble of {len(members)} checkpoints (softmax averaged)" if members else ""))
    if members:
        _print_table(members, report, top_k)
    else:
        print(f"top-1 accuracy: {report['acc']:.4f}")
        print(f"top-{top_k} accuracy: {report[f'top{top_k}']:.4f}")
        print(f"mean per-class accuracy: {report['mean_class_acc']:.4f}")
        print(f"loss (cross-entropy): {report['loss']:.4f}")
    print(f"reports: {out_dir}/ (score.json, per_class.csv, confusion.csv, confusion.png)")
    line = (f"score: acc={report['acc']:.4f} top{top_k}={report[f'top{top_k}']:.4f} "
            f"mean_class_acc={report['mean_class_acc']:.4f}")
    if "tta" in report:
        t = report["tta"]
        if not members:
            print(f"with TTA ({t['views']} views): top-1 {t['acc']:.4f}, top-{top_k} {t[f'top{top_k}']:.4f}, "
                  f"mean per-class {t['mean_class_acc']:.4f}")
        line += f" tta_acc={t['acc']:.4f} tta_top{top_k}={t[f'top{top_k}']:.4f} " \
                f"tta_mean_class_acc={t['mean_class_acc']:.4f}"
    if members:
        line += f" models={len(members)}"
    print(line, flush=True)


def _print_table(members, report, top_k):
    """Each member's figures and the ensemble's, side by side (Markdown), TTA columns when measured."""
    columns = ["acc", f"top{top_k}", "mean_class_acc", "loss"]
    heads = ["top-1", f"top-{top_k}", "mean per-class", "loss"]
    views = report.get("tta")
    if views:
        heads += [f"TTA top-1 ({views['views']} views)", f"TTA top-{top_k}", "TTA mean per-class"]
    print("| model | epoch | input | " + " | ".join(heads) + " |")
    print("|---" * (3 + len(heads)) + "|")

    def row(name, epoch, shape, figures, tta_figures):
        values = [figures[c] for c in columns] + ([tta_figures[c] for c in columns[:3]] if views else [])
        print(f"| {name} | {epoch} | {shape} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    for m in members:
        row(m["model_prefix"], m["epoch"], ",".join(map(str, m["image_shape"])), m, m.get("tta"))
    row(f"ensemble (mean of {len(members)})", "", "", report, views)


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "score.py"))
