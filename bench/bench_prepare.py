#!/usr/bin/env python3
"""Benchmark: the whole of prepare_data.sh against MXNet's im2rec.py, its thread counts, its memory.

On generated class folders of JPEGs (bench_pack's blurred coloured noise), every run
is a command from start to exit, in its own process group with a time limit:
  ours    bash prepare_data.sh --src FOLDER: scan, check every image, split, write the
          .lst files, pack both sets (a fresh --out each run, so nothing is cached)
  im2rec  python <site-packages>/mxnet/tools/im2rec.py on copies of ours' two .lst
          files, same root, --num-thread, --resize and --quality
Figures:
  packing_vs_im2rec      images/s ours / im2rec, per interleaved round (A B, B A, ...)
  num_thread             ours' images/s with each --num-thread count, one run each
  prepare_rss_ratio_10x  peak resident memory of ours on the large / the small image set
                         (both of --rss-images); memory is the sum of the RSS of every
                         process in the run's group, sampled from /proc

    python -m bench.bench_prepare                   # 2000 images, 3 rounds, 1k/10k memory (~6 min on 2 cores)
    python -m bench.bench_prepare --images 500 --rounds 1 --num-threads 2 --rss-images 200,2000
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_prepare")  # before the imports below, which need the requirements

# Nothing here imports MXNet at module level (bench_pack's rule, whose helpers this reuses).
import argparse  # noqa: E402
import json
import logging
import os
import shutil
import sys
import threading
import time

from bench.bench_pack import generate_sources, im2rec_script, size_range
from common.cli import (HelpFormatter, OneLineArgumentParser, UserError, int_in_range, nonnegative_int,
                        positive_int, run_entry, setup_logging)
from common.fsutil import write_json_atomic
from common.threads import usable_cores
from tools.benchkit import add_run_args, machine, run_group, spread, thread_list, work_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_prepare.json")
PREFIX = "bench"  # the data set's file prefix
_CLASSES = 10
_RSS_SAMPLE_SECONDS = 0.05  # /proc sampling period of the memory runs
log = logging.getLogger("bench_prepare")


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_prepare", formatter_class=HelpFormatter,
                                   description=__doc__.split("\n")[1])
    data = parser.add_argument_group("generated data")
    data.add_argument("--images", metavar="N", type=int_in_range(2 * _CLASSES, 10**6), default=2000,
                      help="source JPEGs of the speed runs")
    data.add_argument("--size", metavar="WxH", type=size_range, default="300-500x200-400",
                      help="their size range in px, each side uniform in its range")
    data.add_argument("--rss-images", metavar="SMALL,LARGE", type=_two_counts, default="1000,10000",
                      help="image counts of the two memory runs")
    data.add_argument("--rss-size", metavar="WxH", type=size_range, default="180-220x135-165",
                      help="size range of the memory runs' images in px")
    pack = parser.add_argument_group("packing (passed to both)")
    pack.add_argument("--threads", metavar="N", type=positive_int, default=usable_cores(),
                      help="--num-thread of the interleaved rounds and the memory runs")
    pack.add_argument("--resize", metavar="N", type=nonnegative_int, default=256, help="shorter side in px")
    pack.add_argument("--quality", metavar="Q", type=int_in_range(1, 100), default=95, help="JPEG quality")
    pack.add_argument("--train-per-class", metavar="N", type=positive_int, default=60,
                      help="prepare_data.sh's split (the rest is validation; both sets are packed)")
    run = parser.add_argument_group("runs and output")
    run.add_argument("--rounds", metavar="R", type=positive_int, default=3, help="interleaved rounds")
    run.add_argument("--num-threads", metavar="LIST", type=thread_list, default="1,2,4",
                     help="--num-thread counts of ours, one run each after the rounds")
    add_run_args(run, DEFAULT_OUT)
    return parser


def _two_counts(text):
    """argparse type: 'SMALL,LARGE' image counts, SMALL < LARGE, each >= 2 per class."""
    counts = thread_list(text)
    if len(counts) != 2 or not 2 * _CLASSES <= counts[0] < counts[1]:
        raise argparse.ArgumentTypeError(f"expected two image counts SMALL,LARGE with {2 * _CLASSES} <= SMALL < LARGE, "
                   f"e.g. 1000,10000, got {text!r}")
    return counts


class Bench:
    """The shared set-up of every run: sources, ours' lists, the packing options."""

    def __init__(self, args, work, script):
        self.args, self.work, self.script = args, work, script
        self.src = os.path.join(work, "src")
        self.runs = 0

    def _run_dir(self, tag):
        self.runs += 1
        return os.path.join(self.work, "runs", f"{self.runs:02d}-{tag}")

    def _command(self, cmd, started=None):
        """Wall seconds of cmd (its exit checked), with progress bars off."""
        env = dict(os.environ, TQDM_DISABLE="1", PYTHON=sys.executable)
        tic = time.perf_counter()
        code, output = run_group(cmd, self.args.timeout, started=started, env=env, cwd=REPO)
        wall = time.perf_counter() - tic
        if code != 0:
            tail = output.strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"{os.path.basename(cmd[1])} failed (exit {code}): {tail[0]}")
        return wall

    def ours(self, threads=None, src=None, started=None):
        """One prepare_data.sh run into a fresh --out: {images, seconds, images_per_sec, out}."""
        out = self._run_dir("ours")
        threads = threads or self.args.threads
        wall = self._command(["bash", os.path.join(REPO, "prepare_data.sh"), "--src", src or self.src,
                              "--out", out, "--prefix", PREFIX, "--train-per-class", str(self.args.train_per_class),
                              "--resize", str(self.args.resize), "--quality", str(self.args.quality),
                              "--num-thread", str(threads)], started)
        with open(os.path.join(out, f"{PREFIX}-summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        images = summary["train_images"] + summary["val_images"]
        return {"images": images, "seconds": wall, "images_per_sec": images / wall, "threads": threads,
                "out": out}

    def im2rec(self, lists):
        """im2rec.py on copies of `lists` (ours' .lst files) in a fresh folder, checked by record count."""
        folder = self._run_dir("im2rec")
        os.makedirs(folder)
        for path in lists:
            shutil.copy(path, folder)
        # im2rec packs every PREFIX*.lst beside the prefix: both sets, one after the other.
        wall = self._command([sys.executable, self.script, os.path.join(folder, PREFIX), self.src,
                              "--resize", str(self.args.resize), "--quality", str(self.args.quality),
                              "--num-thread", str(self.args.threads), "--encoding", ".jpg", "--color", "1"])
        images = 0
        for path in lists:
            base = os.path.join(folder, os.path.basename(path)[:-len(".lst")])
            expected, written = _line_count(path), _line_count(base + ".idx") if os.path.isfile(base + ".idx") else 0
            if written != expected:  # its multi-process mode drops unreadable images with a print
                raise UserError(f"im2rec wrote {written} records for {os.path.basename(path)}, expected {expected}")
            images += written
        return {"images": images, "seconds": wall, "images_per_sec": images / wall, "threads": self.args.threads}


def _line_count(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def interleaved(bench, rounds):
    """{tool: [figures of each round]}: round r runs ours then im2rec, or the reverse when r is odd.

    An untimed run of ours first writes the lists im2rec packs (and warms the file cache for both).
    """
    warm = bench.ours()
    lists = [os.path.join(warm["out"], f"{PREFIX}-{name}.lst") for name in ("train", "val")]
    tools = {"ours": bench.ours, "im2rec": lambda: bench.im2rec(lists)}
    runs = {name: [] for name in tools}
    for round_ in range(rounds):
        for name in (list(tools) if round_ % 2 == 0 else list(tools)[::-1]):
            figures = tools[name]()
            figures.pop("out", None)
            log.info("round %d/%d %-6s %7.1f images/s, %5.1f s", round_ + 1, rounds, name,
                     figures["images_per_sec"], figures["seconds"])
            runs[name].append(figures)
    return runs


class PeakRss:
    """The peak of the summed resident memory of one process group, sampled from /proc.

    The group is the run's (run_group starts a new session): prepare_data.sh's Python
    and its spawned workers, which stay in it. Sampling sums processes alive at the
    same moment, which getrusage(RUSAGE_CHILDREN) cannot (its ru_maxrss is the largest
    single process); a peak shorter than the sampling period can be missed.
    """

    def __init__(self, period=_RSS_SAMPLE_SECONDS):
        self.period, self.peak_bytes, self.samples = period, 0, 0
        self._stop = threading.Event()
        self._thread = None

    def started(self, proc):
        """run_group's callback: start sampling the group of `proc` (its pid is the group id)."""
        self._thread = threading.Thread(target=self._sample, args=(proc,), daemon=True)
        self._thread.start()

    def _sample(self, proc):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set() and proc.poll() is None:
            self.peak_bytes = max(self.peak_bytes, page * sum(group_rss_pages(proc.pid)))
            self.samples += 1
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def group_rss_pages(pgid):
    """Resident pages of each process whose process group is `pgid`."""
    pages = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid:
                with open(f"/proc/{pid}/statm", encoding="utf-8") as f:
                    pages.append(int(f.read().split()[1]))
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return pages


def memory_runs(bench, counts):
    """{count: {peak_rss_mb, seconds, images, samples}}: one run of ours per generated image set."""
    results = {}
    for count in counts:
        src = os.path.join(bench.work, f"rss-{count}")
        generate_sources(src, count, _CLASSES, bench.args.rss_size, seed=1)
        watch = PeakRss()
        try:
            figures = bench.ours(src=src, started=watch.started)
        finally:
            watch.stop()
        results[count] = {"peak_rss_mb": watch.peak_bytes / 2**20, "seconds": figures["seconds"],
                          "images": figures["images"], "samples": watch.samples}
        log.info("memory, %d images: peak %.1f MB (%d samples), %.1f s", count,
                 results[count]["peak_rss_mb"], watch.samples, figures["seconds"])
        shutil.rmtree(src, ignore_errors=True)
    return results


def summarize(runs, sweep, memory):
    ratios = [o["images_per_sec"] / i["images_per_sec"] for o, i in zip(runs["ours"], runs["im2rec"])]
    small, large = sorted(memory)
    return {
        "packing_vs_im2rec": {**spread(ratios), "rounds": ratios},
        "images_per_sec": {name: spread([r["images_per_sec"] for r in rows]) for name, rows in runs.items()},
        "num_thread": {str(r["threads"]): r["images_per_sec"] for r in sweep},
        "prepare_rss_ratio_10x": memory[large]["peak_rss_mb"] / memory[small]["peak_rss_mb"],
        "peak_rss_mb": {str(count): m["peak_rss_mb"] for count, m in memory.items()},
    }


def print_table(summary, conditions):
    s = summary["packing_vs_im2rec"]
    print("| figure | median | min | max | target |\n|---|---:|---:|---:|---|")
    print(f"| packing_vs_im2rec (images/s ours / im2rec) | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} | >= 0.9 |")
    for name, s in summary["images_per_sec"].items():
        print(f"| {name} images/s, --num-thread {conditions['threads']} | {s['median']:.0f} | {s['min']:.0f} "
              f"| {s['max']:.0f} | |")
    for threads, ips in summary["num_thread"].items():
        print(f"| ours images/s, --num-thread {threads} | {ips:.0f} | | | |")
    for count, mb in summary["peak_rss_mb"].items():
        print(f"| ours peak RSS, {count} images (MB) | {mb:.0f} | | | |")
    print(f"| prepare_rss_ratio_10x | {summary['prepare_rss_ratio_10x']:.2f} | | | <= 1.5 |")


def conditions_of(args, script):
    return {**machine(), "cores": usable_cores(), "images": args.images, "classes": _CLASSES,
            "image_sizes": {"speed_px": [list(r) for r in args.size], "memory_px": [list(r) for r in args.rss_size],
                            "order": "[[wmin, wmax], [hmin, hmax]]"},
            "rss_images": args.rss_images, "resize": args.resize, "quality": args.quality,
            "threads": args.threads, "rounds": args.rounds, "train_per_class": args.train_per_class,
            "im2rec": script,
            "notes": ["each figure is a whole command's wall time, from start to exit (both start Python "
                      "and import MXNet); images = the train + val records written",
                      "ours checks every image before packing; im2rec does not",
                      f"memory: summed RSS of the run's process group, sampled every {_RSS_SAMPLE_SECONDS} s"]}


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    script = im2rec_script()
    with work_folder(args.workdir, "bench-prepare", args.out) as work:
        bench = Bench(args, work, script)
        log.info("generating %d images in %s", args.images, work)
        generate_sources(bench.src, args.images, _CLASSES, args.size, seed=0)
        runs = interleaved(bench, args.rounds)
        sweep = [bench.ours(threads=n) for n in args.num_threads]
        for row in sweep:
            row.pop("out")
            log.info("ours, --num-thread %d: %.1f images/s", row["threads"], row["images_per_sec"])
        memory = memory_runs(bench, args.rss_images)
    summary = summarize(runs, sweep, memory)
    conditions = conditions_of(args, script)
    write_json_atomic(args.out, {**summary, "conditions": conditions, "runs": runs, "sweep": sweep,
                                 "memory": {str(k): v for k, v in memory.items()}})
    print_table(summary, conditions)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench_prepare"))
