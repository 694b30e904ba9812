"""MXNet's model-zoo checkpoints by name, downloaded once and verified ever after.

The zoo publishes no checksums. So the SHA-256 of each file is recorded beside it
(FILE.sha256) on its first download and checked on every later load; a cached
file that fails the check is fetched again and must then match the record.
"""
import logging
import os

from ..cli import UserError
from ..checkpoint import record_digest, recorded_digest, require_checkpoint, symbol_path, params_path
from ..prep import download as dl

log = logging.getLogger(__name__)

ZOO_URL = "http://data.mxnet.io/models/"

# name -> (symbol file, params file, epoch), relative to ZOO_URL, as MXNet published them.
MODELS = {
    "imagenet1k-resnet-18": ("imagenet/resnet/18-layers/resnet-18-symbol.json",
                             "imagenet/resnet/18-layers/resnet-18-0000.params", 0),
    "imagenet1k-resnet-34": ("imagenet/resnet/34-layers/resnet-34-symbol.json",
                             "imagenet/resnet/34-layers/resnet-34-0000.params", 0),
    "imagenet1k-resnet-50": ("imagenet/resnet/50-layers/resnet-50-symbol.json",
                             "imagenet/resnet/50-layers/resnet-50-0000.params", 0),
    "imagenet1k-resnet-101": ("imagenet/resnet/101-layers/resnet-101-symbol.json",
                              "imagenet/resnet/101-layers/resnet-101-0000.params", 0),
    "imagenet1k-resnet-152": ("imagenet/resnet/152-layers/resnet-152-symbol.json",
                              "imagenet/resnet/152-layers/resnet-152-0000.params", 0),
    "imagenet11k-resnet-152": ("imagenet-11k/resnet-152/resnet-152-symbol.json",
                               "imagenet-11k/resnet-152/resnet-152-0000.params", 0),
    "imagenet11k-place365ch-resnet-50": ("imagenet-11k-place365-ch/resnet-50-symbol.json",
                                         "imagenet-11k-place365-ch/resnet-50-0000.params", 0),
    "imagenet11k-place365ch-resnet-152": ("imagenet-11k-place365-ch/resnet-152-symbol.json",
                                          "imagenet-11k-place365-ch/resnet-152-0000.params", 0),
}


def default_pretrained(network):
    """The zoo's ImageNet-1k checkpoint for `network` ('resnet-50'), or None."""
    name = f"imagenet1k-{network}"
    return name if name in MODELS else None


def resolve_pretrained(name_or_prefix, epoch, model_dir, base_url=ZOO_URL):
    """(prefix, epoch) of a pretrained checkpoint: a zoo name or a local prefix.

    A zoo name is downloaded into model_dir (MODEL-symbol.json, MODEL-EPOCH.params)
    unless verified copies are there; `epoch` is then the zoo's. A local prefix
    must have PREFIX-symbol.json and PREFIX-EPOCH.params.
    """
    if name_or_prefix in MODELS:
        return fetch(name_or_prefix, model_dir, base_url)
    require_checkpoint(name_or_prefix, epoch, **pretrained_flags(verify=False))
    return name_or_prefix, epoch


def pretrained_flags(**extra):
    """require_checkpoint's arguments for a --pretrained-model that is not a zoo name."""
    return dict(prefix_flag="--pretrained-model", epoch_flag="--pretrained-epoch",
                note=f" (and it is not a zoo name: {', '.join(sorted(MODELS))})", **extra)


def fetch(name, model_dir, base_url=ZOO_URL):
    """Download zoo model `name` into model_dir; returns (prefix, epoch)."""
    symbol_file, params_file, epoch = MODELS[name]
    prefix = os.path.join(model_dir, name)
    for remote, local in ((symbol_file, symbol_path(prefix)), (params_file, params_path(prefix, epoch))):
        fetch_recorded(base_url + remote, local)
    return prefix, epoch


def fetch_recorded(url, path):
    """Download `url` to `path`, checked against the digest recorded at first download."""
    expected = recorded_digest(path)
    try:
        dl.download(url, path, checksum=("sha256", expected) if expected else None)
    except dl.DownloadError as exc:
        raise UserError(f"{exc}; to work offline, pass --pretrained-model PREFIX "
                        f"(a local PREFIX-symbol.json + PREFIX-EPOCH.params)") from None
    if expected is None:
        log.info("recorded SHA-256 %s of %s", record_digest(path), path)
