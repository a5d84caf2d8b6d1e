"""tinycnn.graph: the .dot text of a known expression, the rows against the engine's generations,
module folding against the networks' own structure, legibility of the drawn labels, and the CLI."""
import re

import numpy as np
import pytest

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import cli, config, graph, nn
from tinycnn.models.resnet import BasicBlock


def read_dot(path):
    """(nodes: key -> (label lines, shape), edges: [(key, key)], ranks: [[key, ...]]) of a .dot file."""
    text = path.read_text()
    nodes = {key: (label.split("\\n"), shape)
             for key, label, shape in re.findall(r'^  (n\d+) \[label="(.*?)", shape=(\w+)', text, re.M)}
    edges = re.findall(r"^  (n\d+) -> (n\d+);$", text, re.M)
    ranks = [re.findall(r"(n\d+);", line) for line in re.findall(r"^  \{ rank=same; (.*) \}$", text, re.M)]
    return nodes, edges, ranks


def small_expression():
    """loss = sum(relu(x @ w) + x @ w): MatMul's output is read twice (a fork and a join, as a residual)."""
    rng = np.random.default_rng(0)
    x = tinycnn.Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True, name="x")
    w = tinycnn.Parameter(rng.standard_normal((3, 4)).astype(np.float32))
    w.name = "w"
    h = x @ w
    loss = (F.relu(h) + h).sum()
    return x, w, h, loss


def test_dot_lists_every_op_and_tensor_with_shapes_and_the_edges_between_them(tmp_path):
    x, w, h, loss = small_expression()
    matmul, add = h.creator, loss.creator.inputs[0].creator
    relu = add.inputs[0].creator
    tinycnn.draw_graph(loss, tmp_path / "expr.dot")
    nodes, edges, ranks = read_dot(tmp_path / "expr.dot")
    label = {key: " ".join(lines) for key, (lines, _) in nodes.items()}
    assert sorted(label.values()) == sorted(["x 2x3", "w 3x4", "MatMul", "2x4", "ReLU", "2x4", "Add", "2x4", "Sum",
                                             "output scalar"])
    assert {label[key] for key, (_, shape) in nodes.items() if shape == "box"} == {"MatMul", "ReLU", "Add", "Sum"}
    by_label = {}
    for key, text in label.items():
        by_label.setdefault(text, []).append(key)
    # Name the three 2x4 tensors by what made them.
    made_by = {target: label[source] for source, target in edges}
    h_key = next(k for k in by_label["2x4"] if made_by[k] == "MatMul")
    relu_key = next(k for k in by_label["2x4"] if made_by[k] == "ReLU")
    add_key = next(k for k in by_label["2x4"] if made_by[k] == "Add")
    op = {name: by_label[name][0] for name in ("MatMul", "ReLU", "Add", "Sum")}
    expected = {(by_label["x 2x3"][0], op["MatMul"]), (by_label["w 3x4"][0], op["MatMul"]), (op["MatMul"], h_key),
                (h_key, op["ReLU"]), (h_key, op["Add"]), (op["ReLU"], relu_key), (relu_key, op["Add"]),
                (op["Add"], add_key), (add_key, op["Sum"]), (op["Sum"], by_label["output scalar"][0])}
    assert sorted(edges) == sorted(expected)

    # Rows: a Function of generation g in row 2g + 1, its output in row 2g + 2, leaves above their reader.
    row_of = {key: index for index, keys in enumerate(ranks) for key in keys}
    for function, name in ((matmul, "MatMul"), (relu, "ReLU"), (add, "Add"), (loss.creator, "Sum")):
        assert row_of[op[name]] == 2 * function.generation + 1, name
    assert [matmul.generation, relu.generation, add.generation, loss.creator.generation] == [0, 1, 2, 3]
    assert row_of[by_label["x 2x3"][0]] == row_of[by_label["w 3x4"][0]] == 0
    assert row_of[by_label["output scalar"][0]] == 2 * loss.generation


