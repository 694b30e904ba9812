"""Where a Module runs: contexts, the kvstore, the batch split and dtype checks.

`--gpus 0,1,2,3` and `--cpus N` give the same multi-device code path: N CPU
contexts run the Module's data-parallel executors and kvstore exactly as GPUs
do, which is how this project is tested on machines without a GPU.
"""
import argparse
import os

from .cli import NoGPUBuild, UserError, positive_int

KVSTORES = ("device", "local", "dist_sync", "dist_device_sync")
DTYPES = ("float32", "float16")


def device_list(text):
    """argparse type: '0,1,2' -> [0, 1, 2]."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids like 0,1,2,3, got {text!r}")
    return ids


def add_device_args(group):
    """--gpus IDS | --cpus N, for contexts()."""
    devices = group.add_mutually_exclusive_group()
    devices.add_argument("--gpus", metavar="IDS", type=device_list, help="GPU ids, e.g. 0,1,2,3")
    devices.add_argument("--cpus", metavar="N", type=positive_int,
                         help="number of CPU contexts (default 1 when --gpus is not given)")


def contexts(gpus=None, cpus=None):
    """MXNet contexts for --gpus ids or --cpus N (the same multi-device code path)."""
    import mxnet as mx
    if gpus is None:
        return [mx.cpu(i) for i in range(cpus or 1)]
    if not mx.runtime.Features().is_enabled("CUDA"):
        raise NoGPUBuild(f"--gpus {','.join(map(str, gpus))}: this MXNet {mx.__version__} is the CPU "
                        f"build; install the CUDA build matching your driver (e.g. pip uninstall mxnet "
                        f"&& pip install mxnet-cu112=={mx.__version__}) or use --cpus N")
    available = mx.context.num_gpus()
    if max(gpus) >= available:
        raise UserError(f"--gpus {','.join(map(str, gpus))}: only GPUs 0..{available - 1} exist")
    return [mx.gpu(i) for i in gpus]


def check_dtype(dtype, ctxs):
    """float16 needs GPUs: MXNet 1.9.1 has no float16 matrix multiply on CPU."""
    if dtype == "float16" and any(ctx.device_type == "cpu" for ctx in ctxs):
        raise UserError("--dtype float16 needs --gpus (MXNet has no float16 matrix multiply on "
                        "CPU); valid on CPU contexts: float32")


def per_device_batch(batch_size, num_devices):
    """Images per device; the total must split evenly."""
    if batch_size % num_devices:
        raise UserError(f"--batch-size {batch_size} does not divide by the {num_devices} devices; "
                        f"use a multiple of {num_devices}")
    return batch_size // num_devices


def check_batch_fits(batch_size, num_images, num_devices):
    """A batch may not hold more images than the training set (MXNet's iterator fails
    beyond twice the set, and a batch of repeats is no batch)."""
    if batch_size > num_images:
        largest = num_images - num_images % num_devices
        raise UserError(f"--batch-size {batch_size} is more than the {num_images} training images; "
                        f"valid: up to {largest} (a multiple of the {num_devices} device(s))")


def create_kvstore(kind):
    """The kvstore; dist_* ones need the DMLC_* variables launch.py sets, and under
    launch.py only they connect the worker to the job."""
    import mxnet as mx
    launched = os.environ.get("DMLC_ROLE")
    if kind.startswith("dist") and not launched:
        raise UserError(f"--kv-store {kind} needs the launcher (python launch.py -n WORKERS --launcher local "
                        f"python train_caltech.py ...), which sets DMLC_ROLE and the scheduler address; "
                        f"valid without it: device, local")
    if launched and not kind.startswith("dist"):
        raise UserError(f"--kv-store {kind}: this process was started by launch.py (DMLC_ROLE={launched}), "
                        f"whose workers must train together; valid: dist_sync, dist_device_sync")
    return mx.kv.create(kind)
