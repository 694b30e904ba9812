"""Head surgery on a pretrained symbol, by exact name and verified.

The pretrained network is cut at a named layer (default flatten0, the input of
the old classifier), and a new FullyConnected + SoftmaxOutput is attached under
names the checkpoint does not use. Then every parameter of the cut network must
come from the checkpoint with its exact shape, except the new head's: a missing
or mis-shaped backbone parameter is an error, never a silent re-initialization.
"""
import dataclasses
import json
import logging

from ..checkpoint import match_params
from ..cli import FILE_ONLY, UserError

log = logging.getLogger(__name__)

HEAD_FC = "fc_new"
_INPUTS = ("data", "softmax_label")
_CANDIDATES_SHOWN = 12


def cut(symbol, layer):
    """The output of `layer` ('flatten0' or 'flatten0_output') as a symbol.

    A loss layer (anything that takes a label, such as the old softmax) is not a
    place to cut: the new head would bring a second label input.
    """
    internals = symbol.get_internals()
    name = layer if layer.endswith("_output") else f"{layer}_output"
    if name not in internals.list_outputs() or _takes_label(internals[name]):
        raise UserError(f"--layer-before-fullc {layer}: no such layer output before the loss; "
                        f"candidates, nearest the head first: {', '.join(candidate_layers(symbol))}")
    return internals[name]


def _takes_label(symbol):
    return any(arg.endswith("_label") for arg in symbol.list_arguments())


def candidate_layers(symbol):
    """Operator outputs of `symbol` before its loss layers (names without '_output'), last first."""
    internals = symbol.get_internals()
    nodes = json.loads(symbol.tojson())["nodes"]
    names = [node["name"] for node in nodes if node["op"] != "null"
             and not _takes_label(internals[node["name"] + "_output"])]
    shown = list(reversed(names))[:_CANDIDATES_SHOWN]
    return shown + (["..."] if len(names) > _CANDIDATES_SHOWN else [])


def unused_name(base, taken):
    """`base`, or base1, base2... whichever no name in `taken` starts with."""
    candidates = [base] + [f"{base}{i}" for i in range(1, 1000)]
    return next(c for c in candidates if not any(t == c or t.startswith(c + "_") for t in taken))


def attach_head(features, num_classes, fc_name, dtype="float32"):
    """features -> FullyConnected(num_classes, name=fc_name) -> SoftmaxOutput 'softmax'.

    The softmax keeps the name 'softmax' so the label input is 'softmax_label',
    which is what the iterators provide (the old softmax was cut away).
    """
    import mxnet as mx
    net = mx.sym.FullyConnected(features, num_hidden=num_classes, name=fc_name)
    if dtype == "float16":
        net = mx.sym.Cast(net, dtype="float32", name=f"{fc_name}_float32")
    return mx.sym.SoftmaxOutput(net, name="softmax")


def cast_input(symbol, dtype):
    """`symbol` fed by data of `dtype`: float16 gets one Cast after `data`.

    A Cast the checkpoint already has there (a float16 run's checkpoint) is
    removed first, so a float16 checkpoint fine-tunes in float32 and vice versa.
    """
    symbol = _strip_input_casts(symbol)
    if dtype == "float32":
        return symbol
    import mxnet as mx
    return symbol(data=mx.sym.Cast(mx.sym.Variable("data"), dtype=dtype, name=f"data_{dtype}"))


def _strip_input_casts(symbol):
    """`symbol` with every Cast that reads `data` directly bypassed."""
    import mxnet as mx
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    data_ids = {i for i, node in enumerate(nodes) if node["op"] == "null" and node["name"] == "data"}
    casts = {i: node["inputs"][0] for i, node in enumerate(nodes)
             if node["op"] == "Cast" and node["inputs"] and node["inputs"][0][0] in data_ids}
    if not casts:
        return symbol
    for node in nodes:
        node["inputs"] = [casts.get(entry[0], entry) for entry in node["inputs"]]
    graph["heads"] = [casts.get(entry[0], entry) for entry in graph["heads"]]
    return mx.sym.load_json(json.dumps(graph))


