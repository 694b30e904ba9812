"""draw_net.py, tools/drawnet.py and common/infer/graph.py: the .gv source, the picture,
the layer summary and its parameter counts, and --cut's head surgery.

ResNet-20 on 16 px inputs (74 layers) is drawn in a second; the checkpoints are
zoo-format ones with random weights (tests/trainkit.py): drawing reads shapes only.
"""
import json
import os
import re
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import draw_net
import symbols
from common import cli
from common.infer import graph
from tests import trainkit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = ",".join(map(str, trainkit.IMAGE_SHAPE))
ZOO_CLASSES = 7
_NODE = re.compile(r'^  "((?:[^"\\]|\\.)*)" \[(.*)\];$')
_EDGE = re.compile(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[(.*)\];$')


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A zoo-format ResNet-20 checkpoint (fc1 + softmax head of ZOO_CLASSES), epoch 0."""
    prefix, symbol, args, aux = trainkit.make_pretrained(
        str(tmp_path_factory.mktemp("draw") / "resnet-20"), num_classes=ZOO_CLASSES)
    return prefix, symbol, args, aux


def draw(*argv):
    """draw_net.py in this process; returns (exit status, its Drawing or None)."""
    drawings = []
    status = cli.run_entry(lambda a: drawings.append(draw_net.main(a)), "draw_net.py", [str(a) for a in argv])
    return status, drawings[0] if drawings else None


def read_gv(path):
    """({node id: attribute text}, [(source, target, attribute text)]) of a .gv draw_net.py wrote."""
    nodes, edges = {}, []
    for line in open(path, encoding="utf-8"):
        edge, node = _EDGE.match(line.rstrip("\n")), _NODE.match(line.rstrip("\n"))
        if edge:
            edges.append(edge.groups())
        elif node:
            nodes[node.group(1)] = node.group(2)
    return nodes, edges


def graph_nodes(symbol):
    """(every node of the symbol's graph but its parameters, every edge between them)."""
    nodes = json.loads(symbol.tojson())["nodes"]
    shown = {i for i, node in enumerate(nodes) if node["op"] != "null" or node["name"] == "data"
             or node["name"].endswith("_label")}
    edges = [(nodes[entry[0]]["name"], node["name"]) for i, node in enumerate(nodes) if i in shown
             for entry in node["inputs"] if entry[0] in shown]
    return {nodes[i]["name"] for i in shown}, edges


def test_every_layer_of_the_symbol_is_in_the_gv_and_the_png_is_drawn(tmp_path):
    """As a user runs it: a subprocess, whose stderr stays empty (the bundled fontconfig's
    warnings about the system's configuration go to the log, not the terminal)."""
    out = tmp_path / "pics" / "net"
    result = subprocess.run([sys.executable, os.path.join(REPO, "draw_net.py"), "--network", "resnet-20",
                             "--image-shape", SHAPE, "--num-classes", "4", "--out", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines()[-1] == f"source: {out}.gv; picture: {out}.png (pygraphviz)"
    symbol = symbols.get_symbol("resnet-20", num_classes=4, image_shape=trainkit.IMAGE_SHAPE)
    names, edges = graph_nodes(symbol)
    nodes, gv_edges = read_gv(f"{out}.gv")
    assert set(nodes) == names and len(names) == 74 + 2  # 74 layers, data, softmax_label
    assert sorted((a, b) for a, b, _ in gv_edges) == sorted(edges)
    assert 'label="conv0\\nConvolution 3x3/1x1, 16"' in nodes["conv0"]
    assert 'label="fc1\\nFullyConnected 4"' in nodes["fc1"]
    assert ('"flatten0" -> "fc1" [label="64"]') in open(f"{out}.gv", encoding="utf-8").read()
    png = open(f"{out}.png", "rb").read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] > 20 * image.shape[1] / 4  # 74 layers one under another: tall
    assert "new head" not in open(f"{out}.gv", encoding="utf-8").read()


def test_cut_greys_out_the_old_head_and_marks_the_new_one(zoo, tmp_path, capsys, entry_state):
    prefix, symbol, args, aux = zoo
    status, drawing = draw("--model-prefix", prefix, "--epoch", 0, "--image-shape", SHAPE, "--cut",
                           "--num-classes", 5, "--out", tmp_path / "cut")
    assert status == 0
    nodes, edges = read_gv(tmp_path / "cut.gv")
    names, _ = graph_nodes(symbol)
    assert set(nodes) == names | {"fc_new", "softmax (new)"}  # every layer of the old network, and the new head
    old = {node for node, attrs in nodes.items() if "(cut away)" in attrs}
    new = {node for node, attrs in nodes.items() if "(new head)" in attrs}
    assert old == {"fc1", "softmax"} and new == {"fc_new", "softmax (new)"}
    for node in old:
        assert 'style="filled,dashed"' in nodes[node] and 'fillcolor="#eeeeee"' in nodes[node]
    for node in new:
        assert 'color="#d62728"' in nodes[node] and 'fillcolor="#ffd92f"' in nodes[node]
    assert 'FullyConnected 5' in nodes["fc_new"] and f"FullyConnected {ZOO_CLASSES}" in nodes["fc1"]
    into = {(a, b): attrs for a, b, attrs in edges}
    assert 'color="#d62728"' in into[("flatten0", "fc_new")] and 'label="64"' in into[("flatten0", "fc_new")]
    assert 'style="dashed"' in into[("flatten0", "fc1")]
    assert ("fc_new", "softmax (new)") in into and ("fc1", "softmax") in into
    marked = {node for node, attrs in nodes.items() if "#d62728" in attrs or "dashed" in attrs}
    assert marked == old | new  # the backbone is drawn as it is
    # the summary: the fine-tuning network's parameters, the old head's apart
    out = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"fc1 +FullyConnected +7 +455 +cut away", line) for line in out)
    assert any(re.fullmatch(r"fc_new +FullyConnected +5 +325 +new head", line) for line in out)
    backbone = sum(a.size for name, a in args.items() if not name.startswith("fc1"))
    assert drawing.totals.params == backbone + 325 and drawing.totals.cut == 455
    assert out[-3].startswith(f"total: {backbone + 325:,} parameters, ") and "(455 parameters cut away)" in out[-3]
    assert out[-2].startswith("checked: 62 backbone arguments and 40 auxiliary states come from the "
                              "checkpoint's arrays with their shapes (surgery.build)")


def test_cut_takes_the_class_count_of_the_dataset(zoo, tmp_path, entry_state):
    data = tmp_path / "data"
    data.mkdir()
    (data / "birds-train.rec").write_bytes(b"")  # what find_prefix looks for; nothing is read from it
    (data / "birds-classes.txt").write_text("".join(f"{i:03d}.bird\n" for i in range(3)))
    status, drawing = draw("--model-prefix", zoo[0], "--image-shape", SHAPE, "--cut", "--data-dir", data,
                           "--out", tmp_path / "cut")
    assert status == 0
    head = [layer for layer in drawing.table if layer.mark == graph.NEW]
    assert [(layer.name, layer.shape) for layer in head] == [("fc_new", (3,)), ("softmax", (3,))]
    # without --epoch nothing of the arrays was read: the shapes come from the symbol
    assert "from the pretrained network" in drawing.check


def test_counts_are_the_checkpoint_s_arrays_where_mx_viz_print_summary_misses(zoo, tmp_path, capsys,
                                                                                entry_state):
    prefix, _, args, aux = zoo
    status, drawing = draw("--model-prefix", prefix, "--epoch", 0, "--image-shape", SHAPE,
                           "--out", tmp_path / "net", "--last", 3)
    assert status == 0
    assert drawing.totals.params == sum(a.size for a in args.values())
    assert drawing.totals.aux == sum(a.size for a in aux.values())
    assert drawing.totals.arrays == len(args) + len(aux)
    assert capsys.readouterr().out.splitlines()[-2] == (
        f"checked: {prefix}-0000.params holds these arrays with these shapes")
    # mx.viz.print_summary counts 0 for operators it does not know
    net = mx.sym.LayerNorm(mx.sym.Deconvolution(mx.sym.Variable("data"), kernel=(3, 3), num_filter=4,
                                                name="deconv"), name="ln")
    table = graph.layers(net, (1, 3, 8, 8))
    assert [(layer.name, layer.num_params) for layer in table] == [("data", 0), ("deconv", 3 * 4 * 9),
                                                                   ("ln", 2 * 10)]
    assert graph.totals(table, net, (1, 3, 8, 8)).params == 128


def test_last_draws_the_end_of_the_network_and_names_what_feeds_it(zoo, tmp_path, entry_state):
    status, _ = draw("--model-prefix", zoo[0], "--image-shape", SHAPE, "--cut", "--num-classes", 5,
                     "--last", 4, "--format", "svg", "--out", tmp_path / "end")
    assert status == 0
    nodes, edges = read_gv(tmp_path / "end.gv")
    # the last 4 layers of the pretrained network, the new head, the label they read
    layers = {"pool1", "flatten0", "fc1", "softmax", "fc_new", "softmax (new)", "softmax_label"}
    assert set(nodes) == layers | {"relu1"} and 'label="relu1 ..."' in nodes["relu1"]
    assert ("relu1", "pool1") in {(a, b) for a, b, _ in edges}
    assert open(tmp_path / "end.svg", "rb").read().lstrip().startswith(b"<?xml")


def test_pdf(tmp_path, entry_state):
    assert draw("--network", "resnet-20", "--image-shape", SHAPE, "--format", "pdf", "--last", 2,
                "--out", tmp_path / "net")[0] == 0
    assert open(tmp_path / "net.pdf", "rb").read().startswith(b"%PDF")


@pytest.fixture
def no_pygraphviz(monkeypatch, tmp_path):
    """As on a machine without the wheel: importing pygraphviz fails; PATH has only `bin`."""
    monkeypatch.setitem(sys.modules, "pygraphviz", None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_without_graphviz_the_gv_is_written_and_a_note_says_how_to_render_it(no_pygraphviz, tmp_path, capsys,
                                                                             entry_state):
    status, _ = draw("--network", "resnet-20", "--image-shape", SHAPE, "--out", tmp_path / "net")
    assert status == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"draw_net.py: note: no Graphviz to draw {tmp_path}/net.png here (pip install pygraphviz, whose "
        f"wheel bundles it, or apt install graphviz); render the source with: dot -Tpng {tmp_path}/net.gv "
        f"-o {tmp_path}/net.png"]
    assert captured.out.splitlines()[-1] == f"source: {tmp_path}/net.gv"
    assert sorted(os.listdir(tmp_path)) == ["bin", "net.gv"]


def test_a_dot_on_path_draws_when_pygraphviz_is_missing(no_pygraphviz, tmp_path, capsys, entry_state):
    fake = no_pygraphviz / "dot"  # stands in for apt's graphviz: records its arguments and input
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n/bin/cat > "$3"\n')
    fake.chmod(0o755)
    status, _ = draw("--network", "resnet-20", "--image-shape", SHAPE, "--format", "svg", "--out",
                     tmp_path / "net")
    assert status == 0 and capsys.readouterr().out.splitlines()[-1].endswith(f"{tmp_path}/net.svg (dot)")
    assert open(tmp_path / "args").read().startswith("-Tsvg -o ")
    assert open(tmp_path / "net.svg").read() == open(tmp_path / "net.gv").read()


# case: (arguments, exit status, texts the one error line must contain); {placeholders} from the test
MISUSE = {
    "unknown-network": (["--network", "resnet-21"], 2, ["--network: invalid choice: 'resnet-21'"]),
    "missing-prefix": (["--model-prefix", "{tmp}/none"], 3, ["--model-prefix {tmp}/none: {tmp}/none-symbol.json "
                                                             "not found; checkpoints in {tmp}: none"]),
    "missing-epoch": (["--model-prefix", "{prefix}", "--epoch", "3"], 3, ["saved epochs of {prefix}: 0"]),
    "epoch-without-weights": (["--network", "resnet-20", "--epoch", "1"], 1, ["--epoch 1 goes with --model-prefix"]),
    "input-too-big": (["--network", "resnet-20", "--image-shape", "3,224,224"], 1,
                      ["--network resnet-20 with --image-shape 3,224,224", "valid: 18, 34, 50"]),
    "cut-without-classes": (["--model-prefix", "{prefix}", "--cut", "--data-dir", "{tmp}/none"], 3,
                            ["--cut needs the new head's classes: pass --num-classes N, or --data-dir {tmp}/none"]),
    "cut-at-no-layer": (["--model-prefix", "{prefix}", "--cut", "--num-classes", "3", "--layer-before-fullc",
                         "fc9"], 1, ["--layer-before-fullc fc9: no such layer", "fc1, flatten0, pool1"]),
    "bad-format": (["--network", "resnet-20", "--format", "jpg"], 2, ["--format: invalid choice: 'jpg'"]),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_one_line_with_its_exit_status(zoo, tmp_path, case, capsys, entry_state):
    args, expected_status, texts = MISUSE[case]
    fill = dict(tmp=tmp_path, prefix=zoo[0])
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "x")]
    if "--image-shape" not in args:
        argv += ["--image-shape", SHAPE]
    try:
        status = cli.run_entry(draw_net.main, "draw_net.py", argv)
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    assert status == expected_status
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("draw_net.py: error: "), lines
    for text in texts:
        assert text.format(**fill) in lines[0]
    assert os.listdir(tmp_path) == []
