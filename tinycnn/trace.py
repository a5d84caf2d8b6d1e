"""Watch a backward pass: one row per Function, in the order the backward runs it.

    >>> with tinycnn.trace() as t:
    ...     loss = F.cross_entropy(model(x), labels)
    ...     loss.backward()
    >>> print(t)                  # the table, memory kept for backward against parameters, top 5 ops
    >>> t.rows[0].op, t.rows[0].module, t.rows[0].grad_norm
    ('CrossEntropy', None, 1.0)
    >>> t.to_csv("trace.csv")

A row says which op ran (`op`), inside which module (`module`: its qualified name in the outermost
module called, e.g. `layer1.0.conv1`; '' for that outermost module's own forward; None outside
every module), the shape of its output, the norm of the gradient that reached that output, for
each parameter it uses the ratio |gradient| / |weight| (the relative size of an SGD step at lr 1),
the bytes it keeps for backward, and its forward and backward time.

What "kept for backward" counts. A Function holds, from its forward until its backward, what its
forward saved (`save_for_backward`, or named attributes such as MaxPool's `argmax`) and the arrays
of its leaf inputs (the graph keeps a leaf Tensor itself, but of any other input only its
GraphValue, without the array: tinycnn/autograd.py). Not counted: the arrays of
leaves that require a gradient (the parameters: they are the parameter memory) and arrays the
Function was given when it was built and the buffers of the modules called (BatchNorm's running
statistics, LeNet-5's RBF codes: model state, alive anyway). The input batch counts: the first
layer keeps it.
Arrays are counted by the buffer they live in: a view (a reshape, a channel slice) counts as its
whole base array, and a buffer held by several Functions (ReLU's output, kept by the ReLU and by
the convolution that reads it) counts once. So each row has two figures: `saved_bytes`, all the
distinct bytes this Function holds, and `new_bytes`, the part no Function recorded before it
(in forward order) holds; `new_bytes` sums to `activation_bytes`, the memory the graph keeps for
backward. Figures add up over every forward inside the `with` block: trace one step.

Off, the trace costs one check of `autograd.active_trace` per Function call, per backward step
and per Module call. On, each op is timed and its arrays inspected; `python -m
benchmarks.trace_overhead` measures the cost on a ResNet-18 step.
"""
import csv
import dataclasses
import math
import time
import weakref

import numpy

from tinycnn import autograd, backend

__all__ = ["Trace", "TraceRow", "trace"]


@dataclasses.dataclass
class TraceRow:
    """One Function of the traced graph (times in seconds, sizes in bytes)."""

    op: str
    module: str = None
    output_shape: tuple = ()
    saved_bytes: int = 0
    new_bytes: int = 0
    forward_time: float = math.nan
    backward_time: float = math.nan
    grad_norm: float = math.nan
    # qualified parameter name -> |gradient this op sends it| / |weight|
    parameter_ratios: dict = dataclasses.field(default_factory=dict)

    @property
    def grad_weight_ratio(self):
        """The ratio of the op's first parameter (a layer's weight), NaN for an op without one."""
        return next(iter(self.parameter_ratios.values()), math.nan)

    @property
    def time(self):
        return _zero_if_nan(self.forward_time) + _zero_if_nan(self.backward_time)