@dataclasses.dataclass
class Surgery:
    """The fine-tuning symbol and where each of its parameters comes from.

    loaded_args/loaded_aux: arrays taken from the checkpoint (exact names, shapes).
    head: names of the new parameters, to be initialized fresh.
    dropped: checkpoint parameters the cut network does not use (the old head).
    """
    symbol: object
    loaded_args: dict
    loaded_aux: dict
    head: list
    dropped: list

    @property
    def backbone(self):
        return sorted(self.loaded_args)


def build(symbol, arg_params, aux_params, num_classes, layer, data_shape, dtype="float32"):
    """Cut `symbol` at `layer`, attach a new head, and match the checkpoint to it.

    data_shape: (N, C, H, W) used to infer parameter shapes.
    Raises UserError if a backbone parameter is missing or has another shape.
    """
    taken = set(arg_params) | set(aux_params) | set(symbol.list_arguments())
    fc_name = unused_name(HEAD_FC, taken)
    features = cast_input(cut(symbol, layer), dtype)
    new_symbol = attach_head(features, num_classes, fc_name, dtype)
    head = [f"{fc_name}_weight", f"{fc_name}_bias"]
    arg_shapes, _, aux_shapes = new_symbol.infer_shape(data=data_shape)
    args = dict(zip(new_symbol.list_arguments(), arg_shapes))
    aux = dict(zip(new_symbol.list_auxiliary_states(), aux_shapes))
    for name in _INPUTS + tuple(head):
        args.pop(name, None)
    loaded_args = match_params(args, arg_params, "argument", "pretrained checkpoint")
    loaded_aux = match_params(aux, aux_params, "auxiliary state", "pretrained checkpoint")
    dropped = sorted((set(arg_params) - set(loaded_args)) | (set(aux_params) - set(loaded_aux)))
    return Surgery(new_symbol, loaded_args, loaded_aux, head, dropped)


def log_surgery(surgery):
    """Say which parameters came from the checkpoint and which are new (the names of
    every loaded one go to the run's log file only: hundreds of them)."""
    log.info("loaded %d arguments and %d auxiliary states from the checkpoint",
             len(surgery.loaded_args), len(surgery.loaded_aux))
    log.info("loaded arguments: %s", ", ".join(sorted(surgery.loaded_args)), extra=FILE_ONLY)
    log.info("loaded auxiliary states: %s", ", ".join(sorted(surgery.loaded_aux)), extra=FILE_ONLY)
    log.info("initialized fresh: %s", ", ".join(surgery.head))
    if surgery.dropped:
        log.info("not used (cut away with the old head): %s", ", ".join(surgery.dropped))


def edit_nodes(symbol, edit):
    """A copy of `symbol` with edit(node) applied to every node of its JSON graph."""
    import mxnet as mx
    graph = json.loads(symbol.tojson())
    for node in graph["nodes"]:
        edit(node)
    return mx.sym.load_json(json.dumps(graph))


def freeze_batchnorm(symbol, names):
    """BatchNorm layers in `names` normalize with their moving statistics in training too.

    fixed_param_names freezes gamma/beta, but a training-mode forward pass would
    still normalize with each batch's statistics; with use_global_stats the frozen
    backbone computes in training exactly the features it computes at inference,
    and its moving mean/variance can never change.
    """
    def edit(node):
        if node["op"] == "BatchNorm" and node["name"] in names:
            node.setdefault("attrs", {})["use_global_stats"] = "True"
    return edit_nodes(symbol, edit)


def set_lr_mult(symbol, names, mult):
    """Give the variables in `names` a learning-rate multiplier.

    It travels as the `__lr_mult__` attribute, which the optimizer reads by
    parameter name, so it holds for any number of devices.
    """
    return _set_variable_attr(symbol, names, "__lr_mult__", mult)


