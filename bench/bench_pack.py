#!/usr/bin/env python3
"""Benchmark: our RecordIO packing against MXNet's own im2rec.py, in images/s.

Both pack the same generated JPEGs from the same .lst with the same worker count,
--resize and --quality:
  ours    common.prep.pack.pack_set, in this process (MXNet imported before timing)
  im2rec  python <site-packages>/mxnet/tools/im2rec.py PREFIX ROOT ..., as a subprocess
          (its time includes starting Python and importing MXNet; measured on its own too)
Every output is read back: record count and order, id and label of every record, and
for a few records the decoded shape (shorter side == --resize).

    python -m bench.bench_pack                      # 1000 images, 1 and 2 workers, 3 runs
    python -m bench.bench_pack --images 200 --threads 2 --repeat 1 --keep
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_pack")  # before the imports below, which need the requirements

# Nothing here may import MXNet at module level: pack_set's workers are spawned,
# and a spawned worker re-imports the main module (as __mp_main__).
import argparse  # noqa: E402
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np

from common.cli import (HelpFormatter, OneLineArgumentParser, UserError, int_in_range,
                        nonnegative_int, positive_int, run_entry, setup_logging)
from common.fsutil import write_json_atomic
from common.prep.imagefolder import lst_text
from common.prep.pack import pack_set
from tools.benchkit import machine, make_workdir, run_group, spread, thread_list
from tools.imagegen import class_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

log = logging.getLogger("bench_pack")

DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_pack.json")
# Generated sources are coloured noise, blurred (sigma 1 px) and saved at quality 95:
# about 38 KB for 400x300, near Caltech-256's mean file size (~1.2 GB / 30,607 images).
# Real photos still compress differently (smooth areas, edges), so absolute img/s on
# real data will differ somewhat; the ours/im2rec ratio is what this measures.
_BLUR_SIGMA = 1.0  # px
_SOURCE_QUALITY = 95
_SHAPE_SAMPLES = 5  # records per output whose image is decoded and its shape checked
_PREFIX = "bench"  # .lst/.rec/.idx base name in every run folder


def size_range(text):
    """argparse type: 'WMIN-WMAXxHMIN-HMAX' or 'WxH' (px) -> ((wmin, wmax), (hmin, hmax))."""
    parts = text.lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        ranges = tuple(_int_range(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WxH or WMIN-WMAXxHMIN-HMAX in pixels >= 1, e.g. 300-500x200-400, "
            f"got {text!r}") from None
    return ranges


def _int_range(text):
    low, _, high = text.partition("-")
    low, high = int(low), int(high or low)
    if not 1 <= low <= high:
        raise ValueError
    return low, high


def get_parser(add_help=True):
    parser = OneLineArgumentParser(
        prog="python -m bench.bench_pack", formatter_class=HelpFormatter, add_help=add_help,
        description="Time common.prep.pack.pack_set against MXNet's im2rec.py on the "
                    "same generated JPEGs and .lst, in images/s.")
    data = parser.add_argument_group("generated data")
    data.add_argument("--images", metavar="N", type=positive_int, default=1000,
                      help="source JPEGs to generate and pack")
    data.add_argument("--classes", metavar="C", type=positive_int, default=10,
                      help="class folders (labels 0..C-1)")
    data.add_argument("--size", metavar="WxH", type=size_range, default="300-500x200-400",
                      help="source image size range in px, each side uniform in its range")
    data.add_argument("--seed", type=int, default=0, help="image generation seed")
    pack = parser.add_argument_group("packing (passed to both)")
    pack.add_argument("--threads", metavar="LIST", type=thread_list, default="1,2",
                      help="worker counts to run, comma-separated")
    pack.add_argument("--resize", metavar="N", type=nonnegative_int, default=256,
                      help="shorter side in px (0: keep)")
    pack.add_argument("--quality", metavar="Q", type=int_in_range(1, 100), default=95,
                      help="JPEG quality")
    run = parser.add_argument_group("runs and output")
    run.add_argument("--repeat", metavar="R", type=positive_int, default=3,
                     help="timed runs per tool and worker count (the median is reported)")
    run.add_argument("--timeout", metavar="S", type=positive_int, default=600,
                     help="seconds before an im2rec run is killed and counted as failed")
    run.add_argument("--out", metavar="JSON", default=DEFAULT_OUT, help="results file")
    run.add_argument("--workdir", metavar="DIR",
                     help="where images and outputs go; must be empty or new, and is kept "
                          "(default: a temporary folder, removed unless --keep)")
    run.add_argument("--keep", action="store_true",
                     help="keep the temporary folder (last run of each configuration)")
    return parser


def im2rec_script():
    try:
        import mxnet as mx
    except (ImportError, AttributeError) as exc:
        # mxnet 1.9.1 dies with AttributeError (np.bool, np.PZERO) under numpy >= 1.24.
        raise UserError(f"cannot import mxnet with numpy {np.__version__} "
                        f"(mxnet 1.9.1 needs numpy<1.24): {exc}") from None
    path = os.path.join(os.path.dirname(mx.__file__), "tools", "im2rec.py")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; this MXNet wheel does not ship tools/im2rec.py")
    return path


def generate_sources(root, n_images, n_classes, size, seed):
    """Write n_images JPEGs round-robin into n_classes folders under root.

    Returns (items [(label, relative path)] sorted by label, {relative path: (h, w)}).
    """
    (w_min, w_max), (h_min, h_max) = size
    rng = np.random.default_rng(seed)
    items, shapes = [], {}
    for j in range(n_images):
        label = j % n_classes
        width, height = int(rng.integers(w_min, w_max + 1)), int(rng.integers(h_min, h_max + 1))
        image = cv2.GaussianBlur(class_image(rng, label, height, width), (0, 0), _BLUR_SIGMA)
        rel = f"{label:03d}.class{label}/{label:03d}_{j:05d}.jpg"
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        if not cv2.imwrite(os.path.join(root, rel), image,
                           [cv2.IMWRITE_JPEG_QUALITY, _SOURCE_QUALITY]):
            raise UserError(f"{os.path.join(root, rel)}: OpenCV could not write it")
        items.append((label, rel))
        shapes[rel] = (height, width)
    items.sort()
    return items, shapes


def expected_shape(height, width, resize):
    """(h, w) after resizing the shorter side to `resize`; im2rec and ours share the rule."""
    if resize <= 0:
        return height, width
    if height <= width:
        return resize, width * resize // height
    return height * resize // width, resize


def run_ours(run_dir, root, items, resize, quality, threads):
    """Time pack_set; returns (seconds, rec path, idx path)."""
    rec, idx = os.path.join(run_dir, _PREFIX + ".rec"), os.path.join(run_dir, _PREFIX + ".idx")
    start = time.perf_counter()
    pack_set(root, items, rec, idx, resize=resize, quality=quality, workers=threads, desc=f"ours t={threads}")
    return time.perf_counter() - start, rec, idx


def run_im2rec(run_dir, root, lst_path, resize, quality, threads, script, timeout):
    """Time im2rec.py on a copy of the .lst in run_dir; returns (seconds, rec path, idx path).

    Raises RuntimeError with the end of its output if it fails or times out.
    """
    prefix = os.path.join(run_dir, _PREFIX)
    shutil.copyfile(lst_path, prefix + ".lst")
    cmd = [sys.executable, script, prefix, root, "--resize", str(resize), "--quality",
           str(quality), "--num-thread", str(threads), "--encoding", ".jpg", "--color", "1"]
    start = time.perf_counter()
    returncode, output = run_group(cmd, timeout)
    seconds = time.perf_counter() - start
    if returncode != 0:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exit code {returncode}: {tail[0]}")
    return seconds, prefix + ".rec", prefix + ".idx"


def sample_indices(n):
    return sorted({round(i * (n - 1) / max(1, _SHAPE_SAMPLES - 1)) for i in range(_SHAPE_SAMPLES)})


def read_back(rec, idx, items, shapes, resize):
    """Check an output against the list; returns a dict (problems: [] when it is right).

    Record keys in file order must be 0..n-1; every header must be
    (flag 0, label from the list, id = index, id2 0); sampled records must decode
    to the expected shape. Also returns those sampled images for comparison.
    """
    import mxnet as mx
    reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    problems, samples, sampled = [], {}, set(sample_indices(len(items)))
    try:
        keys = list(reader.keys)  # in .idx file order
        if keys != list(range(len(items))):
            problems.append(f"{len(keys)} records, keys not 0..{len(items) - 1} in order")
        for index, (label, rel) in enumerate(items[:len(keys)]):
            header, payload = mx.recordio.unpack(reader.read_idx(keys[index]))
            if (header.flag, header.label, header.id, header.id2) != (0, float(label), index, 0):
                problems.append(f"record {index}: header {tuple(header)}, expected "
                                f"(0, {float(label)}, {index}, 0)")
            elif index in sampled:
                samples[index] = _check_sample(payload, shapes[rel], resize, index, problems)
    finally:
        reader.close()
    return {"records": len(keys), "rec_bytes": os.path.getsize(rec),
            "idx_bytes": os.path.getsize(idx), "problems": problems[:5],
            "sampled_shapes": {str(i): list(img.shape) for i, img in samples.items()
                               if img is not None}}, samples


def _check_sample(payload, source_hw, resize, index, problems):
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    want = expected_shape(*source_hw, resize)
    if image is None or image.shape != (*want, 3):
        got = None if image is None else image.shape
        problems.append(f"record {index}: decoded shape {got}, expected {(*want, 3)}")
    return image


class Bench:
    """What every timed run shares: the sources, their list, and the packing options."""

    def __init__(self, workdir, items, shapes, args, script):
        self.root = os.path.join(workdir, "src")
        self.runs_dir = os.path.join(workdir, "runs")
        self.lst_path = os.path.join(workdir, _PREFIX + ".lst")
        self.items, self.shapes, self.script = items, shapes, script
        self.resize, self.quality, self.timeout = args.resize, args.quality, args.timeout


def _ours(bench, run_dir, threads):
    return run_ours(run_dir, bench.root, bench.items, bench.resize, bench.quality, threads)


def _im2rec(bench, run_dir, threads):
    return run_im2rec(run_dir, bench.root, bench.lst_path, bench.resize, bench.quality,
                      threads, bench.script, bench.timeout)


RUNNERS = {"ours": _ours, "im2rec": _im2rec}


def timed_run(bench, tool, threads):
    """One run in a fresh folder; returns (run record, sampled decoded images or None)."""
    run_dir = os.path.join(bench.runs_dir, f"{tool}-t{threads}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a repeat replaces the previous outputs
    os.makedirs(run_dir)
    try:
        seconds, rec, idx = RUNNERS[tool](bench, run_dir, threads)
    except (RuntimeError, UserError) as exc:
        log.warning("%s t=%d failed: %s", tool, threads, exc)
        return {"ok": False, "error": str(exc)}, None
    if not (os.path.isfile(rec) and os.path.isfile(idx)):
        # im2rec exits 0 without writing anything when it finds no PREFIX*.lst.
        log.warning("%s t=%d failed: no .rec/.idx written", tool, threads)
        return {"ok": False, "seconds": round(seconds, 3), "error": "no .rec/.idx written"}, None
    check, samples = read_back(rec, idx, bench.items, bench.shapes, bench.resize)
    run = {"ok": not check["problems"], "seconds": round(seconds, 3),
           "images_per_s": round(len(bench.items) / seconds, 1), "check": check}
    log.info("%-6s t=%d: %.2f s, %.1f img/s%s", tool, threads, seconds, run["images_per_s"],
             "" if run["ok"] else f", WRONG OUTPUT: {check['problems'][0]}")
    return run, samples if run["ok"] else None


def summarise(tool, threads, runs):
    """Median/min/max images/s over the runs that succeeded and checked out."""
    good = [run for run in runs if run["ok"]]
    rates = [run["images_per_s"] for run in good]
    return {
        "tool": tool, "threads": threads, "runs_ok": len(good), "runs_total": len(runs),
        "images_per_s": spread(rates) if rates else None,
        "median_seconds": statistics.median(r["seconds"] for r in good) if good else None,
        "rec_bytes": good[-1]["check"]["rec_bytes"] if good else None,
        "runs": runs,
    }


def compare_layout(ours, theirs):
    """Ours vs im2rec on the sampled records of one worker count (both already checked).

    Headers were checked against the list for both, so they are identical; what can
    differ is the JPEG bytes (ours shrinks with INTER_AREA, im2rec with INTER_LINEAR).
    """
    if not ours or not theirs:
        return None
    common = sorted(set(ours) & set(theirs))
    shapes_equal = all(ours[i].shape == theirs[i].shape for i in common)
    diffs = [float(np.abs(ours[i].astype(np.int16) - theirs[i]).mean())
             for i in common if ours[i].shape == theirs[i].shape]
    return {"sampled_records": common, "decoded_shapes_equal": shapes_equal,
            "mean_abs_pixel_diff": round(statistics.mean(diffs), 2) if diffs else None}


def run_all(bench, threads_list, repeat):
    """Interleave tools and repeats so a slow spell of the machine hits both."""
    results, layout = [], {}
    for threads in threads_list:
        runs, samples = {tool: [] for tool in RUNNERS}, {}
        for _ in range(repeat):
            for tool in RUNNERS:
                run, images = timed_run(bench, tool, threads)
                runs[tool].append(run)
                samples[tool] = images or samples.get(tool)
        results += [summarise(tool, threads, runs[tool]) for tool in RUNNERS]
        layout[str(threads)] = compare_layout(samples.get("ours"), samples.get("im2rec"))
    return results, layout


def time_import_mxnet(repeat):
    """Seconds for `python -c 'import mxnet'` (each of `repeat` runs): the start-up cost
    inside every im2rec run. Repeated because the first one may read a cold disk cache."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "import mxnet"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{sys.executable} -c 'import mxnet' failed: "
                            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        times.append(round(time.perf_counter() - start, 3))
    return {"median": statistics.median(times), "runs": times}


