#!/usr/bin/env python3
"""make bench: every benchmark in turn, their top-level figures in bench/results.json and a
Markdown table in bench/results.md.

Each benchmark runs as its own command (python -m bench.NAME, its defaults), writing
bench/results/NAME.json; then the figures are read back from those files, with
their targets and conditions (a step whose file is absent keeps its figures from the
last bench/results.json). --full adds ResNet-50 at 3x128x128 to bench_train's
figures (pipeline_vs_compute_resnet50; about 7 more minutes on 2 cores) and
bench_recipe's time to accuracy on photographs (about 30 minutes).

    python -m bench                         # all (~12 min on 2 cores)
    python -m bench --only bench_cached     # one, then the table again from every file
    python -m bench --collect               # no runs: the table from the files as they are
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench")

import argparse  # noqa: E402
import os
import signal
import subprocess
import sys

from common.cli import HelpFormatter, OneLineArgumentParser, UserError, positive_int, run_entry, setup_logging
from common.fsutil import read_json, write_json_atomic, write_text_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
OUT_JSON = os.path.join(REPO, "bench", "results.json")
# name: (module, its options); run in this order.
STEPS = {
    "bench_train": ("bench.bench_train", []),
    "bench_pipeline": ("bench.bench_pipeline", []),
    "bench_cached": ("bench.bench_cached", []),
    "bench_prepare": ("bench.bench_prepare", []),
    "bench_records": ("bench.bench_records", []),
    "bench_scaling": ("bench.bench_scaling", []),
}
FULL_STEPS = {
    "bench_train_resnet50": ("bench.bench_train", ["--network", "resnet-50", "--image-shape", "3,128,128",
                                                   "--train-per-class", "16", "--val-per-class", "4",
                                                   "--epochs", "2"]),
    # The photographs come with requirements-bench.txt (make bench-full installs it).
    "bench_recipe": ("bench.bench_recipe", []),
}
# figure: (file, path to its {median, min, max} or number, target as (">=" | "<=", value) or None, what it is)
FIGURES = {
    "pipeline_vs_compute": ("bench_train", ("pipeline_vs_compute",), (">=", 0.97),
                            "training images/s, ours / the same network fed from memory"),
    "pipeline_vs_compute_resnet50": ("bench_train_resnet50", ("pipeline_vs_compute",), (">=", 0.97),
                                     "the same, ResNet-50 at 3x128x128 (--full)"),
    "vs_baseline": ("bench_train", ("vs_baseline",), (">=", 1.5),
                    "training images/s, ours / MXNet's fine-tune.py way"),
    "vs_baseline_wall": ("bench_train", ("vs_baseline_wall",), (">=", 1.3),
                         "whole command, baseline seconds / ours"),
    "val_acc_ours": ("bench_train", ("val_acc", "ours"), None, "validation accuracy, ours"),
    "val_acc_baseline": ("bench_train", ("val_acc", "baseline"), None, "validation accuracy, baseline"),
    "launch_to_first_batch_seconds": ("bench_train", ("launch_to_first_batch_seconds",), None,
                                      "train_caltech.py: seconds from launch to its first trained batch"),
    "iterator_vs_memory": ("bench_pipeline", ("iterator_vs_memory",), None,
                           "one process: images/s fed by ImageRecordIter / fed from memory"),
    "load_vs_memory": ("bench_pipeline", ("load_vs_memory",), None,
                       "one process: images/s from memory beside a load of the iterator's CPU / alone"),
    "iterator_cpu_share": ("bench_pipeline", ("iterator_cpu_share",), None,
                           "the iterator's CPU seconds an epoch, share of the machine's"),
    "cached_head_time_ratio": ("bench_cached", ("cached_head_time_ratio",), ("<=", 0.2),
                               "10 last-layer epochs, --cache-features seconds / without"),
    "packing_vs_im2rec": ("bench_prepare", ("packing_vs_im2rec",), (">=", 0.9),
                          "prepare_data.sh (every image checked) images/s / MXNet's im2rec"),
    "prepare_rss_ratio_10x": ("bench_prepare", ("prepare_rss_ratio_10x",), ("<=", 1.5),
                              "prepare_data.sh peak memory, 10k images / 1k"),
    "preflight_seconds_15k": ("bench_records", ("results", "headers_seconds"), ("<=", 10),
                              "RecordIO structure and label check of 15,360 records, seconds"),
    "time_to_accuracy": ("bench_recipe", ("time_to_accuracy",), ("<=", 0.5),
                         "--recipe modern's epochs to classic's final val_acc / classic's epochs (--full)"),
    "val_acc_classic": ("bench_recipe", ("final_val_acc", "classic"), None,
                        "photograph task, classic's final val_acc (--full)"),
    "val_acc_modern": ("bench_recipe", ("final_val_acc", "modern"), None,
                       "photograph task, modern's final val_acc, same epochs (--full)"),
    "val_acc_modern_half": ("bench_recipe", ("final_val_acc", "modern-half"), None,
                            "photograph task, modern's final val_acc in half the epochs (--full)"),
    "scaling_device_2_vs_1": ("bench_scaling", ("scaling", "ratios", "device_2_vs_1"), None,
                              "images/s, --cpus 2 --kv-store device / --cpus 1"),
    "scaling_local_2_vs_1": ("bench_scaling", ("scaling", "ratios", "local_2_vs_1"), None,
                             "images/s, --cpus 2 --kv-store local / --cpus 1"),
    "scaling_dist_2_vs_1": ("bench_scaling", ("scaling", "ratios", "dist_2_vs_1"), None,
                            "job images/s, launch.py -n 2 / -n 1 (dist_sync, loopback)"),
}


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="also the --full steps (ResNet-50)")
    parser.add_argument("--only", metavar="NAMES", type=_names,
                        help=f"comma-separated steps to run, of {', '.join({**STEPS, **FULL_STEPS})}")
    parser.add_argument("--collect", action="store_true", help="run nothing: the table from the files")
    parser.add_argument("--timeout", metavar="S", type=positive_int, default=3600, help="seconds per step")
    parser.add_argument("--results", metavar="DIR", default=RESULTS, help="where each step writes NAME.json")
    parser.add_argument("--out", metavar="JSON", default=OUT_JSON,
                        help="the top-level figures; the Markdown table goes beside it (.md)")
    return parser


def _names(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in {**STEPS, **FULL_STEPS}]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown step {(unknown or [text])[0]!r}; valid: "
                                         f"{', '.join({**STEPS, **FULL_STEPS})}")
    return names


def run_step(name, module, options, timeout, results):
    """python -m MODULE OPTIONS --out RESULTS/NAME.json, its output shown as it comes."""
    cmd = [sys.executable, "-m", module, *options, "--out", os.path.join(results, f"{name}.json")]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise UserError(f"{name} took longer than --timeout {timeout} s; stopped") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # Ctrl-C: none of its processes outlives this one
        proc.wait()
        raise
    if code != 0:
        raise UserError(f"{name} failed (exit {code}); its output is above")


def collect(results, previous=None):
    """{figure: {value, min, max, target, met, about, source}} from RESULTS/*.json, and
    {file: conditions}. A figure whose file is missing keeps its entry in PREVIOUS (the
    last --out, with its file's conditions), since RESULTS is not committed and a fresh
    checkout that reruns one step must not drop the others; a figure in neither is left out."""
    figures, conditions = {}, {}
    previous = previous or {}
    for figure, (source, path, target, about) in FIGURES.items():
        data = read_json(os.path.join(results, f"{source}.json"))
        if data is None:
            _carry_over(figure, source, previous, figures, conditions)
            continue
        conditions[source] = data.get("conditions", {})
        value = data
        try:
            for key in path:
                value = value[key]
        except (KeyError, TypeError):  # a file from before the figure existed
            continue
        spread = value if isinstance(value, dict) else {"median": value}
        met = None if target is None else (spread["median"] >= target[1] if target[0] == ">=" else
                                           spread["median"] <= target[1])
        figures[figure] = {"value": spread["median"], "min": spread.get("min"), "max": spread.get("max"),
                           "target": None if target is None else f"{target[0]} {target[1]}", "met": met,
                           "about": about, "source": f"{source}.json"}
    return figures, conditions


def _carry_over(figure, source, previous, figures, conditions):
    """FIGURE from the previous --out, if it was measured there (its source file unchanged)."""
    old = previous.get("figures", {}).get(figure)
    if old is None or old.get("source") != f"{source}.json":
        return
    figures[figure] = old
    if source in previous.get("conditions_by_file", {}):
        conditions[source] = previous["conditions_by_file"][source]


def headline_conditions(conditions):
    """The conditions the issue's table names, from bench_train's run (the main figures)."""
    train = conditions.get("bench_train", {})
    return {"cpu": train.get("platform"), "cores": train.get("cores"), "threads": train.get("threads"),
            "mxnet": train.get("mxnet"), "network": train.get("network"), "image_shape": train.get("image_shape"),
            "batch_size": train.get("batch_size"), "date": train.get("date")}


def markdown(figures, head, conditions=None):
    """The table of `figures` under a line of the conditions `head`; the steps measured on
    another date than bench_train's are named with theirs (conditions: {file: conditions})."""
    others = {name: c.get("date") for name, c in (conditions or {}).items()
              if name != "bench_train" and c.get("date") not in (None, head["date"])}
    dated = "".join(f" {name} measured {date}." for name, date in others.items())
    lines = [f"Measured {head['date']}: {head['cores']} cores, {head['cpu']}, mxnet {head['mxnet']} (CPU build); "
             f"training figures: {head['network']} at {'x'.join(map(str, head['image_shape'] or []))}, "
             f"batch {head['batch_size']}, threads {head['threads']}. Ratios: median (min-max) of "
             f"interleaved rounds.{dated}", "",
             "| figure | median (min-max) | target | met | what |", "|---|---|---|---|---|"]
    for name, f in figures.items():
        spread = f"{f['value']:.3g}" + (f" ({f['min']:.3g}-{f['max']:.3g})" if f["min"] is not None else "")
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        lines.append(f"| `{name}` | {spread} | {f['target'] or ''} | {met} | {f['about']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    steps = {**STEPS, **(FULL_STEPS if args.full else {})}
    if args.only:
        steps = {name: {**STEPS, **FULL_STEPS}[name] for name in args.only}
    os.makedirs(args.results, exist_ok=True)
    for name, (module, options) in ({} if args.collect else steps).items():
        run_step(name, module, options, args.timeout, args.results)
    figures, conditions = collect(args.results, read_json(args.out))
    if not figures:
        raise UserError(f"no results in {args.results}: run python -m bench without --collect first")
    head = headline_conditions(conditions)
    write_json_atomic(args.out, {"conditions": head, **{name: f["value"] for name, f in figures.items()},
                                 "figures": figures, "conditions_by_file": conditions})
    table, out_md = markdown(figures, head, conditions), os.path.splitext(args.out)[0] + ".md"
    write_text_atomic(out_md, table)
    print(table)
    print(f"wrote {args.out} and {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "python -m bench"))