class Trace:
    """What `tinycnn.trace()` records; `rows` fill in as the backward runs."""

    def __init__(self):
        self.rows = []
        self.activation_bytes = 0  # what the graphs recorded inside the block keep for backward
        self.parameter_bytes = 0  # the distinct arrays of the leaves with requires_grad that ops used
        self.functions_recorded = 0  # Functions linked into a graph in forward (rows: those run backward)
        self._kept = {}  # id(buffer) -> weak reference: the buffers already charged to a Function
        self._parameters = {}  # id(buffer) -> weak reference, for parameter_bytes
        self._model_state = {}  # id(buffer) -> weak reference: the outermost modules' buffers
        self._modules = []  # the modules whose forward is running, outermost first
        self._outermost = None
        self._module_names = {}  # id(module) -> qualified name within the outermost module
        self._parameter_names = {}  # id(parameter) -> qualified name

    def __enter__(self):
        if autograd.active_trace is not None:
            raise RuntimeError("tinycnn.trace: a trace is already active (traces do not nest)")
        autograd.active_trace = self
        return self

    def __exit__(self, *exc_info):
        autograd.active_trace = None
        return False

    # Called by Module.__call__, Function.__call__ and run_backward while the trace is active.

    def call_module(self, module, args, kwargs):
        if not self._modules and module is not self._outermost:
            self._outermost = module
            self._module_names = {id(m): name for name, m in reversed(list(module.named_modules()))}
            for name, parameter in module.named_parameters():
                self._parameter_names.setdefault(id(parameter), name)
            for buffer in module.buffers():
                self._model_state[id(_buffer_of(buffer))] = _reference(_buffer_of(buffer))
        self._modules.append(module)
        try:
            return module._call_with_hooks(args, kwargs)
        finally:
            self._modules.pop()

    def call_function(self, function, inputs):
        given = {id(a) for a in _arrays_in(vars(function).values())}  # built with, not saved by forward
        started = time.perf_counter()
        outputs = function.apply(*inputs)
        forward_time = time.perf_counter() - started
        if "outputs" in vars(function):  # linked into a graph: it will have a backward
            function.trace_row = self._record_forward(function, given, forward_time)
        return outputs

    def call_backward(self, function, grad_outputs):
        started = time.perf_counter()
        grad_inputs = function.backward(*grad_outputs)
        backward_time = time.perf_counter() - started
        row = vars(function).get("trace_row") or TraceRow(op=function.name)  # forward ran before the trace
        if not math.isnan(row.backward_time):  # a second backward through a retained graph: a new row
            row = dataclasses.replace(row, parameter_ratios={})
        row.backward_time = backward_time
        row.grad_norm = math.sqrt(sum(_norm(g) ** 2 for g in grad_outputs))
        as_tuple = grad_inputs if isinstance(grad_inputs, tuple) else (grad_inputs,)
        for index, (x, gx) in enumerate(zip(function.inputs, as_tuple)):
            if x is not None and x.is_leaf and x.requires_grad and gx is not None:
                name = self._parameter_names.get(id(x), f"input {index}")
                weight_norm = _norm(x.data)
                row.parameter_ratios[name] = _norm(gx) / weight_norm if weight_norm > 0 else math.inf
        self.rows.append(row)
        return grad_inputs

    def _record_forward(self, function, given, forward_time):
        for x in function.inputs:
            if x is not None and x.is_leaf and x.requires_grad:  # a parameter: not kept for backward
                buffer = _buffer_of(x.data)
                if not _is_known(self._parameters, buffer):
                    self._parameters[id(buffer)] = _reference(buffer)
                    self.parameter_bytes += buffer.nbytes
        held = {}  # id(buffer) -> buffer
        leaves = [x.data for x in function.inputs if x is not None and x.is_leaf]  # GraphValues hold no array
        arrays = leaves + list(_arrays_in(vars(function).values()))
        for array in arrays:
            buffer = _buffer_of(array)
            if id(array) in given or id(buffer) in given:
                continue
            if _is_known(self._parameters, buffer) or _is_known(self._model_state, buffer):
                continue  # a parameter, a view of one (weight.reshape), or a module's buffer
            held[id(buffer)] = buffer
        new_bytes = 0
        for buffer in held.values():
            if not _is_known(self._kept, buffer):
                self._kept[id(buffer)] = _reference(buffer)
                new_bytes += buffer.nbytes
        self.activation_bytes += new_bytes
        self.functions_recorded += 1
        shapes = [shape for shape, _ in function.output_shapes]
        return TraceRow(op=function.name, module=self._current_module_name(),
                        output_shape=shapes[0] if len(shapes) == 1 else tuple(shapes),
                        saved_bytes=sum(buffer.nbytes for buffer in held.values()), new_bytes=new_bytes,
                        forward_time=forward_time)

    def _current_module_name(self):
        if not self._modules:
            return None
        module = self._modules[-1]
        return self._module_names.get(id(module), f"<{type(module).__name__}>")  # not a registered child

    # Reading the results.

    @property
    def forward_time(self):
        return sum(_zero_if_nan(row.forward_time) for row in self.rows)

    @property
    def backward_time(self):
        return sum(_zero_if_nan(row.backward_time) for row in self.rows)

    def top(self, key, count=5):
        """The `count` rows with the largest `key` ('time', 'new_bytes', ...), largest first."""
        return sorted(self.rows, key=lambda row: getattr(row, key), reverse=True)[:count]

    def report(self):
        """The rows as a table, then the totals and the top 5 ops by time and by memory."""
        header = ("#", "op", "module", "output shape", "grad norm", "grad/weight", "keeps", "adds",
                  "fwd ms", "bwd ms")
        body = [(str(index), row.op, _module_text(row.module), _shape_text(row.output_shape),
                 _number(row.grad_norm), _number(row.grad_weight_ratio), _bytes(row.saved_bytes),
                 _bytes(row.new_bytes), _ms(row.forward_time), _ms(row.backward_time))
                for index, row in enumerate(self.rows)]
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
        left = {1, 2, 3}  # text columns

        def line(cells):
            return "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [f"Backward trace: {len(self.rows)} functions, in the order the backward ran them",
                 line(header), "-" * len(line(header))]
        lines += [line(cells) for cells in body]
        ratio = self.activation_bytes / self.parameter_bytes if self.parameter_bytes else math.inf
        lines += [
            "",
            f"Kept for backward (activation memory): {_bytes(self.activation_bytes)} by "
            f"{self.functions_recorded} functions; parameters: {_bytes(self.parameter_bytes)} "
            f"(activations / parameters = {ratio:.2f})",
            f"Time in the ops: forward {_ms(self.forward_time)} ms, backward {_ms(self.backward_time)} ms",
            "Top 5 ops by time (forward + backward):",
        ]
        lines += self._top_lines("time", lambda row: f"{_ms(row.time)} ms")
        lines.append("Top 5 ops by memory (what they add to the memory kept for backward):")
        lines += self._top_lines("new_bytes", lambda row: _bytes(row.new_bytes))
        return "\n".join(lines)

    def _top_lines(self, key, value_text):
        cells = [(f"#{self.rows.index(row)}", row.op, _module_text(row.module), value_text(row))
                 for row in self.top(key)]
        widths = [max((len(line[i]) for line in cells), default=0) for i in range(4)]
        return ["  " + "  ".join(cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in
                                 enumerate(zip(line, widths))) for line in cells]

    __str__ = report

    def to_csv(self, path):
        """One line per row (times in seconds, sizes in bytes); the parameters' ratios as name=ratio."""
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["index", "op", "module", "output_shape", "grad_norm", "grad_weight_ratio",
                             "saved_bytes", "new_bytes", "forward_time_s", "backward_time_s", "parameter_ratios"])
            for index, row in enumerate(self.rows):
                writer.writerow([index, row.op, "" if row.module is None else row.module,
                                 _shape_text(row.output_shape), row.grad_norm, row.grad_weight_ratio,
                                 row.saved_bytes, row.new_bytes, row.forward_time, row.backward_time,
                                 " ".join(f"{name}={ratio:.6g}" for name, ratio in row.parameter_ratios.items())])


