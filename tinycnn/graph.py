"""The graph that backward walks, drawn: ops and tensors with their shapes, in rows by generation.

    with tinycnn.graph.record_modules(model) as modules:      # which module made each op
        logits = model(x)
    tinycnn.draw_graph(logits, "lenet.png", modules=modules)              # every op and tensor
    tinycnn.draw_graph(logits, "resnet18.svg", depth=1, modules=modules)  # one box per top module
    tinycnn.draw_graph(loss, "expr.dot")                                  # text for Graphviz

or from the shell: `tinycnn graph resnet18 --out resnet18.png --depth 2`.

The picture is drawn with matplotlib, so no Graphviz is needed; a `.dot` path writes the same graph
as Graphviz text instead. Rows follow the engine's `generation` (tinycnn/autograd.py): a Function
of generation g sits in row 2g + 1, its outputs (generation g + 1) in row 2g + 2, so reading down
the picture is the order of the forward pass and reading up is the order `run_backward` pops the
Functions from its heap. A leaf (the input, a parameter) sits in the row just above the first op
that reads it.

With `depth=K`, every module nested deeper than K levels is folded into its ancestor at depth K,
drawn as one box; the model itself is depth 0, its children depth 1 (`layer1`), theirs depth 2
(`layer1.0`), and so on. Boxes have no generation of their own, so they are put in rows by the same
rule the engine uses: one row below the lowest row they read from.
"""
import contextlib
import os

from tinycnn.autograd import Parameter, Tensor, graph_value

__all__ = ["ModuleCall", "ModuleRecord", "build_graph", "draw_graph", "record_modules", "write_dot"]

FONT_SIZE = 8                          # points
CHAR_WIDTH = 0.64 * FONT_SIZE / 72     # inches: DejaVu Sans Mono's advance (0.602 em) and a little room
LINE_HEIGHT = 1.25 * FONT_SIZE / 72    # inches: matplotlib's line spacing (1.2) and a little room
BOX_PAD = 0.3 * FONT_SIZE / 72         # inches each side: the bbox pad of 0.3 (in font sizes)
COLUMN_GAP = 0.25                      # inches between neighbouring boxes of one row
ROW_GAP = 0.22                         # inches between rows
DUMMY_WIDTH = 0.08                     # a long edge's bend point takes this much room in a row
MAX_PIXELS = 30000                     # the dpi is lowered so that no side of a PNG exceeds this

COLOURS = {  # fill colour by node kind
    "op": "#cfe2f3",
    "module": "#fce5cd",
    "tensor": "#ffffff",
    "input": "#fff2cc",
    "parameter": "#d9ead3",
    "constant": "#eeeeee",
    "output": "#f4cccc",
}


class ModuleCall:
    """One call of one module during a recorded forward: its path, type and the call around it."""

    def __init__(self, path, type_name, input_ids):
        self.path = path              # "layer1.0.conv1"; "" for the model itself
        self.type_name = type_name    # "Conv2d"
        self.input_ids = input_ids    # ids of the Tensors passed in: where this call's region stops
        self.parent = None            # the ModuleCall whose forward made this call (None: outermost)

    def chain(self):
        """The calls from the outermost down to this one."""
        calls = [self]
        while calls[-1].parent is not None:
            calls.append(calls[-1].parent)
        return calls[::-1]

    def __repr__(self):
        return f"ModuleCall({self.path or '<model>'}: {self.type_name})"


