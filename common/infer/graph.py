"""A network as draw_net.py and extract_features.py see it: its layers with their
output shapes and parameter counts, the Graphviz source of the graph, the picture.

mx.viz.print_summary computes the parameters of the operators it knows
(Convolution, FullyConnected, BatchNorm, Embedding) from their attributes and
counts 0 for any other (a Deconvolution, a LayerNorm); here they are the inferred
shapes of the arrays each layer reads, so the total is what MXNet allocates
(checked again in totals()). mx.viz.plot_network drops the layers' names and
cannot mark nodes; dot_source() keeps its colours and labels, adds the names and
marks the two sides of a head surgery.
"""
import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from ..cli import UserError, mxnet_reason
from ..fsutil import atomic_output

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
INPUT = "input"  # the op shown for the graph's inputs (data, labels)
OLD, NEW = "old", "new"  # marks: cut away by a surgery, added by it

# mx.viz.plot_network's palette (colorbrewer Set3), by operator.
_OP_COLOURS = {INPUT: "#8dd3c7", "Convolution": "#fb8072", "FullyConnected": "#fb8072",
               "Activation": "#ffffb3", "LeakyReLU": "#ffffb3", "BatchNorm": "#bebada",
               "Pooling": "#80b1d3", "Concat": "#fdb462", "Flatten": "#fdb462", "Reshape": "#fdb462",
               "SoftmaxOutput": "#b3de69", "softmax": "#b3de69"}
_OTHER_COLOUR = "#fccde5"
# What a mark does to a node and to the edges into it (Graphviz attributes).
_MARK_STYLE = {
    OLD: {"style": "filled,dashed", "fillcolor": "#eeeeee", "color": "#999999", "fontcolor": "#999999"},
    NEW: {"style": "filled,bold", "fillcolor": "#ffd92f", "color": "#d62728", "penwidth": "3"},
}
_MARK_EDGE = {OLD: {"color": "#bbbbbb", "fontcolor": "#999999", "style": "dashed"},
              NEW: {"color": "#d62728", "penwidth": "2"}}
_MARK_NOTE = {OLD: "cut away", NEW: "new head"}


@dataclasses.dataclass
class Layer:
    """One node of a network: an operator or an input (data, label).

    inputs: names of the nodes it reads (parameters excluded); shape: its (first)
    output's shape for one image, without the batch axis; params/aux: {name:
    shape} of the argument arrays (weights) and auxiliary states (BatchNorm
    statistics) it reads; mark: None, OLD or NEW; node: its id in the .gv.
    """
    name: str
    op: str
    inputs: list
    shape: tuple
    attrs: dict
    params: dict
    aux: dict
    mark: str = None
    node: str = None

    @property
    def num_params(self):
        return sum(int(np.prod(shape)) for shape in self.params.values())

    @property
    def num_aux(self):
        return sum(int(np.prod(shape)) for shape in self.aux.values())


def infer_shapes(symbol, data_shape):
    """(argument shapes, auxiliary shapes, internal output shapes) as {name: shape},
    for input `data_shape` (N, C, H, W); UserError when the network cannot take it."""
    import mxnet as mx
    internals = symbol.get_internals()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints its arguments on failure
            arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
            _, out_shapes, _ = internals.infer_shape(data=data_shape)
    except mx.base.MXNetError as exc:
        raise UserError(f"the network does not take input {','.join(map(str, data_shape[1:]))}: "
                        f"{mxnet_reason(exc)} (check --image-shape)") from None
    if arg_shapes is None or out_shapes is None:
        raise UserError("the network's shapes cannot be inferred from its 'data' input alone")
    return (dict(zip(symbol.list_arguments(), arg_shapes)),
            dict(zip(symbol.list_auxiliary_states(), aux_shapes)),
            dict(zip(internals.list_outputs(), out_shapes)))


def _output_shape(node, outputs):
    """A node's (first) output shape for one image, without the batch axis, or None."""
    name = node["name"]
    keys = [name] if node["op"] == "null" else [f"{name}_output", f"{name}_output0"]
    shape = next((outputs[key] for key in keys if key in outputs), None)
    return tuple(shape[1:]) if shape is not None else None


def layers(symbol, data_shape):
    """[Layer] of `symbol` in graph order (inputs first), for input `data_shape` (N, C, H, W).

    Every argument and auxiliary array is counted once, for the first layer that
    reads it. Raises UserError when the network cannot take that input.
    """
    args, aux, outputs = infer_shapes(symbol, data_shape)
    nodes = json.loads(symbol.tojson())["nodes"]
    inputs = {"data"} | {name for name in args if name.endswith("_label")}
    counted, table = set(), []
    for node in nodes:
        name, op = node["name"], node["op"]
        if op == "null":
            if name in inputs:
                table.append(Layer(name, INPUT, [], _output_shape(node, outputs), {}, {}, {}))
            continue
        layer = Layer(name, op, [], _output_shape(node, outputs), node.get("attrs", {}), {}, {})
        for source in (nodes[entry[0]] for entry in node["inputs"]):
            if source["op"] != "null" or source["name"] in inputs:
                layer.inputs.append(source["name"])
            elif source["name"] not in counted:  # a weight or a statistic: its first reader's
                counted.add(source["name"])
                arrays, shapes = (layer.params, args) if source["name"] in args else (layer.aux, aux)
                arrays[source["name"]] = tuple(shapes[source["name"]])
        table.append(layer)
    return table


