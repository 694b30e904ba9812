#!/usr/bin/env python3
"""One bound module fed three ways, epoch by epoch, in one process (bench_pipeline's child).

  memory    the batches of one training epoch, decoded beforehand (the iterator's own
            crops and labels), fed from memory
  iterator  a fresh ImageRecordIter each epoch, built before the epoch's clock starts,
            as train_caltech.py's loop builds it (common.transforms.record_iter)
  load      the memory batches, beside a process that keeps one core as busy as the
            iterator alone keeps this process (its measured CPU seconds an epoch)
Each round runs one epoch of each, in a shuffled order. Threads as train_caltech.py
chooses them (common/threads.py). Prints one JSON line.

    python -m bench.pipeline_probe --pretrained P --num-classes 10 --train-rec R --image-shape 3,64,64
"""
from common import threads

if __name__ == "__main__":
    threads.configure()  # as train_caltech.py does, before MXNet's import

import argparse  # noqa: E402
import json
import random
import subprocess
import sys
import time

import mxnet as mx

from bench.compute_bound import add_module_args, bound_module, train_step
from common import records, transforms
from common.train import loop

BURST = 0.005  # seconds of each busy spell of the load process: a few decoded images' worth
# The load process: "ready", then busy BURST seconds and asleep IDLE seconds, until killed.
LOAD = """import sys, time
busy, idle = float(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
while True:
    began = time.perf_counter()
    while time.perf_counter() - began < busy:
        pass
    time.sleep(idle)
"""
ALONE_EPOCHS = 5  # epochs of the iterator alone, for its CPU seconds an epoch


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    add_module_args(parser)
    parser.add_argument("--train-rec", required=True, help="the packed training set (.idx beside it)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="of the order within each round")
    return parser


class Load:
    """A process keeping one core busy `share` of the time, while the with block runs."""

    def __init__(self, share):
        idle = BURST * (1 / share - 1)
        self.cmd = [sys.executable, "-c", LOAD, str(BURST), str(idle)]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # running: the epoch's clock starts after its start-up
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


def epoch_iter(args, record_set, epoch):
    return transforms.record_iter(record_set, image_shape=args.image_shape, batch_size=args.batch_size,
                                  train=True, threads=threads.decode_threads(None), seed=epoch)


def in_memory(args, record_set):
    """The batches of one training epoch, copied out of the iterator."""
    batches = [mx.io.DataBatch(data=[b.data[0].copy()], label=[b.label[0].copy()], pad=b.pad)
               for b in epoch_iter(args, record_set, 0)]
    mx.nd.waitall()
    return batches


def iterator_cpu_seconds(args, record_set):
    """CPU seconds of this process (every thread) an epoch of the iterator alone, nothing trained."""
    began = time.process_time()
    for epoch in range(1, ALONE_EPOCHS + 1):
        for batch in epoch_iter(args, record_set, epoch):
            batch.data[0].wait_to_read()
    return (time.process_time() - began) / ALONE_EPOCHS


def timed_epoch(module, batches, metric):
    """(images/s, seconds) of one epoch over `batches`."""
    metric.reset()
    images, began = 0, time.perf_counter()
    for batch in batches:
        train_step(module, batch, metric)
        images += batch.data[0].shape[0] - batch.pad
    seconds = time.perf_counter() - began
    return images / seconds, seconds


def main(argv=None):
    args = get_parser().parse_args(argv)
    module = bound_module(args)
    record_set = records.check_record_set(args.train_rec, args.num_classes)
    memory = in_memory(args, record_set)
    metric = loop.training_metric(top_k=min(5, args.num_classes))
    timed_epoch(module, memory, metric)  # MKLDNN's first calls
    cpu = iterator_cpu_seconds(args, record_set)
    _, memory_seconds = timed_epoch(module, memory, metric)
    share = min(cpu / memory_seconds, 1.0)  # of one core
    feeds = {"memory": lambda epoch: timed_epoch(module, memory, metric)[0],
             "iterator": lambda epoch: timed_epoch(module, epoch_iter(args, record_set, epoch), metric)[0],
             "load": lambda epoch: _loaded(share, lambda: timed_epoch(module, memory, metric)[0])}
    runs, order = {name: [] for name in feeds}, random.Random(args.seed)
    for round_ in range(1, args.rounds + 1):
        for name in order.sample(list(feeds), len(feeds)):
            runs[name].append(feeds[name](round_))
    print(json.dumps({"images_per_sec": runs, "iterator_cpu_seconds_per_epoch": cpu,
                      "memory_epoch_seconds": memory_seconds, "load_share_of_one_core": share,
                      "decode_threads": threads.decode_threads(None), "threads": threads.describe()}), flush=True)
    return 0


def _loaded(share, run):
    with Load(share):
        return run()


if __name__ == "__main__":
    sys.exit(main())