class ModuleRecord:
    """What `record_modules` saw: the module calls, the call that made each Function, and the names
    of the parameters."""

    def __init__(self, parameter_names):
        self.calls = []
        self.parameter_names = parameter_names  # id(Parameter) -> "layer1.0.conv1.weight"
        self._function_calls = {}               # id(Function) -> (Function, innermost ModuleCall)

    def call_of(self, function):
        """The innermost module call that ran `function`, or None if it ran outside every module."""
        entry = self._function_calls.get(id(function))
        return None if entry is None or entry[0] is not function else entry[1]

    def model_input_ids(self):
        """Ids of the Tensors given to the model itself (the outermost module)."""
        return {i for call in self.calls if call.path == "" for i in call.input_ids}

    def record(self, module, path, inputs, output):
        """Called after `module` returned `output`: claim the Functions it made.

        Forward hooks fire innermost first (a child returns before its parent does), so a
        Function not yet claimed belongs to this call itself, and one already claimed belongs to
        a call nested inside this one, which becomes this call's child. The Functions a call made
        are those reached from its outputs walking back through `inputs` and stopping at the
        tensors the call was given.
        """
        input_ids = {id(t) for t in _tensors(inputs)}
        call = ModuleCall(path, type(module).__name__, input_ids)
        self.calls.append(call)
        stack = [t.creator for t in _tensors(output) if t.creator is not None and id(t) not in input_ids]
        seen = set()
        while stack:
            function = stack.pop()
            if id(function) in seen:
                continue
            seen.add(id(function))
            owner = self.call_of(function)
            if owner is None:
                self._function_calls[id(function)] = (function, call)
            else:
                outermost = owner.chain()[0]
                if outermost is not call:
                    outermost.parent = call
            for x in function.inputs:
                if x is not None and x.creator is not None and id(x) not in input_ids:
                    stack.append(x.creator)


@contextlib.contextmanager
def record_modules(model):
    """Within the block, note which module call made each Function; yields a ModuleRecord.

    It puts a forward hook on every module of `model` and removes them on exit. A module reached
    under two names (shared) is recorded under the first.
    """
    parameter_names = {id(p): name for name, p in model.named_parameters()}
    record = ModuleRecord(parameter_names)
    handles, hooked = [], set()
    for path, module in model.named_modules():
        if id(module) in hooked:
            continue
        hooked.add(id(module))
        handles.append(module.register_forward_hook(_recording_hook(record, path)))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _recording_hook(record, path):
    def hook(module, inputs, output):
        record.record(module, path, inputs, output)
    return hook


