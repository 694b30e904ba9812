#!/usr/bin/env python3
"""The compute bound of a training run: the same network, batch and contexts fed from memory.

One batch of random pixels and labels stays in memory: no decoding, no augmentation,
no iterator. Each step is what train_caltech.py's loop does per batch
(forward_backward, update, update_metric, which waits for the outputs), with the
thread settings train_caltech.py would choose (common/threads.py). Prints one JSON
line: images/s over the timed steps, after `--warmup` untimed ones.

    python -m bench.compute_bound --pretrained P --num-classes 10 --image-shape 3,64,64
"""
from common import threads

if __name__ == "__main__":
    threads.configure()  # as train_caltech.py does, before MXNet's import

import argparse  # noqa: E402
import json
import sys
import time

import mxnet as mx
import numpy as np

from bench.baseline_finetune import fine_tune_symbol
from common.train import loop
from common.transforms import image_shape


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    add_module_args(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    return parser


def add_module_args(parser):
    """What bound_module reads (pipeline_probe.py takes them too)."""
    parser.add_argument("--pretrained", required=True, help="checkpoint prefix")
    parser.add_argument("--pretrained-epoch", type=int, default=0)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--image-shape", type=image_shape, default="3,224,224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=1, help="CPU contexts (the batch is split among them)")
    parser.add_argument("--lr", type=float, default=0.01)


def bound_module(args):
    """The fine-tuning Module of `args` (pretrained, pretrained_epoch, num_classes, image_shape,
    batch_size, cpus, lr), bound for training, its optimizer ready."""
    shape = (args.batch_size,) + args.image_shape
    symbol, arg_params, aux_params = mx.model.load_checkpoint(args.pretrained, args.pretrained_epoch)
    net, arg_params = fine_tune_symbol(symbol, arg_params, args.num_classes)
    module = mx.mod.Module(net, context=[mx.cpu(i) for i in range(args.cpus)])
    module.bind(data_shapes=[("data", shape)], label_shapes=[("softmax_label", shape[:1])])
    module.init_params(initializer=loop.initializer(), arg_params=arg_params, aux_params=aux_params,
                       allow_missing=True)
    module.init_optimizer(kvstore="device", optimizer="sgd", optimizer_params={"learning_rate": args.lr})
    return module


def train_step(module, batch, metric):
    """What train_caltech.py's loop does per batch; update_metric waits for the outputs."""
    module.forward_backward(batch)
    module.update()
    module.update_metric(metric, batch.label)


def main(argv=None):
    args = get_parser().parse_args(argv)
    module = bound_module(args)
    shape = (args.batch_size,) + args.image_shape
    rng = np.random.default_rng(0)
    batch = mx.io.DataBatch(data=[mx.nd.array(rng.uniform(0, 255, shape))],
                            label=[mx.nd.array(rng.integers(0, args.num_classes, shape[:1]))])
    metric = loop.training_metric(top_k=min(5, args.num_classes))
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            tic = time.perf_counter()
        train_step(module, batch, metric)
    seconds = time.perf_counter() - tic
    print(json.dumps({"images_per_sec": args.steps * args.batch_size / seconds, "seconds": seconds,
                      "threads": threads.describe()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
