#!/usr/bin/env python3
"""Fine-tune an ImageNet-pretrained checkpoint on the RecordIO sets of prepare_data.sh.

    python train_caltech.py --network resnet-50 --gpus 0,1,2,3
    python train_caltech.py --network resnet-50 --cpus 2 --mode last-layer

Defaults are the published Caltech-256 recipe: SGD lr 0.01 (no momentum, no weight
decay), 16 images per device, random 224 crop + mirror of 256-px images,
Xavier(gaussian, in, 2) for the new layer, 8 epochs.
"""
import json
import logging
import os
import shutil
import sys

from common import cli, data, fit, model, trainer
from common.fsutil import write_text_atomic

log = logging.getLogger("train_caltech")


def get_parser():
    parser = cli.OneLineArgumentParser(prog="train_caltech.py", description=__doc__.split("\n")[1],
                                       formatter_class=cli.HelpFormatter)
    model.add_model_args(parser)
    data.add_data_args(parser)
    fit.add_fit_args(parser)
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    contexts = fit.contexts(args.gpus, args.cpus)
    fit.check_dtype(args.dtype, contexts)
    batch_size = args.batch_size or 16 * len(contexts)
    fit.per_device_batch(batch_size, len(contexts))
    dataset = data.load_dataset(args.data_dir, args.prefix, args.data_train, args.data_val,
                                args.classes, args.num_classes, args.num_examples)
    fit.check_top_k(args.top_k, dataset.num_classes)
    data.warn_if_upscaled(dataset.train.rec, args.image_shape)
    kv = fit.create_kvstore(args.kv_store)
    net = model.build_model(args.mode, args.network, dataset.num_classes, args.image_shape,
                            args.dtype, args.pretrained_model, args.pretrained_epoch,
                            args.model_dir, args.layer_before_fullc, args.lr_mult_pretrained)
    prefix = args.model_prefix or os.path.join("model", f"{args.prefix}-{args.network}-{args.mode}")
    trainer.check_resume(prefix, args.load_epoch, args.num_epochs)
    log_file = _write_run_files(prefix, args, dataset, contexts, batch_size) if kv.rank == 0 else None
    schedule = trainer.Schedule(args.num_epochs, args.lr, args.mom, args.wd, args.lr_schedule,
                                args.lr_step_epochs, args.lr_factor, args.warmup_epochs)
    cfg = trainer.RunConfig(prefix, batch_size, args.image_shape, args.data_nthreads, args.top_k,
                            args.disp_batches, args.seed, args.dtype, args.load_epoch or 0)
    try:
        val = trainer.run(net, dataset, contexts, kv, schedule, cfg)
    finally:
        if log_file is not None:
            cli.remove_log_file(log_file)
    print(f"final: val_acc={val['acc']:.4f} top{args.top_k}={val[f'top{args.top_k}']:.4f} "
          f"mean_class_acc={val['mean_class_acc']:.4f}", flush=True)
    return val


def _write_run_files(prefix, args, dataset, contexts, batch_size):
    """PREFIX-args.json (every resolved setting), PREFIX-classes.txt; returns the log handler."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    handler = cli.add_log_file(f"{prefix}-train.log")
    resolved = dict(vars(args), batch_size=batch_size, model_prefix=prefix,
                    contexts=[str(c) for c in contexts], num_classes=dataset.num_classes,
                    num_examples=len(dataset.train), data_train=dataset.train.rec,
                    data_val=dataset.val.rec, argv=sys.argv)
    write_text_atomic(f"{prefix}-args.json", json.dumps(resolved, indent=2, default=str) + "\n")
    shutil.copyfile(dataset.classes_file, f"{prefix}-classes.txt")
    log.info("run %s: %d classes, %d training and %d validation images, batch %d on %s",
             prefix, dataset.num_classes, len(dataset.train), len(dataset.val), batch_size,
             ", ".join(resolved["contexts"]))
    return handler


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "train_caltech.py"))