def conditions(args, shapes, root, script):
    """Everything needed to compare these numbers with another run."""
    sizes = [os.path.getsize(os.path.join(root, rel)) for rel in shapes]
    (w_min, w_max), (h_min, h_max) = args.size
    return {
        "images": args.images, "classes": args.classes, "seed": args.seed,
        "source": {"width_px": [w_min, w_max], "height_px": [h_min, h_max],
                   "mean_kb": round(statistics.mean(sizes) / 1024, 1),
                   "total_mb": round(sum(sizes) / 2**20, 1), "blur_sigma_px": _BLUR_SIGMA,
                   "jpeg_quality": _SOURCE_QUALITY, "kind": "blurred coloured noise"},
        "resize": args.resize, "quality": args.quality, "threads": args.threads,
        "repeat": args.repeat, **machine(), "im2rec": script,
        "notes": [
            "ours: in-process pack_set; MXNet imported before timing; includes spawning its "
            "worker processes (threads > 1) and its read-back of every record header",
            "im2rec: subprocess wall-clock, includes Python start-up and import mxnet "
            "(import_mxnet_seconds); threads 1 = one process, T > 1 = T forked readers + 1 writer",
            "resize: ours INTER_AREA when shrinking, im2rec cv2.resize default INTER_LINEAR",
            "threads 1: both run in one process whose OpenCV may use opencv_threads threads; "
            "ours' T > 1 workers use 1 OpenCV thread each, im2rec's forked readers keep the default",
        ],
    }