def trace():
    """Record the Functions that run inside the `with` block: `with tinycnn.trace() as t: ...`."""
    return Trace()


def _buffer_of(array):
    """The array that owns the memory `array` lives in (itself, or the base of a view)."""
    while isinstance(getattr(array, "base", None), type(array)):
        array = array.base
    return array


def _arrays_in(values):
    """The arrays among `values` and inside the tuples and lists among them (save_for_backward)."""
    for value in values:
        if isinstance(value, (tuple, list)):
            yield from (item for item in value if _is_array(item))
        elif _is_array(value):
            yield value


def _is_array(value):
    return isinstance(value, (numpy.ndarray, backend.cupy_ndarray))


def _reference(buffer):
    # A weak reference, so the trace never keeps a freed graph's arrays alive and a recycled id
    # is recognised as a new buffer; a strong one for an array type without weak references.
    try:
        return weakref.ref(buffer)
    except TypeError:
        return lambda: buffer


def _is_known(table, buffer):
    reference = table.get(id(buffer))
    return reference is not None and reference() is buffer


def _norm(array):
    xp = backend.get_array_module(array)
    return float(xp.linalg.norm(array.ravel()))


def _zero_if_nan(value):
    return 0.0 if math.isnan(value) else value


def _module_text(module):
    return "-" if module is None else module or "(outermost)"


def _shape_text(shape):
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_shape_text(s) for s in shape)
    return "x".join(str(d) for d in shape) or "scalar"


def _number(value):
    return "" if math.isnan(value) else f"{value:.3g}"


def _ms(seconds):
    return "" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def _bytes(count):
    if count < 1024:
        return f"{count} B"
    if count < 1024 ** 2:
        return f"{count / 1024:.1f} KiB"
    if count < 1024 ** 3:
        return f"{count / 1024 ** 2:.1f} MiB"
    return f"{count / 1024 ** 3:.2f} GiB"


def trace_command(args):
    """`tinycnn trace MODEL [--batch-size N] [--input C,H,W] [--csv FILE]`: one training step of the
    network (random images, random labels, cross-entropy) traced, and the trace printed."""
    # Imported here: the command needs the model zoo and the training loss, the trace API does not.
    import tinycnn
    from tinycnn import models
    from tinycnn import train as training
    from tinycnn.errors import UserError

    try:
        default_shape = models.default_input_shape(args.model)
    except ValueError as error:  # the only ValueError it raises: an unknown name, with close ones
        raise UserError(str(error)) from None
    shape = args.input or default_shape
    kwargs = {"in_channels": shape[0]} if shape[0] != default_shape[0] else {}
    tinycnn.manual_seed(args.seed)
    model = models.create(args.model, **kwargs).train()
    rng = numpy.random.default_rng(args.seed)
    x = tinycnn.tensor(rng.standard_normal((args.batch_size,) + tuple(shape)).astype(numpy.float32))
    try:
        # A first step untraced, so the times below leave out loading or compiling the Numba kernels.
        loss, _ = training.training_loss(model, model(x), tinycnn.tensor(numpy.zeros(args.batch_size, dtype=int)))
        loss.backward()
        model.zero_grad()
        with trace() as recorded:
            outputs = model(x)
            logits, _ = training.split_outputs(outputs)
            labels = tinycnn.tensor(rng.integers(0, logits.shape[1], size=args.batch_size))
            loss, _ = training.training_loss(model, outputs, labels)
            loss.backward()
    except ValueError as error:
        if args.input is None and args.batch_size > 1:
            raise  # the network fails on its own input: a bug
        raise UserError(f"trace {args.model} at {args.batch_size}x{'x'.join(map(str, shape))}: {error}") from None
    print(f"{args.model} on {args.batch_size}x{'x'.join(map(str, shape))} random images and labels, "
          f"cross-entropy loss {loss.item():.4f}")
    print(recorded)
    if args.csv:
        recorded.to_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0
