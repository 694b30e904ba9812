"""Benchmark: the pre-flight check of a RecordIO set, structural and full-decode.

Before MXNet opens a .rec, training reads every record's header through the .idx
(offsets, record framing, one label in [0, C), counts against the .lst); with
--check-data full it also decodes every image. This times both on a set the size
of Caltech-256's training set (15,360 records by default) of 256-px JPEGs like
prepare_data.sh packs (64 distinct random images, repeated: decoding costs the
same for each record).

    python -m bench.bench_records                      # 15,360 records, 3 runs
    python -m bench.bench_records --records 2000 --repeat 1
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("python -m bench.bench_records")  # before the imports below, which need the requirements

import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import records  # noqa: E402
from common.cli import HelpFormatter, OneLineArgumentParser, positive_int, run_entry, setup_logging  # noqa: E402
from common.fsutil import write_json_atomic  # noqa: E402
from tools.benchkit import machine, make_workdir, spread  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "bench_records.json")
CLASSES = 256


def get_parser():
    parser = OneLineArgumentParser(prog="python -m bench.bench_records", formatter_class=HelpFormatter,
                                   description="Seconds to check a RecordIO set before training.")
    parser.add_argument("--records", metavar="N", type=positive_int, default=15360, help="records in the set")
    parser.add_argument("--side", metavar="PX", type=positive_int, default=256, help="image side")
    parser.add_argument("--repeat", metavar="R", type=positive_int, default=3, help="checks of each kind")
    parser.add_argument("--out", metavar="JSON", default=DEFAULT_OUT, help="results file")
    parser.add_argument("--workdir", metavar="DIR", help="where the set goes (default: a temporary folder)")
    return parser


def write_set(stem, count, side):
    """stem.rec/.idx/.lst of `count` JPEG records (labels cycle over CLASSES); returns bytes written."""
    import mxnet as mx
    rng = np.random.default_rng(0)
    jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8),
                          [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for _ in range(64)]
    writer = mx.recordio.MXIndexedRecordIO(stem + ".idx", stem + ".rec", "w")
    with open(stem + ".lst", "w") as lst:
        for i in range(count):
            header = mx.recordio.IRHeader(0, float(i % CLASSES), i, 0)
            writer.write_idx(i, mx.recordio.pack(header, jpegs[i % len(jpegs)]))
            lst.write(f"{i}\t{i % CLASSES}\timage{i}.jpg\n")
    writer.close()
    return os.path.getsize(stem + ".rec")


def time_check(stem, repeat, decode):
    seconds = []
    for _ in range(repeat):
        tic = time.perf_counter()
        records.check_record_set(stem + ".rec", CLASSES, decode=decode)
        seconds.append(round(time.perf_counter() - tic, 3))
    return spread(seconds)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    folder, remove = make_workdir(args.workdir, "bench_records")
    try:
        stem = os.path.join(folder, "set-train")
        size = write_set(stem, args.records, args.side)
        result = {"records": args.records, "side": args.side, "rec_mb": round(size / 2 ** 20, 1),
                  "headers_seconds": time_check(stem, args.repeat, decode=False),
                  "full_decode_seconds": time_check(stem, args.repeat, decode=True)}
    finally:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, {"benchmark": "bench_records", "conditions": dict(machine(), repeat=args.repeat),
                                 "results": result})
    print(f"{args.records} records ({result['rec_mb']} MB, {args.side}-px JPEG): structural check "
          f"{result['headers_seconds']['median']:.2f} s, full decode {result['full_decode_seconds']['median']:.2f} s "
          f"(median of {args.repeat})")
    print(f"results: {args.out}")


if __name__ == "__main__":
    raise SystemExit(run_entry(main, "python -m bench.bench_records"))
