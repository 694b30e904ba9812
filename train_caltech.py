#!/usr/bin/env python3
"""Fine-tune an ImageNet-pretrained checkpoint on the RecordIO sets of prepare_data.sh.

    python train_caltech.py --network resnet-50 --gpus 0,1,2,3
    python train_caltech.py --network resnet-50 --cpus 2 --mode last-layer

Defaults are the published Caltech-256 recipe (RECIPE below, --recipe classic): SGD
lr 0.01 (no momentum, no weight decay), 16 images per device, random 224 crop + mirror
of 256-px images, Xavier(gaussian, in, 2) for the new layer, 8 epochs. --recipe modern
fills in the options of common/train/recipe.py's MODERN that the command line leaves out.
"""
from common import venv

if __name__ == "__main__":
    venv.ensure("train_caltech.py")  # before the imports below, which need the requirements
    from common import threads
    threads.configure()  # before MXNet is imported: every core at work (common/threads.py)
    from common.cluster import watchdog
    watchdog.guard_process()  # before MXNet's import, inside which a dist server or scheduler runs
    from common import mxload
    mxload.import_mxnet()  # without the optional packages it would load and never use here

import json
import logging
import os
import shutil
import sys
import threading

from common import cli, devices, evaluate, records, report, threads, transforms
from common.cluster import watchdog
from common.fsutil import write_text_atomic
from common.train import (callbacks, ema, fusion, heads, kfold, loop, mining, mixup, modes, multiscale, preempt,
                          recipe, resume)
from common.train import schedule

log = logging.getLogger("train_caltech")

# The published recipe (MXNet's Caltech-256 fine-tuning tutorial); the argument
# groups leave these to the entry script, so a second recipe overrides them here.
RECIPE = {
    "network": "resnet-50",
    "layer_before_fullc": "flatten0",  # the input of the zoo's fc1
    "image_shape": "3,224,224",  # random crops of the 256-px packed images
    "batch_per_device": 16,  # images per device and batch
    "num_epochs": 8,
    "lr": 0.01,
    "mom": 0.0,
    "wd": 0.0,
}


def get_parser():
    parser = cli.OneLineArgumentParser(prog="train_caltech.py", description=__doc__.split("\n")[1],
                                       formatter_class=cli.HelpFormatter)
    recipe.add_recipe_args(parser)
    modes.add_model_args(parser)
    records.add_data_args(parser)
    transforms.add_augment_args(parser)
    schedule.add_schedule_args(parser)
    loop.add_fit_args(parser)
    heads.add_head_args(parser)
    kfold.add_kfold_args(parser)
    parser.set_defaults(**RECIPE)
    return parser


def main(argv=None):
    """Train; returns the last epoch's validation figures (the `final:` line)."""
    args, given = recipe.parse_args(get_parser(), argv)
    cli.setup_logging(log_file_later=True)
    log.info("command: %s", " ".join(sys.argv if argv is None else ["train_caltech.py", *argv]),
             extra=cli.FILE_ONLY)
    args.mode = fusion.default_mode(args.mode, args.pretrained_model)
    recipe.apply(args, given)  # after the mode: some pieces apply to some modes only
    args.data_nthreads = threads.decode_threads(args.data_nthreads)  # args.json records what decodes
    heads.check_cache_args(mode=args.mode, cache=args.cache_features, mirror=args.cache_mirror,
                           cache_dir=args.feature_cache, kv_store=args.kv_store, head=args.head)
    mining.check_mining_args(args.hard_mining, balanced=args.balanced_sampling, kv_store=args.kv_store,
                             cache=args.cache_features or args.head != "fc")
    mixup.check_mixup_args(args.mixup, cache=args.cache_features or args.head != "fc")
    ema.check_ema_args(args.ema, kv_store=args.kv_store, head=args.head)
    args.multi_scale_sizes = multiscale.check_multiscale_args(args.multi_scale, args.image_shape,
                                                              cache=args.cache_features or args.head != "fc")
    if args.head != "fc":
        args.num_epochs = 1  # a fitted head has one "epoch": the checkpoint it is committed as
    plan = schedule.schedule_from_args(args)
    preempt.check_requeue(args.requeue)
    if args.kfold:
        kfold.check_args(args)
    contexts, batch_size, dataset = _devices_and_data(args)
    # The first curve is drawn at the end of a short run: its import overlaps loading and binding.
    threading.Thread(target=report.preload, name="preload-matplotlib", daemon=True).start()
    train = lambda run_args, data: _train_run(run_args, contexts, batch_size, data, plan)  # noqa: E731
    if not args.kfold:
        return _final(train(args, dataset), args.top_k)
    val, fold_val_acc = kfold.run(args, dataset, train, contexts=contexts, batch_size=batch_size)
    return _final(val, args.top_k, f" folds={args.kfold} fold_val_acc={fold_val_acc:.4f}")