@dataclasses.dataclass
class Totals:
    """Parameter counts of a table: params (arguments), aux (auxiliary states), in
    `arrays` arrays; cut: parameters of the layers marked OLD (not in the total)."""
    params: int
    aux: int
    arrays: int
    cut: int


def totals(table, symbol, data_shape):
    """The table's Totals, checked against the arrays MXNet allocates for `symbol`.

    `symbol` is the network the table's unmarked and NEW layers form. An
    AssertionError means a parameter was counted twice or missed.
    """
    args, aux, _ = infer_shapes(symbol, data_shape)
    kept = [layer for layer in table if layer.mark != OLD]
    allocated = sum(int(np.prod(s)) for name, s in args.items() if name != "data" and not name.endswith("_label"))
    counted = Totals(sum(layer.num_params for layer in kept), sum(layer.num_aux for layer in kept),
                     sum(len(layer.params) + len(layer.aux) for layer in kept),
                     sum(layer.num_params for layer in table if layer.mark == OLD))
    assert counted.params == allocated, (counted.params, allocated)
    assert counted.aux == sum(int(np.prod(s)) for s in aux.values()), counted
    return counted


def candidate_layers(symbol):
    """Names of `symbol`'s operator nodes, nearest the output first."""
    nodes = json.loads(symbol.tojson())["nodes"]
    return [node["name"] for node in reversed(nodes) if node["op"] != "null"]


def surgery_view(old_table, new_table):
    """One table of both networks of a head surgery: every layer of `old_table`
    (the pretrained network), those the surgery removed marked OLD, then the
    layers `new_table` (the cut network with its new head) adds, marked NEW.

    A layer is kept when the new network has one of the same name, op and inputs.
    A NEW layer whose name the old network also uses (the new 'softmax') gets the
    node id 'NAME (new)'.
    """
    def key(layer):
        return layer.name, layer.op, tuple(layer.inputs), tuple(sorted(layer.params))
    new_keys = {key(layer) for layer in new_table}
    old_keys = {key(layer) for layer in old_table}
    old_names = {layer.name for layer in old_table}
    view = [dataclasses.replace(layer, mark=None if key(layer) in new_keys else OLD) for layer in old_table]
    added = [layer for layer in new_table if key(layer) not in old_keys]
    renamed = {layer.name: f"{layer.name} (new)" for layer in added if layer.name in old_names}
    for layer in added:
        view.append(dataclasses.replace(layer, mark=NEW, node=renamed.get(layer.name),
                                        inputs=[renamed.get(name, name) for name in layer.inputs]))
    return view


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs):
    return ", ".join(f"{key}={_quote(value)}" for key, value in attrs.items())


def _digits(text):
    return "x".join(part for part in str(text).strip("()[] ").replace(" ", "").split(",") if part)


def _op_detail(layer):
    """mx.viz.plot_network's second line: the operator and its main settings."""
    a = layer.attrs
    details = {
        "Convolution": lambda: f"{_digits(a.get('kernel'))}/{_digits(a.get('stride', '1')) or 1}, "
                               f"{a.get('num_filter')}",
        "FullyConnected": lambda: a.get("num_hidden"),
        "Activation": lambda: a.get("act_type"),
        "Pooling": lambda: (f"{a.get('pool_type', 'max')}, global" if a.get("global_pool") in ("True", "1")
                            else f"{a.get('pool_type', 'max')}, {_digits(a.get('kernel'))}/"
                                 f"{_digits(a.get('stride', '1')) or 1}"),
    }
    detail = details.get(layer.op, lambda: None)()
    return f"{layer.op} {detail}" if detail else layer.op


def shape_text(shape):
    """'16x16x16' for an image's (16, 16, 16); '-' when unknown or a scalar (a label's)."""
    return "x".join(map(str, shape)) if shape else "-"