def set_wd_mult(symbol, names, mult):
    """Give the variables in `names` a weight-decay multiplier (`__wd_mult__`), read by
    the optimizer by name when Module creates it (MXNet 1.9.1 Optimizer.set_wd_mult), so
    it holds on any number of devices and reaches a dist kvstore's servers with it."""
    return _set_variable_attr(symbol, names, "__wd_mult__", mult)


def _set_variable_attr(symbol, names, key, value):
    def edit(node):
        if node["op"] == "null" and node["name"] in names:
            node.setdefault("attrs", {})[key] = repr(float(value))
    return edit_nodes(symbol, edit)


NO_DECAY_SUFFIXES = ("_gamma", "_beta", "_bias")


def no_decay_names(symbol):
    """The arguments --no-wd-bn-bias spares: BatchNorm gammas and betas, and biases.

    MXNet's own rule (Module gives the optimizer the parameter names) already decays
    only names ending in _weight or _gamma; the attribute makes all three explicit.
    """
    return {name for name in symbol.list_arguments() if name.endswith(NO_DECAY_SUFFIXES)}


def set_label_smoothing(symbol, alpha):
    """Every SoftmaxOutput of `symbol` with smooth_alpha=alpha: its gradient is that of the
    cross-entropy against 1 - alpha on the label and alpha / (classes - 1) on each other
    class. Its output, the probabilities, is unchanged, so are evaluation and prediction."""
    def edit(node):
        if node["op"] == "SoftmaxOutput":
            node.setdefault("attrs", {})["smooth_alpha"] = repr(float(alpha))
    return edit_nodes(symbol, edit)


def label_smoothing(symbol):
    """The smooth_alpha of `symbol`'s SoftmaxOutput (0.0 without one or without the attribute)."""
    alphas = [float(node.get("attrs", {}).get("smooth_alpha", 0)) for node in json.loads(symbol.tojson())["nodes"]
              if node["op"] == "SoftmaxOutput"]
    return max(alphas, default=0.0)


def fixed_gammas(symbol):
    """Gamma variables of BatchNorm layers with fix_gamma (MXNet's default).

    The layer ignores them (gamma is 1), but the optimizer would still apply
    weight decay to its own copy, which then differs from the saved one.
    """
    nodes = json.loads(symbol.tojson())["nodes"]
    return {nodes[node["inputs"][1][0]]["name"] for node in nodes
            if node["op"] == "BatchNorm" and node.get("attrs", {}).get("fix_gamma", "True") in ("True", "true", "1")}


def operator_names(symbol, op):
    """Names of the nodes of type `op` in `symbol`."""
    return {node["name"] for node in json.loads(symbol.tojson())["nodes"] if node["op"] == op}


def frozen_until(symbol, layer):
    """(argument names, BatchNorm names) of `layer` and everything its output depends on.

    layer: an operator name ('stage3_unit2_conv1'), or a name prefix ('stage3': every
    operator whose name starts with 'stage3_', so a whole stage). The layers after it,
    those it does not feed from, are what trains. Raises UserError for a name that
    matches no operator, naming the prefixes there are.
    """
    nodes = json.loads(symbol.tojson())["nodes"]
    ops = [i for i, node in enumerate(nodes) if node["op"] != "null"]
    hits = [i for i in ops if nodes[i]["name"] == layer or nodes[i]["name"].startswith(layer + "_")]
    if not hits:
        prefixes = sorted({nodes[i]["name"].split("_")[0] for i in ops} - {""})
        raise UserError(f"--freeze-until {layer}: no layer is called so or starts with {layer}_; "
                        f"valid: a layer name or one of the prefixes {', '.join(prefixes)}")
    seen, todo = set(), list(hits)
    while todo:
        index = todo.pop()
        if index not in seen:
            seen.add(index)
            todo.extend(entry[0] for entry in nodes[index]["inputs"])
    arguments = set(symbol.list_arguments()) - set(_INPUTS)
    params = {nodes[i]["name"] for i in seen if nodes[i]["op"] == "null"} & arguments
    norms = {nodes[i]["name"] for i in seen if nodes[i]["op"] == "BatchNorm"}
    return params, norms