def test_png_and_svg_are_written_with_no_label_over_another(tmp_path):
    model = models.create("lenet")
    with graph.record_modules(model) as modules:
        logits = model(tinycnn.Tensor(np.zeros((1, 1, 28, 28), dtype=np.float32)))
    drawn = tinycnn.draw_graph(logits, tmp_path / "lenet.png", modules=modules)
    assert (tmp_path / "lenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_no_overlap(drawn)
    op_labels = sorted(" ".join(node.lines) for node in drawn.nodes if node.kind == "op")
    assert op_labels == sorted(["Conv2d features.0", "MaxPool2d features.2", "Conv2d features.3",
                                "MaxPool2d features.5", "Flatten", "Linear classifier.0", "ReLU classifier.1",
                                "Linear classifier.2"])
    parameters = sorted(" ".join(node.lines) for node in drawn.nodes if node.kind == "parameter")
    assert parameters == sorted(f"{name} {'x'.join(map(str, p.shape))}" for name, p in model.named_parameters())

    svg = tinycnn.draw_graph(logits, tmp_path / "lenet.svg", modules=modules)
    text = (tmp_path / "lenet.svg").read_text()
    assert "<svg" in text and len(svg.nodes) == len(drawn.nodes)


def assert_no_overlap(drawn):
    boxes = list(drawn.extents.items())
    assert len(boxes) == len(drawn.nodes)
    for index, (key, (x0, y0, x1, y1)) in enumerate(boxes):
        for other, (u0, v0, u1, v1) in boxes[index + 1:]:
            assert x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, f"labels {key} and {other} overlap"


def test_a_basic_block_is_drawn_op_by_op_with_its_module_paths(tmp_path):
    tinycnn.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = BasicBlock(8, 16, stride=2, downsample=downsample)
    with graph.record_modules(block) as modules:
        out = block(tinycnn.Tensor(np.random.default_rng(0).standard_normal((2, 8, 8, 8)).astype(np.float32)))
    drawn = tinycnn.draw_graph(out, tmp_path / "block.png", modules=modules)
    assert_no_overlap(drawn)
    ops = sorted(" ".join(node.lines) for node in drawn.nodes if node.kind == "op")
    assert ops == sorted(["Conv2d conv1", "BatchNorm bn1", "ReLU relu", "Conv2d conv2", "BatchNorm bn2",
                          "Conv2d downsample.0", "BatchNorm downsample.1", "AddN", "ReLU relu"])
    assert [" ".join(n.lines) for n in drawn.nodes if n.kind == "input"] == ["input 2x8x8x8"]


@pytest.fixture(scope="module")
def resnet18_graph():
    model = models.create("resnet18")
    with config.using(shape_only=True), graph.record_modules(model) as modules:
        logits = model(tinycnn.Tensor(np.zeros((1, 3, 64, 64), dtype=np.float32)))
    return model, modules, logits


def test_depth_folds_modules_into_their_ancestor_at_that_depth(resnet18_graph):
    model, modules, logits = resnet18_graph
    full = graph.build_graph(logits, modules=modules)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    blocks = sum(isinstance(m, BasicBlock) for m in model.modules())
    op_names = [node.lines[0] for node in full.nodes if node.kind == "op"]
    assert op_names.count("Conv2d") == convs == 20 and op_names.count("BatchNorm") == bns == 20
    # the stem's ReLU, two per block; one addition per block; max pool, average pool, flatten, fc
    assert op_names.count("ReLU") == 1 + 2 * blocks and op_names.count("AddN") == blocks == 8
    assert len(op_names) == convs + bns + (1 + 2 * blocks) + blocks + 4

    children = dict(model.named_children())
    depth1 = graph.build_graph(logits, depth=1, modules=modules)
    boxes = {node.lines[0]: node for node in depth1.nodes if node.kind == "module"}
    assert sorted(boxes) == sorted(children)
    assert [node.lines for node in depth1.nodes if node.kind == "op"] == [["Flatten"]]  # ResNet.forward's own
    assert boxes["layer2"].lines == ["layer2", "Sequential", "16 ops"]  # 2 blocks of 7, plus a projection
    assert sum(int(node.lines[2].split()[0]) for node in boxes.values()) + 1 == len(op_names)

    depth2 = graph.build_graph(logits, depth=2, modules=modules)
    at_depth_2 = [name for name, _ in model.named_modules() if name.count(".") == 1]
    leaves_at_depth_1 = [name for name, child in children.items() if not list(child.children())]
    assert sorted(node.lines[0] for node in depth2.nodes if node.kind == "module") == sorted(at_depth_2)
    assert depth2.count("op") == len(leaves_at_depth_1) + 1  # conv1 ... fc drawn as ops, and Flatten

    whole = graph.build_graph(logits, depth=0, modules=modules)
    assert [node.lines for node in whole.nodes if node.kind != "input" and node.kind != "output"] == \
        [["(model)", "ResNet", f"{len(op_names)} ops"]]


def test_misuse_is_refused_with_a_message(tmp_path):
    x, w, h, loss = small_expression()
    with pytest.raises(ValueError, match="record_modules"):
        tinycnn.draw_graph(loss, tmp_path / "a.png", depth=1)
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.dot"):
        tinycnn.draw_graph(loss, tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="no creator"):
        tinycnn.draw_graph(w, tmp_path / "a.png")
    loss.backward()
    with pytest.raises(ValueError, match="freed by backward"):
        tinycnn.draw_graph(loss, tmp_path / "a.png")


def test_cli_graph_writes_dot_png_and_refuses_bad_requests(tmp_path, capsys):
    assert cli.main(["graph", "lenet", "--out", str(tmp_path / "lenet.dot")]) == 0
    assert "8 ops, 0 module boxes" in capsys.readouterr().out
    nodes, edges, _ = read_dot(tmp_path / "lenet.dot")
    assert sum(shape == "box" for _, shape in nodes.values()) == 8 and len(edges) == 8 + 16
    assert cli.main(["graph", "resnet18", "--depth", "1", "--input", "3,32,32", "--out", str(tmp_path / "r.png")]) == 0
    assert "1 op, 10 module boxes" in capsys.readouterr().out
    assert (tmp_path / "r.png").stat().st_size > 1000

    assert cli.main(["graph", "lenet", "--out", str(tmp_path / "x.jpg")]) == 1
    assert capsys.readouterr().err.startswith("tinycnn: error: graph --out")
    assert cli.main(["graph", "lenett", "--out", str(tmp_path / "x.png")]) == 1
    assert "did you mean lenet" in capsys.readouterr().err
    assert cli.main(["graph", "lenet", "--input", "3,28,28", "--out", str(tmp_path / "x.png")]) == 1
    assert "graph lenet --input 3,28,28" in capsys.readouterr().err