def _train_run(args, contexts, batch_size, dataset, plan):
    """One training run (each --kfold fold is one): its last validation figures."""
    kv = devices.create_kvstore(args.kv_store)
    with watchdog.leaving_on_failure(kv, "train_caltech.py"), watchdog.job_watchdog(kv) as progress:
        return _run(args, contexts, batch_size, dataset, kv, plan, progress)


def _run(args, contexts, batch_size, dataset, kv, plan, progress):
    prefix = args.model_prefix or os.path.join("model", f"{args.prefix}-{args.network}-{args.mode}")
    # A frozen part or cached features are part of what the run is: resuming under others is another run.
    mode = heads.mode_label(args.mode, freeze_until=args.freeze_until, cache=args.cache_features,
                            mirror=args.cache_mirror, head=args.head)
    identity = resume.run_identity(network=args.network, mode=mode, dataset=dataset,
                                   image_shape=args.image_shape,
                                   sampling=resume.sampling_label(args.balanced_sampling, args.hard_mining),
                                   fold=args.fold)
    start = resume.choose_start(prefix, identity, load_epoch=args.load_epoch, restart=args.restart,
                                num_epochs=args.num_epochs, rank=kv.rank)
    if start.batch == 0 and start.epoch >= args.num_epochs:
        log.info("%s has finished all %d epochs already: nothing to train", prefix, args.num_epochs)
        return start.manifest["val"]
    stopped = start.batch == 0 and args.early_stopping and callbacks.EarlyStopping.resumed(
        args.early_stopping, prefix, start.epoch).reason(start.epoch)
    if stopped:
        log.info("%s stopped early already: nothing to train (%s)", prefix, stopped)
        return start.manifest["val"]
    net = modes.build_model(mode=args.mode, network=args.network, num_classes=dataset.num_classes,
                            image_shape=args.image_shape, dtype=args.dtype,
                            pretrained=args.pretrained_model, pretrained_epoch=args.pretrained_epoch,
                            model_dir=args.model_dir, layer=args.layer_before_fullc,
                            lr_mult_pretrained=args.lr_mult_pretrained, freeze_until=args.freeze_until,
                            no_wd_bn_bias=args.no_wd_bn_bias, label_smoothing=args.label_smoothing)
    log_file = _write_run_files(prefix, args, dataset, contexts, batch_size) if kv.rank == 0 else None
    cfg = loop.RunConfig(prefix=prefix, batch_size=batch_size, image_shape=args.image_shape,
                         data_threads=args.data_nthreads, top_k=args.top_k, disp_batches=args.disp_batches,
                         seed=args.seed, dtype=args.dtype, identity=identity, keep=args.keep,
                         requeue=args.requeue, progress=progress, balanced=args.balanced_sampling,
                         hard_mining=args.hard_mining, augment=recipe.augment(args),
                         early_stopping=args.early_stopping, mixup=args.mixup, ema=args.ema,
                         multi_scale=args.multi_scale_sizes)
    try:
        val = cli.logging_failures(_train, _trainer(args), net, dataset, contexts, kv, plan, cfg, start)
    finally:
        if log_file is not None:
            cli.remove_log_file(log_file)
    return val