def dot_source(table, title, last=None):
    """The Graphviz (dot) source of a layer table: one node per layer named by its
    layer name, edges from input to consumer labelled with the shape they carry;
    marked layers (and the edges into them) styled as _MARK_STYLE says.

    last: draw only the last `last` layers of the network (the NEW ones too) and
    the inputs they read; a layer they read that is not drawn is a dotted name.
    """
    ids = {layer.name if layer.mark != NEW else layer.node or layer.name: layer for layer in table}
    shown = _shown(ids, last)
    lines = [f"digraph {_quote(title)} {{",
             f"  graph [{_attrs({'label': title, 'labelloc': 't', 'fontsize': '14', 'fontname': 'Helvetica'})}];",
             '  node [shape=box, style=filled, fontsize=11, fontname="Helvetica"];',
             '  edge [fontsize=9, fontname="Helvetica"];']
    lines += [f"  {_quote(node)} [{_attrs(_node_style(layer))}];" for node, layer in ids.items() if node in shown]
    elided = sorted({source for node in shown for source in ids[node].inputs} - shown)
    lines += [f"  {_quote(node)} [{_attrs({'label': f'{node} ...', 'shape': 'plaintext', 'style': ''})}];"
              for node in elided]
    for node in (node for node in ids if node in shown):
        layer = ids[node]
        for source in layer.inputs:
            edge = {"label": shape_text(ids[source].shape) if ids[source].shape else ""}
            edge.update(_MARK_EDGE.get(layer.mark, {}))
            lines.append(f"  {_quote(source)} -> {_quote(node)} [{_attrs(edge)}];")
    return "\n".join(lines + ["}"]) + "\n"


def _shown(ids, last):
    """The node ids dot_source draws: all, or the last `last` layers, the NEW ones and their inputs."""
    if last is None:
        return set(ids)
    operators = [node for node, layer in ids.items() if layer.op != INPUT and layer.mark != NEW]
    shown = set(operators[-last:]) | {node for node, layer in ids.items() if layer.mark == NEW}
    return shown | {source for node in shown for source in ids[node].inputs if ids[source].op == INPUT}


def _node_style(layer):
    style = {"fillcolor": _OP_COLOURS.get(layer.op, _OTHER_COLOUR)}
    label = layer.name if layer.op == INPUT else f"{layer.name}\n{_op_detail(layer)}"
    if layer.op == INPUT:
        style["shape"] = "oval"
    if layer.mark:
        style.update(_MARK_STYLE[layer.mark])
        label += f"\n({_MARK_NOTE[layer.mark]})"
    return dict(label=label, **style)


def summary_lines(table, counted, check):
    """The printed summary: layer, op, output shape, parameters (and the mark) per
    layer, then the totals, and what they were checked against (`check`)."""
    rows = [("layer", "op", "output", "parameters", "")]
    rows += [(layer.name, layer.op, shape_text(layer.shape), f"{layer.num_params:,}",
              _MARK_NOTE.get(layer.mark, "")) for layer in table if not layer.name.endswith("_label")]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
             f"{row[3]:>{widths[3]}}  {row[4]}".rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    operators = sum(1 for layer in table if layer.op != INPUT and layer.mark != OLD)
    cut = f" ({counted.cut:,} parameters cut away)" if counted.cut else ""
    return lines + [f"total: {counted.params:,} parameters, {counted.aux:,} auxiliary values (BatchNorm "
                    f"statistics) in {counted.arrays} arrays, {operators} layers{cut}",
                    f"checked: {check}"]


class NoRenderer(Exception):
    """Neither pygraphviz nor Graphviz's `dot` is available to draw the picture."""


def render(source, path, fmt):
    """Draw the dot `source` into `path` (atomically) as `fmt` (FORMATS); returns
    the renderer used. Raises NoRenderer when there is none."""
    for name, draw in _RENDERERS:
        try:
            with atomic_output(path) as tmp:
                draw(source, tmp, fmt)
            return name
        except NoRenderer:
            continue
    raise NoRenderer()


def _render_pygraphviz(source, path, fmt):
    """In process, with the Graphviz that pygraphviz's wheel bundles (no `dot` needed)."""
    try:
        import pygraphviz
    except ImportError:
        raise NoRenderer() from None
    with _c_stderr_to_log():
        pygraphviz.AGraph(string=source).draw(path=path, format=fmt, prog="dot")


def _render_dot(source, path, fmt):
    """Graphviz's own `dot` on PATH (a system install: apt install graphviz)."""
    dot = shutil.which("dot")
    if dot is None:
        raise NoRenderer()
    result = subprocess.run([dot, f"-T{fmt}", "-o", path], input=source, text=True, capture_output=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise UserError(f"{dot} -T{fmt} failed: {reason}")


_RENDERERS = (("pygraphviz", _render_pygraphviz), ("dot", _render_dot))


@contextlib.contextmanager
def _c_stderr_to_log():
    """Send what C libraries write to stderr during the block to the log instead.

    The fontconfig inside pygraphviz's wheel warns about the system's newer
    configuration files on every draw: harmless (the fonts are found), and stderr
    is for problems. Graphviz's own warnings are logged as warnings.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                level = logging.DEBUG if line.startswith("Fontconfig") else logging.WARNING
                log.log(level, "graphviz: %s", line)
