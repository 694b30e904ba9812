"""--ema DECAY: an exponential moving average of the weights, validated and saved.

After every training batch, each trained argument and each BatchNorm statistic w
updates its average: ema += (1 - DECAY) * (w - ema). The form matters: an array
that does not change (a frozen backbone, a BatchNorm on its moving statistics)
gives w - ema = 0 and its average stays bit-identical to it. The BatchNorm moving
mean/variance are averaged too rather than copied: they are themselves averages
over the raw weights' recent batches, and the averaged weights sit between those
(timm's ModelEmaV2 averages buffers the same way). With several devices the
statistics are the mean over the devices, as the epoch's checkpoint takes them.

Each epoch validates with the averages and commits them as PREFIX-E.params, which
score.py, predict.py and --load-epoch's evaluation read; the raw weights, which the
optimizer continues from, go to PREFIX-E.raw.params beside them (in the manifest, so
verified). A resumed run loads the raw weights into the network and the averages
from .params, and continues exactly as an unbroken run. The average starts as a copy
of the starting weights (the pretrained ones, or those of a checkpoint without a
.raw.params file). With a dist kvstore it is refused: each worker's statistics would
average apart.
"""
import logging

from .. import checkpoint
from ..cli import UserError, float_range

log = logging.getLogger(__name__)


def add_ema_args(group):
    group.add_argument("--ema", metavar="DECAY", type=float_range(0, 1, high_open=True), default=0.0,
                       help="keep an exponential moving average of the weights and BatchNorm statistics "
                            "(updated every batch, DECAY in [0, 1), 0 = off); validation and PREFIX-E.params "
                            "(what score.py/predict.py read) use it, the raw weights go to PREFIX-E.raw.params")


def check_ema_args(decay, *, kv_store, head):
    """UserError (one line) for --ema where it does not apply."""
    if not decay:
        return
    if kv_store.startswith("dist"):
        raise UserError(f"--ema {decay:g} is kept in one process: use --kv-store device or local "
                        f"(--kv-store {kv_store} was given)")
    if head != "fc":
        raise UserError(f"--ema {decay:g} averages the weights over training batches; --head {head} is fitted "
                        f"in one step: drop one of them")


class EMA:
    """The averages of a bound Module's trained arguments and auxiliary states (NDArrays on the
    first device's context), updated in place by update()."""

    def __init__(self, module, decay, start=None):
        """start: {name: NDArray} of averages to resume from (else copies of the module's arrays)."""
        group = module._exec_group  # Module has no public access to its device arrays
        fixed = set(module._fixed_param_names or ())
        self.decay = decay
        self._args = [(name, arrays) for name, arrays in zip(group.param_names, group.param_arrays)
                      if name not in fixed]
        self._aux = list(zip(group.aux_names, group.aux_arrays))
        start = start or {}
        now = {name: arrays[0] for name, arrays in self._args}
        now.update({name: _mean(arrays) for name, arrays in self._aux})
        self.values = {name: (start[name] if name in start else value).as_in_context(value.context).copy()
                       for name, value in now.items()}

    def update(self):
        """One batch's step: ema += (1 - decay) * (w - ema), for every array (queued on the engine)."""
        rate = 1.0 - self.decay
        for name, arrays in self._args:  # every device holds the same weights after an update
            self.values[name] += (arrays[0] - self.values[name]) * rate
        for name, arrays in self._aux:
            self.values[name] += (_mean(arrays) - self.values[name]) * rate

    def batch_end(self, param):
        """A batch-end callback form of update()."""
        self.update()

    def merged(self, arg_params, aux_params):
        """(arg_params, aux_params) with the averaged names replaced by their averages (on the CPU)."""
        import mxnet as mx
        averaged = {name: value.as_in_context(mx.cpu()) for name, value in self.values.items()}
        return ({k: averaged.get(k, v) for k, v in arg_params.items()},
                {k: averaged.get(k, v) for k, v in aux_params.items()})


def _mean(arrays):
    """The mean of an array's copies on the devices (each keeps its own BatchNorm statistics)."""
    if len(arrays) == 1:
        return arrays[0]
    import mxnet as mx
    return mx.nd.add_n(*[a.as_in_context(arrays[0].context) for a in arrays]) / len(arrays)


def start_values(prefix, start):
    """The averages to resume from: {name: NDArray} of the checkpoint's .params when it has a
    .raw.params beside it (an --ema run's), else None (start from the network's weights)."""
    import mxnet as mx
    if start.tag is None or not has_raw(start.manifest, prefix, start.tag):
        if start.tag is not None:
            log.info("--ema: the checkpoint holds no averages (no .raw.params): they start from its weights")
        return None
    args, aux = checkpoint.split_params(mx.nd.load(checkpoint.params_path(prefix, start.tag)),
                                        checkpoint.params_path(prefix, start.tag))
    return {**args, **aux}


def has_raw(manifest, prefix, tag):
    """True if the checkpoint's manifest lists a PREFIX-TAG.raw.params (an --ema run's raw weights)."""
    import os
    return os.path.basename(checkpoint.raw_params_path(prefix, tag)) in (manifest or {}).get("files", {})