def print_table(results, import_seconds):
    print(f"{'config':<12} {'img/s median':>12} {'min':>7} {'max':>7} {'median s':>9} "
          f"{'rec MB':>7} {'runs ok':>8}")
    for r in results:
        rate, mb = r["images_per_s"], r["rec_bytes"]
        figures = (f"{rate['median']:>12.1f} {rate['min']:>7.1f} {rate['max']:>7.1f} "
                   f"{r['median_seconds']:>9.2f} {mb / 2**20:>7.1f}" if rate else
                   f"{'failed':>12} {'':>7} {'':>7} {'':>9} {'':>7}")
        print(f"{r['tool']:<6} t={r['threads']:<3} {figures} "
              f"{r['runs_ok']:>4}/{r['runs_total']}")
    print(f"python -c 'import mxnet' took {import_seconds['median']:.2f} s (median): inside "
          f"every im2rec time, not inside ours (imported before timing)")


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    script = im2rec_script()
    workdir, remove = make_workdir(args.workdir, "bench_pack")
    try:
        log.info("generating %d images in %s", args.images, workdir)
        items, shapes = generate_sources(os.path.join(workdir, "src"), args.images,
                                         args.classes, args.size, args.seed)
        bench = Bench(workdir, items, shapes, args, script)
        with open(bench.lst_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(lst_text(items))
        import_seconds = time_import_mxnet(args.repeat)
        results, layout = run_all(bench, args.threads, args.repeat)
        report = {"benchmark": "bench_pack", "conditions": conditions(args, shapes, bench.root, script),
                  "import_mxnet_seconds": import_seconds, "results": results,
                  "ours_vs_im2rec_samples": layout}
    finally:
        if remove and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif remove:
            log.info("kept %s", workdir)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, report)
    print_table(results, import_seconds)
    print(f"results: {args.out}")
    failed = sum(r["runs_total"] - r["runs_ok"] for r in results)
    if failed:
        raise UserError(f"{failed} run(s) failed or wrote wrong output; see {args.out}")


if __name__ == "__main__":
    sys.exit(run_entry(main, "bench.bench_pack"))