def _trainer(args):
    """The function that trains: the epoch loop, or a head on cached features (common.train.heads)."""
    spec = heads.CacheSpec(args.feature_cache or os.path.join(args.model_dir, "feature-cache"),
                           args.layer_before_fullc, args.cache_mirror, args.dtype)
    return heads.trainer(args.cache_features, spec, args.head)


def _final(val, top_k, more=""):
    stop = "".join(f" {key}={val[key]}" for key in ("best_epoch", "best_val_acc") if key in val)
    print(f"final: val_acc={val['acc']:.4f} top{top_k}={val[f'top{top_k}']:.4f} "
          f"mean_class_acc={val['mean_class_acc']:.4f}{stop}{more}", flush=True)
    return val


def _devices_and_data(args):
    """(contexts, total batch, checked Dataset); resolves args.prefix and args.top_k."""
    contexts = devices.contexts(args.gpus, args.cpus)
    devices.check_dtype(args.dtype, contexts)
    batch_size = args.batch_size or args.batch_per_device * len(contexts)
    devices.per_device_batch(batch_size, len(contexts))
    args.prefix = records.find_prefix(args.data_dir, args.prefix, args.data_train)  # args.json records it
    dataset = records.load_dataset(args.data_dir, args.prefix, data_train=args.data_train,
                                   data_val=args.data_val, classes=args.classes,
                                   num_classes=args.num_classes, num_examples=args.num_examples,
                                   decode=args.check_data == "full")
    args.top_k = evaluate.resolve_top_k(args.top_k, loop.TOP_K, dataset.num_classes)
    devices.check_batch_fits(batch_size, len(dataset.train), len(contexts))
    records.warn_if_upscaled(dataset.train.rec, args.image_shape)
    return contexts, batch_size, dataset


def _train(train, net, dataset, contexts, kv, plan, cfg, start):
    """train's (loop.run's, heads.trainer's) last validation figures; a callback's StopTraining
    ends the run early, with the figures of the last epoch it finished."""
    try:
        return train(net, dataset, contexts, kv, plan, cfg, start).val
    except callbacks.StopTraining as stop:
        if stop.last is None:
            raise cli.UserError(f"training stopped before its first epoch ended: {stop}") from None
        log.info("training stopped after epoch %d: %s", stop.last.epoch, stop)
        return {**stop.last.val, **stop.fields}


def _write_run_files(prefix, args, dataset, contexts, batch_size):
    """PREFIX-args.json (every resolved setting), PREFIX-classes.txt; returns the log handler."""
    folder = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise cli.WriteFailed(f"--model-prefix {prefix}: cannot create its folder {folder} ({exc.strerror})") from None
    handler = cli.add_log_file(f"{prefix}-train.log")
    resolved = dict(vars(args), batch_size=batch_size, model_prefix=prefix,
                    contexts=[str(c) for c in contexts], num_classes=dataset.num_classes,
                    num_examples=len(dataset.train), argv=sys.argv,
                    # absolute: predict.py and score.py read them from any folder
                    data_train=os.path.abspath(dataset.train.rec), data_val=os.path.abspath(dataset.val.rec),
                    classes=os.path.abspath(dataset.classes_file), threads=threads.describe())
    write_text_atomic(f"{prefix}-args.json", json.dumps(resolved, indent=2, default=str) + "\n")
    shutil.copyfile(dataset.classes_file, f"{prefix}-classes.txt")
    log.info("run %s: %d classes, %d training and %d validation images, batch %d on %s",
             prefix, dataset.num_classes, len(dataset.train), len(dataset.val), batch_size,
             ", ".join(resolved["contexts"]))
    log.info("threads: %s; decoding %d thread(s) an iterator (MXNet's limit here: %d)",
             threads.summary(resolved["threads"]), args.data_nthreads, threads.decode_limit())
    if warning := threads.engine_warning(resolved["threads"]):
        log.warning("%s", warning)
    return handler


if __name__ == "__main__":
    sys.exit(cli.run_entry(main, "train_caltech.py"))
