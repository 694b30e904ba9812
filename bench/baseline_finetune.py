#!/usr/bin/env python3
"""The plain MXNet way to fine-tune, as the baseline that bench_train measures us against.

Written the way MXNet's example/image-classification/fine-tune.py (with its
common/fit.py and common/data.py) does it, and nothing more: load the checkpoint,
take `flatten0_output`, add FullyConnected + SoftmaxOutput, and call Module.fit
with ImageRecordIter's defaults as the example sets them (4 decode threads,
random crop and mirror), kvstore 'device', SGD, Xavier for the new layer, a
Speedometer, a checkpoint after every epoch and validation after it. No thread
settings: MXNet's own defaults, as a user of the example gets them.

It prints one JSON line: the training seconds of each epoch (Module.fit's
"Time cost"), the images an epoch trains, and the last validation accuracy.

    python bench/baseline_finetune.py --pretrained P --data-train T.rec --data-val V.rec \
        --num-classes 10 --model-prefix out/base
"""
import argparse
import json
import logging
import re
import sys

import mxnet as mx

_TIME_COST = re.compile(r"Epoch\[(\d+)\] Time cost=([\d.]+)")
_VAL_ACC = re.compile(r"Epoch\[(\d+)\] Validation-accuracy=([\d.]+)")


class Capture(logging.Handler):
    """Keeps the figures Module.fit logs: each epoch's training seconds and validation accuracy."""

    def __init__(self):
        super().__init__()
        self.seconds, self.val_acc = [], []

    def emit(self, record):
        text = record.getMessage()
        for pattern, into in ((_TIME_COST, self.seconds), (_VAL_ACC, self.val_acc)):
            match = pattern.search(text)
            if match:
                into.append(float(match.group(2)))


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--pretrained", required=True, help="checkpoint prefix")
    parser.add_argument("--pretrained-epoch", type=int, default=0)
    parser.add_argument("--data-train", required=True)
    parser.add_argument("--data-val", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--image-shape", default="3,224,224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--data-nthreads", type=int, default=4, help="the example's default")
    parser.add_argument("--disp-batches", type=int, default=20)
    parser.add_argument("--model-prefix", required=True)
    return parser


def fine_tune_symbol(symbol, arg_params, num_classes, layer="flatten0"):
    """The checkpoint cut at `layer`, with a new fc1 + softmax; the old fc1's weights dropped."""
    net = symbol.get_internals()[layer + "_output"]
    net = mx.sym.FullyConnected(data=net, num_hidden=num_classes, name="fc1")
    net = mx.sym.SoftmaxOutput(data=net, name="softmax")
    return net, {k: v for k, v in arg_params.items() if "fc1" not in k}


def iterators(args):
    shape = tuple(int(v) for v in args.image_shape.split(","))
    common = dict(label_width=1, data_name="data", label_name="softmax_label", data_shape=shape,
                  batch_size=args.batch_size, preprocess_threads=args.data_nthreads)
    train = mx.io.ImageRecordIter(path_imgrec=args.data_train, shuffle=True, rand_crop=True,
                                  rand_mirror=True, **common)
    val = mx.io.ImageRecordIter(path_imgrec=args.data_val, rand_crop=False, rand_mirror=False,
                                round_batch=False, **common)
    return train, val


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    capture = Capture()
    logging.getLogger().addHandler(capture)
    symbol, arg_params, aux_params = mx.model.load_checkpoint(args.pretrained, args.pretrained_epoch)
    net, arg_params = fine_tune_symbol(symbol, arg_params, args.num_classes)
    train, val = iterators(args)
    module = mx.mod.Module(net, context=[mx.cpu()])
    module.fit(train, eval_data=val, num_epoch=args.num_epochs, kvstore="device", optimizer="sgd",
               optimizer_params={"learning_rate": args.lr, "momentum": 0.0, "wd": 0.0},
               initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2),
               arg_params=arg_params, aux_params=aux_params, allow_missing=True, eval_metric="acc",
               batch_end_callback=mx.callback.Speedometer(args.batch_size, args.disp_batches),
               epoch_end_callback=mx.callback.do_checkpoint(args.model_prefix))
    train.reset()
    images = sum(batch.data[0].shape[0] for batch in train)  # round_batch: whole batches
    print(json.dumps({"train_seconds": capture.seconds, "images_per_epoch": images,
                      "val_acc": capture.val_acc[-1]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