def _tensors(value):
    """The Tensors in a value that may be a Tensor, or a (nested) tuple, list or dict of them, as
    the graph holds them (autograd.graph_value: a leaf itself, any other tensor its GraphValue), so
    they compare with `function.inputs`."""
    if isinstance(value, Tensor):
        return [graph_value(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


class Node:
    """One box of the picture: an op, a tensor, a folded module, or a bend point of a long edge."""

    def __init__(self, key, kind, lines):
        self.key = key        # a stable name: "n0", "n1", ...
        self.kind = kind      # a key of COLOURS, or "dummy"
        self.lines = lines    # the label, one string per line
        self.row = 0
        self.x = 0.0  # inches from the left, and from the top, of the box's centre
        self.y = 0.0

    @property
    def width(self):
        if self.kind == "dummy":
            return DUMMY_WIDTH
        return max(len(line) for line in self.lines) * CHAR_WIDTH + 2 * BOX_PAD

    @property
    def height(self):
        if self.kind == "dummy":
            return 0.0
        return len(self.lines) * LINE_HEIGHT + 2 * BOX_PAD

    def __repr__(self):
        return f"Node({self.key}, {self.kind}, {' | '.join(self.lines)!r}, row {self.row})"


class Graph:
    """Nodes and edges (pairs of Nodes, producer first), each node in a row."""

    def __init__(self):
        self.nodes = []
        self.edges = []
        # node key -> (x0, y0, x1, y1) in pixels of its drawn label, filled in by drawing a PNG or
        # SVG (a test checks that no two overlap)
        self.extents = {}

    def add(self, kind, lines):
        node = Node(f"n{len(self.nodes)}", kind, lines)
        self.nodes.append(node)
        return node

    def count(self, kind):
        return sum(node.kind == kind for node in self.nodes)


def _shape_text(shape):
    return "x".join(str(size) for size in shape) if shape else "scalar"


def _collect(roots):
    """The Functions reachable from `roots`, in the order found, and every Tensor they touch."""
    functions, tensors, seen = [], {}, set()
    stack = [t.creator for t in roots if t.creator is not None]
    for t in roots:
        tensors[id(t)] = t
    while stack:
        function = stack.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        if getattr(function, "released", False):
            raise ValueError("draw_graph: the graph was freed by backward(); draw it before calling backward, "
                             "or pass retain_graph=True to backward")
        functions.append(function)
        for x in function.inputs:
            if x is not None:
                tensors[id(x)] = x
                if x.creator is not None:
                    stack.append(x.creator)
        for ref in function.outputs:
            y = ref()
            if y is not None:
                tensors[id(y)] = y
    return functions, list(tensors.values())[::-1]  # tensors roughly in forward order


def build_graph(output, depth=None, modules=None):
    """The Graph that `draw_graph` draws (see the module's docstring for depth and modules)."""
    roots = _tensors(output)
    if not roots or all(t.creator is None for t in roots):
        raise ValueError("draw_graph: expected the output of a computation that recorded a graph (a Tensor made "
                         "from inputs with requires_grad=True, outside no_grad()), got "
                         f"{type(output).__name__} with no creator")
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise ValueError(f"draw_graph: depth must be an integer >= 0 or None, got {depth!r}")
    if depth is not None and modules is None:
        raise ValueError(f"draw_graph: depth={depth} needs to know which module made each op; record them with "
                         "`with tinycnn.graph.record_modules(model) as modules:` around the forward and pass "
                         "modules=modules")
    functions, tensors = _collect(roots)

    # The unit that shows a Function: the Function itself, or the module call at `depth` it folds into.
    def unit_of(function):
        call = modules.call_of(function) if modules is not None else None
        if depth is None or call is None:
            return function
        chain = call.chain()
        return chain[depth] if len(chain) > depth else function

    unit_of_function = {id(f): unit_of(f) for f in functions}
    graph = Graph()
    unit_nodes = {}     # id(Function or ModuleCall) -> its Node
    folded_calls = {}   # id(module Node) -> the ModuleCall it shows
    folded_counts = {}  # id(module Node) -> how many Functions it holds
    for function in reversed(functions):  # roughly forward order: the order nodes are first placed
        unit = unit_of_function[id(function)]
        if id(unit) not in unit_nodes:
            if unit is function:
                call = modules.call_of(function) if modules is not None else None
                lines = [function.name] + ([call.path] if call is not None and call.path else [])
                unit_nodes[id(unit)] = graph.add("op", lines)
            else:
                node = graph.add("module", [unit.path or "(model)", unit.type_name])
                unit_nodes[id(unit)], folded_calls[id(node)] = node, unit
        node = unit_nodes[id(unit)]
        if node.kind == "module":
            folded_counts[id(node)] = folded_counts.get(id(node), 0) + 1
    for node in graph.nodes:
        if node.kind == "module":
            count = folded_counts[id(node)]
            node.lines.append(f"{count} op{'s' if count != 1 else ''}")

    readers_of = {}  # id(Tensor) -> [unit Nodes reading it], in forward order
    for function in reversed(functions):
        node = unit_nodes[id(unit_of_function[id(function)])]
        for x in function.inputs:
            if x is not None and node not in readers_of.setdefault(id(x), []):
                readers_of[id(x)].append(node)
    root_ids = {id(t) for t in roots}
    for t in tensors:
        made_here = t.creator is not None and id(t.creator) in unit_of_function
        producer = unit_nodes[id(unit_of_function[id(t.creator)])] if made_here else None
        readers = [node for node in readers_of.get(id(t), []) if node is not producer]
        if producer is None:
            # A leaf: the input, a parameter or a constant. For a folded module only what the call
            # was given is drawn; its parameters and constants are inside the box.
            readers = [node for node in readers
                       if node.kind == "op" or id(t) in folded_calls[id(node)].input_ids]
            if not readers:
                continue
        elif id(t) not in root_ids and not readers:
            continue  # made and used inside one folded module
        is_root = id(t) in root_ids
        node = graph.add(_tensor_kind(t, is_root, modules), _tensor_lines(t, modules, is_root))
        if producer is not None:
            graph.edges.append((producer, node))
        for reader in readers:
            graph.edges.append((node, reader))
    _assign_rows(graph)
    return graph


def _tensor_kind(t, is_root, modules):
    if is_root:
        return "output"
    if t.creator is not None:
        return "tensor"
    if isinstance(t, Parameter):
        return "parameter"
    given_to_model = modules is not None and id(t) in modules.model_input_ids()
    return "input" if t.requires_grad or given_to_model else "constant"


def _tensor_lines(t, modules, is_root):
    name = t.name
    if name is None and modules is not None:
        name = modules.parameter_names.get(id(t))
    if name is None and is_root:
        name = "output"
    if name is None and modules is not None and id(t) in modules.model_input_ids():
        name = "input"
    return ([name] if name else []) + [_shape_text(t.shape)]


def _assign_rows(graph):
    """Row of each node: one below the lowest row it reads from (the engine's generation rule);
    then each leaf moves down to just above its first reader, and empty rows are dropped."""
    inputs = {node.key: [] for node in graph.nodes}
    outputs = {node.key: [] for node in graph.nodes}
    for source, target in graph.edges:
        inputs[target.key].append(source)
        outputs[source.key].append(target)
    for node in _topological_order(graph, inputs, outputs):
        node.row = 1 + max((source.row for source in inputs[node.key]), default=-1)
    for node in graph.nodes:
        if not inputs[node.key] and outputs[node.key]:
            node.row = min(target.row for target in outputs[node.key]) - 1
    used = sorted({node.row for node in graph.nodes})
    renumber = {row: index for index, row in enumerate(used)}
    for node in graph.nodes:
        node.row = renumber[node.row]


def _topological_order(graph, inputs, outputs):
    """Kahn's algorithm: no recursion, so a 1,000-layer graph is fine."""
    waiting = {node.key: len(inputs[node.key]) for node in graph.nodes}
    ready = [node for node in graph.nodes if waiting[node.key] == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for target in outputs[node.key]:
            waiting[target.key] -= 1
            if waiting[target.key] == 0:
                ready.append(target)
    return order


def _layout(graph):
    """Rows of nodes, left to right, with x positions in inches; long edges get bend points.

    A simplified Sugiyama layout: an edge spanning several rows is cut into one-row pieces
    through "dummy" bend points; a few sweeps order each row by the mean position of its
    neighbours (the barycentre heuristic, which removes most crossings); then each node is put
    at the mean x of its non-leaf neighbours and pushed right just enough not to overlap.
    Returns (rows, routes): rows is a list of lists of Nodes, routes maps each edge to the Nodes
    it passes through, ends included.
    """
    rows = [[] for _ in range(1 + max(node.row for node in graph.nodes))]
    for node in graph.nodes:
        rows[node.row].append(node)
    above = {}  # id(node) -> nodes one row up joined to it
    below = {}
    routes = {}
    for source, target in graph.edges:
        path = [source]
        for row in range(source.row + 1, target.row):
            dummy = Node(f"d{len(routes)}_{row}", "dummy", [])
            dummy.row = row
            rows[row].append(dummy)
            path.append(dummy)
        path.append(target)
        routes[(source.key, target.key)] = path
        for upper, lower in zip(path, path[1:]):
            below.setdefault(id(upper), []).append(lower)
            above.setdefault(id(lower), []).append(upper)

    order = {id(node): index for row in rows for index, node in enumerate(row)}
    for sweep in range(4):
        downward = sweep % 2 == 0
        for row in (rows[1:] if downward else rows[-2::-1]):
            neighbours = above if downward else below
            key = {}
            for node in row:
                linked = neighbours.get(id(node), [])
                key[id(node)] = (sum(order[id(n)] for n in linked) / len(linked)) if linked else order[id(node)]
            row.sort(key=lambda node: key[id(node)])
            for index, node in enumerate(row):
                order[id(node)] = index

    for row in rows:  # start packed from the left
        _place(row, [0.0] * len(row), [True] * len(row))
    for sweep in range(6):
        downward = sweep % 2 == 0
        for row in (rows[1:] if downward else rows[-2::-1]):
            neighbours = above if downward else below
            desired, steering = [], []
            for node in row:
                linked = neighbours.get(id(node), [])
                # A leaf (a parameter beside its op) must not pull the chain of ops sideways.
                solid = [n for n in linked if above.get(id(n)) or n.kind == "dummy" or not downward]
                chosen = solid or linked
                desired.append(sum(n.x for n in chosen) / len(chosen) if chosen else node.x)
                steering.append(bool(above.get(id(node))) or node.kind == "dummy")
            _place(row, desired, steering)
    left = min(node.x - node.width / 2 for row in rows for node in row) - 0.2  # a margin
    for row in rows:
        for node in row:
            node.x -= left
    return rows, routes


def _place(row, desired, steering):
    """Put the row's nodes at their desired x, in order, without overlap: push each right of its
    left neighbour where needed, then shift the row so the nodes that steer (not leaves) are, on
    average, where they want to be."""
    xs = list(desired)
    for index in range(1, len(row)):
        gap = (row[index - 1].width + row[index].width) / 2 + COLUMN_GAP
        xs[index] = max(xs[index], xs[index - 1] + gap)
    chosen = [i for i in range(len(row)) if steering[i]] or list(range(len(row)))
    shift = sum(desired[i] - xs[i] for i in chosen) / len(chosen) if chosen else 0.0
    for node, x in zip(row, xs):
        node.x = x + shift


def draw_graph(output, path, depth=None, modules=None, dpi=100):
    """Draw the graph behind `output` (a Tensor, or a tuple of them) to `path`.

    The extension chooses the format: .png or .svg (matplotlib) or .dot (Graphviz text).
    `depth` folds modules deeper than that many levels into one box each; it needs `modules`, the
    record of `record_modules(model)` taken around the forward. Returns the Graph drawn.
    """
    extension = os.path.splitext(str(path))[1].lower()
    if extension not in (".png", ".svg", ".dot"):
        raise ValueError(f"draw_graph: expected a path ending in .png, .svg or .dot, got {path!r}")
    graph = build_graph(output, depth=depth, modules=modules)
    if extension == ".dot":
        write_dot(graph, path)
    else:
        _render(graph, path, dpi)
    return graph


def write_dot(graph, path):
    """The graph as Graphviz text (`dot -Tpng graph.dot -o graph.png`), one rank per row."""
    shapes = {"op": "box", "module": "box3d"}

    def quoted(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph tinycnn {", "  rankdir=TB;", '  node [fontname="monospace", fontsize=10, style=filled];']
    for node in graph.nodes:
        label = "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in node.lines)
        lines.append(f'  {node.key} [label="{label}", shape={shapes.get(node.kind, "ellipse")}, '
                     f'fillcolor={quoted(COLOURS[node.kind])}, tooltip={quoted(node.kind)}];')
    for source, target in graph.edges:
        lines.append(f"  {source.key} -> {target.key};")
    for row in range(1 + max(node.row for node in graph.nodes)):
        keys = [node.key for node in graph.nodes if node.row == row]
        lines.append("  { rank=same; " + " ".join(f"{key};" for key in keys) + " }")
    lines.append("}")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


def _render(graph, path, dpi):
    """Draw with matplotlib on axes measured in inches, so label sizes are known in advance."""
    import matplotlib
    matplotlib.use("Agg")  # files only; also works without a display
    import matplotlib.pyplot as plt

    rows, routes = _layout(graph)
    row_top, y = [], 0.2
    for row in rows:
        height = max((node.height for node in row), default=0.0)
        row_top.append((y, height))
        y += height + ROW_GAP
    for row, (top, height) in zip(rows, row_top):
        for node in row:
            node.y = top + height / 2
    width = max(node.x + node.width / 2 for row in rows for node in row) + 0.2
    height = y
    dpi = min(dpi, MAX_PIXELS / max(width, height))

    figure = plt.figure(figsize=(width, height))
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)  # rows go down the page
    axes.axis("off")
    for (source_key, target_key), route in routes.items():
        points = [(route[0].x, route[0].y + route[0].height / 2)]
        points += [(node.x, node.y) for node in route[1:-1]]
        points.append((route[-1].x, route[-1].y - route[-1].height / 2))
        xs, ys = zip(*points)
        axes.plot(xs, ys, color="#555555", linewidth=0.7, zorder=1)
        axes.annotate("", xy=points[-1], xytext=points[-2], zorder=1,
                      arrowprops=dict(arrowstyle="-|>", color="#555555", linewidth=0.7, shrinkA=0, shrinkB=0,
                                      mutation_scale=7))
    labels = {}
    for node in graph.nodes:
        style = "square" if node.kind in ("op", "module") else "round"
        labels[node.key] = axes.text(node.x, node.y, "\n".join(node.lines), ha="center", va="center", family="DejaVu Sans Mono",
                  fontsize=FONT_SIZE, zorder=2,
                  bbox=dict(boxstyle=f"{style},pad=0.3", facecolor=COLOURS[node.kind], edgecolor="#333333",
                            linewidth=0.8 if node.kind != "module" else 1.2))
    figure.savefig(path, dpi=dpi)
    renderer = figure.canvas.get_renderer()
    for key, text in labels.items():
        text.update_bbox_position_size(renderer)
        box = text.get_bbox_patch().get_window_extent(renderer)
        graph.extents[key] = tuple(float(value) for value in box.extents)
    plt.close(figure)


def cli_command(args):
    """`tinycnn graph MODEL --out FILE.png|.svg|.dot [--depth K] [--input C,H,W]`."""
    import numpy

    import tinycnn.models as models
    from tinycnn import config
    from tinycnn.errors import UserError

    extension = os.path.splitext(args.out)[1].lower()
    if extension not in (".png", ".svg", ".dot"):
        raise UserError(f"graph --out {args.out}: expected a file name ending in .png, .svg or .dot")
    try:
        shape = args.input or models.default_input_shape(args.model)
    except ValueError as error:  # the only ValueError it raises: an unknown name, with close ones
        raise UserError(str(error)) from None
    model = models.create(args.model)
    # Two images: BatchNorm in training mode refuses one value per channel (Inception's 1x1 aux maps).
    image = Tensor(numpy.zeros((2,) + tuple(shape), dtype=numpy.float32))
    # The graph's structure does not depend on the values: skip the arithmetic of the costly ops.
    try:
        with config.using(shape_only=True), record_modules(model) as modules:
            output = model(image)
    except ValueError as error:
        if args.input is None:
            raise  # the network fails on its own input shape: a bug
        raise UserError(f"graph {args.model} --input {','.join(map(str, shape))}: {error}") from None
    graph = draw_graph(output, args.out, depth=args.depth, modules=modules)
    ops, boxes = graph.count("op"), graph.count("module")
    print(f"wrote {args.out}: {_plural(ops, 'op')}, {_plural(boxes, 'module box')}, "
          f"{_plural(len(graph.nodes) - ops - boxes, 'tensor')}, {_plural(1 + max(n.row for n in graph.nodes), 'row')}")
    return 0


def _plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith('x') else 's'}"
