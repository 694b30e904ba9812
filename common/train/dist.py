"""What the workers of a dist kvstore agree on besides gradients.

With dist_sync every worker takes part in every batch's push and pull: a worker
that stops one batch earlier or later than the others leaves them waiting
forever. So the workers decide together, once per batch, whether to stop (a
preemption signal reached any of them), and they all train the same number of
batches per epoch: each epoch, worker r of W trains on its own N // W images of
a permutation of the whole set seeded by the epoch (common.train.sampling). MXNet's own split
(num_parts) would give each worker a fixed slice of the .rec, which
prepare_data.sh writes in class order: half the classes each, and BatchNorm
batches unlike any at test time. Each worker's BatchNorm statistics come from
its own images; at the end of each epoch they are averaged over the workers,
so that validation, the checkpoint and a resumed run use one set. A mid-epoch
checkpoint holds every worker's own statistics (rank 0's as usual, the others'
as 'workerR/NAME'), so that a resumed job continues exactly.

The kvstore runs with MXNET_UPDATE_ON_KVSTORE=0: the servers only sum, and each
worker applies the optimizer itself to the summed gradient. Every worker then
holds the same optimizer states, which rank 0 saves with its checkpoint (MXNet
cannot save states that live on the servers) and every worker loads on resume.
The sums above use the same store: keys that no optimizer touches.
"""
import logging
import os

log = logging.getLogger(__name__)

_STOP_KEY = "finetune:stop"
_AUX_KEY = "finetune:aux:"


def is_dist(kv):
    return kv is not None and kv.type.startswith("dist")


def sum_on_servers():
    """Before Module.init_optimizer: servers sum gradients, workers update (see the docstring)."""
    os.environ["MXNET_UPDATE_ON_KVSTORE"] = "0"


class DistSync:
    """Agreement over the workers of `kv`; aux_shapes: {name: shape} of the BatchNorm statistics."""

    def __init__(self, kv, aux_shapes):
        import mxnet as mx
        self.kv, self._aux = kv, sorted(aux_shapes)
        # Every worker initializes the same keys in the same order (kv.init is collective).
        kv.init(_STOP_KEY, mx.nd.zeros((1,)))
        for name in self._aux:
            kv.init(_AUX_KEY + name, mx.nd.zeros(aux_shapes[name]))

    def _sum(self, key, value):
        """The sum over the workers of each one's `value` under `key` (collective)."""
        import mxnet as mx
        total = mx.nd.zeros(value.shape)
        self.kv.push(key, value)
        self.kv.pull(key, out=total)
        return total

    def any(self, flag):
        """True on every worker if `flag` is true on any of them."""
        import mxnet as mx
        return self._sum(_STOP_KEY, mx.nd.array([1.0 if flag else 0.0])).asscalar() > 0

    def mean_aux(self, aux_params):
        """{name: array}: the mean over the workers of each worker's `aux_params`."""
        return {name: self._sum(_AUX_KEY + name, aux_params[name]) / self.kv.num_workers for name in self._aux}

    def with_worker_aux(self, aux_params):
        """aux_params plus every other worker's own, as 'workerR/NAME' (for a mid-epoch
        checkpoint); collective: every worker calls it, with its own."""
        import mxnet as mx
        out = dict(aux_params)
        for rank in range(self.kv.num_workers):
            for name in self._aux:
                # The servers sum: only `rank` pushes its values, the others zeros.
                mine = aux_params[name] if rank == self.kv.rank else mx.nd.zeros(aux_params[name].shape)
                total = self._sum(_AUX_KEY + name, mine)
                if rank:
                    out[f"worker{rank}/{name}"] = total
        return out

    def share_params(self, module):
        """Every worker takes rank 0's parameters (those its kv.init stored) before training."""
        import mxnet as mx
        arg_params, aux_params = module.get_params()
        shared = {}
        for name, array in arg_params.items():
            shared[name] = mx.nd.zeros(array.shape, dtype=array.dtype)
            self.kv.pull(name, out=shared[name])
        module.set_params(shared, aux_params)


def own_aux(aux_params, rank):
    """The BatchNorm statistics worker `rank` resumes with: its own where a mid-epoch
    checkpoint saved them ('workerR/NAME'), else rank 0's."""
    mine = f"worker{rank}/"
    own = {name[len(mine):]: value for name, value in aux_params.items() if name.startswith(mine)}
    shared = {name: value for name, value in aux_params.items() if "/" not in name}
    return dict(shared, **own)
