"""Export a network to ONNX: `tinycnn.onnx.export(model, example_input, "net.onnx")`, or
`tinycnn export MODEL --onnx FILE`.

How it works. The model runs once, in eval mode, on a copy of the example input marked
`requires_grad`, so the autograd engine records every op: each Function keeps its `inputs` (leaf
Tensors, or the GraphValues of the others: shape and dtype) and (weak references to) its
`outputs`; the export also holds every Tensor the forward made (_TensorKeeper), for the values of
the constants. The exporter walks that graph in topological order (a
Function's generation is larger than those of the Functions that made its inputs) and writes each
Function as one or a few ONNX nodes with `onnx.helper`. Parameters and buffers become initializers
named by their state_dict keys. Ops that do not depend on the input (LeNet-5's C3 weight, spread
from its 16 small convolutions) are constants: the value the trace computed is stored as one
initializer, as PyTorch's exporter folds constants.

The graph has the example input's shape (batch size included), as torch.onnx.export without
dynamic axes: reshapes are recorded with the sizes they had. The `onnx` package is an optional
extra (`pip install 'tinycnn[onnx]'`); it is imported on the first export.

An op with no ONNX form here (dropout in training mode, BatchNorm with batch statistics, an
indexing ONNX cannot express) raises ExportError naming it.
"""
import os

import numpy

import tinycnn
from tinycnn import arithmetic, backend, config
from tinycnn import autograd
from tinycnn.autograd import Tensor, graph_value
from tinycnn.errors import UserError
from tinycnn.functional import activation, basic, conv, normalization, pooling
# The package's `dropout` attribute is the function: the module's class is imported by name.
from tinycnn.functional.dropout import Dropout
from tinycnn.nn.module import BackwardHookFunction

__all__ = ["ExportError", "export", "to_onnx"]

# The opsets whose operator definitions this exporter writes: 13 made Softmax act on one axis and
# ReduceSum take its axes as an input; 18 moved ReduceMax's axes to an input as well.
SUPPORTED_OPSETS = range(13, 18)
# The IR version that goes with each opset (onnx.helper.VERSION_TABLE), so older runtimes load the file.
IR_VERSIONS = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8}


class ExportError(UserError):
    """The network holds an op (or an op's setting) that has no ONNX form here."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("tinycnn.onnx needs the onnx package: pip install 'tinycnn[onnx]'") from None
    return onnx


class GraphBuilder:
    """Collects ONNX nodes and initializers, and names every tensor of the traced graph once."""

    def __init__(self, onnx, parameter_names, buffer_names):
        self.onnx, self.helper = onnx, onnx.helper
        # The model is built in place: a VGG's 550 MB of weights are copied into it once, where
        # helper.make_graph and make_model would copy them twice more.
        self.proto = onnx.ModelProto()
        self.nodes, self.initializers = [], self.proto.graph.initializer
        self.names = {}  # id(Tensor) -> its name in the ONNX graph
        self.parameter_names = parameter_names  # id(Parameter) -> state_dict key
        self.buffer_names = buffer_names  # id(array) -> state_dict key
        self.used = set()
        self.counter = 0

    def fresh(self, hint):
        """A new, unused tensor name such as 'conv_7'."""
        self.counter += 1
        name = f"{hint}_{self.counter}"
        self.used.add(name)
        return name

    def initializer(self, array, name):
        # On the host (a model on the GPU has CuPy arrays); not ascontiguousarray: it makes a 0-d scalar 1-d.
        array = numpy.asarray(backend.to_cpu(array), order="C")
        if name in self.used:
            name = self.fresh(name)
        self.used.add(name)
        tensor = self.initializers.add()  # numpy_helper.from_array's fields, written in place
        tensor.name = name
        tensor.data_type = _onnx_dtype(self.onnx, array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()  # ONNX stores little-endian
        return name

    def constant(self, values, dtype):
        """An initializer holding `values` (shapes, axes, scalars): name it for the node that reads it."""
        return self.initializer(numpy.asarray(values, dtype=dtype), "constant")

    def name(self, tensor):
        """The name of an input tensor: known already, or a constant (a parameter, a buffer, or a
        value that does not depend on the model's input) stored as an initializer now."""
        if tensor is None:
            return ""  # ONNX's name for an absent optional input
        key = id(tensor)
        if key not in self.names:
            # A constant made by an op (not a leaf) is read from its Tensor, which _TensorKeeper holds.
            data = tensor.data if tensor.is_leaf else tensor.tensor_ref().data
            name = self.parameter_names.get(key) or self.buffer_names.get(id(data)) or "constant"
            self.names[key] = self.initializer(data, name)
        return self.names[key]

    def array_name(self, array, fallback, dtype):
        """An initializer for a state array such as BatchNorm's running mean, named by its buffer key."""
        return self.initializer(backend.to_cpu(array).astype(dtype), self.buffer_names.get(id(array), fallback))

    def output(self, tensor, hint):
        """The name of an output tensor of the node being written."""
        if id(tensor) not in self.names:
            self.names[id(tensor)] = self.fresh(hint)
        return self.names[id(tensor)]

    def node(self, op_type, inputs, outputs, **attributes):
        self.nodes.append(self.helper.make_node(op_type, list(inputs), list(outputs),
                                                name=f"{op_type}_{len(self.nodes)}", **attributes))


def _onnx_dtype(onnx, dtype):
    return onnx.helper.np_dtype_to_tensor_dtype(numpy.dtype(dtype))


# One writer per Function type: writer(builder, function, inputs, outputs), with the Function's
# inputs (leaf Tensors or GraphValues, None for an absent bias) and output GraphValues.

def _conv2d(b, f, inputs, outputs):
    x, W, bias = inputs
    KH, KW = W.shape[2:]
    names = [b.name(x), b.name(W)] + ([b.name(bias)] if bias is not None else [])
    # ONNX lists pads as (begin of each spatial axis, then end of each): top, left, bottom, right.
    b.node("Conv", names, [b.output(outputs[0], "conv")], kernel_shape=[KH, KW], strides=[f.SH, f.SW],
           pads=[f.PH, f.PW, f.PH, f.PW], dilations=[f.DH, f.DW], group=f.groups)


def _pad(b, f, inputs, outputs):
    (x,) = inputs
    # f.amounts: (before, after) per axis of x, from forward. ONNX wants all befores, then all afters.
    pads = [before for before, _ in f.amounts] + [after for _, after in f.amounts]
    value = b.constant(f.value, x.dtype)
    b.node("Pad", [b.name(x), b.constant(pads, numpy.int64), value], [b.output(outputs[0], "pad")], mode="constant")


def _ceil_mode(f, x, y, kernel, dilation):
    """ONNX's ceil_mode (0 or 1) that gives y's size from x's.

    PyTorch's ceil_mode drops a last window that would start in the right padding; opset 17's
    shape inference does not, so where that rule fires floor mode gives the same windows."""
    sizes = []
    for size, out, K, S, P, D in zip(x.shape[2:], y.shape[2:], kernel, (f.SH, f.SW), (f.PH, f.PW), dilation):
        span = size + 2 * P - D * (K - 1) - 1
        floor, ceil = span // S + 1, -(-span // S) + 1
        sizes.append((out == floor, out == ceil))
    if all(floor for floor, _ in sizes):
        return 0
    if all(ceil for _, ceil in sizes):
        return 1
    raise ExportError(f"{f.name}: output {y.shape[2:]} from input {x.shape[2:]} needs ceil mode along one axis "
                      "and floor mode along the other, which one ONNX pooling node cannot express")


def _max_pool2d(b, f, inputs, outputs):
    (x,), (y,) = inputs, outputs
    ceil = _ceil_mode(f, x, y, (f.KH, f.KW), (f.DH, f.DW))
    b.node("MaxPool", [b.name(x)], [b.output(y, "max_pool")], kernel_shape=[f.KH, f.KW], strides=[f.SH, f.SW],
           pads=[f.PH, f.PW, f.PH, f.PW], dilations=[f.DH, f.DW], ceil_mode=ceil)


def _avg_pool2d(b, f, inputs, outputs):
    (x,), (y,) = inputs, outputs
    ceil = _ceil_mode(f, x, y, (f.KH, f.KW), (1, 1))
    b.node("AveragePool", [b.name(x)], [b.output(y, "avg_pool")], kernel_shape=[f.KH, f.KW],
           strides=[f.SH, f.SW], pads=[f.PH, f.PW, f.PH, f.PW], ceil_mode=ceil,
           count_include_pad=int(f.count_include_pad))


def _adaptive_avg_pool2d(b, f, inputs, outputs):
    (x,), (y,) = inputs, outputs
    (H, W), (OH, OW) = x.shape[2:], y.shape[2:]
    if (OH, OW) == (1, 1):
        b.node("GlobalAveragePool", [b.name(x)], [b.output(y, "global_avg_pool")])
    elif H % OH == 0 and W % OW == 0:  # equal bins that tile the input: an ordinary average pool
        b.node("AveragePool", [b.name(x)], [b.output(y, "adaptive_avg_pool")], kernel_shape=[H // OH, W // OW],
               strides=[H // OH, W // OW])
    else:
        # Overlapping bins: y = A_H x A_W^T with forward's averaging matrices (tinycnn.functional.pooling).
        rows = b.fresh("adaptive_avg_pool_rows")
        b.node("MatMul", [b.initializer(f.A_H, "adaptive_avg_pool_A_H"), b.name(x)], [rows])  # N x C x OH x W
        b.node("MatMul", [rows, b.initializer(f.A_W.T, "adaptive_avg_pool_A_W_T")], [b.output(y, "adaptive_avg_pool")])


def _global_avg_pool2d(b, f, inputs, outputs):
    b.node("GlobalAveragePool", [b.name(inputs[0])], [b.output(outputs[0], "global_avg_pool")])


def _batch_norm_relu(b, f, inputs, outputs):
    # BatchNormReLU is training mode's op (batch statistics) alone: export() traces in eval mode,
    # where the zoo's blocks call BatchNorm and ReLU; a direct call of F.batch_norm_relu says so.
    raise ExportError("batch_norm_relu uses the batch's statistics (training mode), which have no ONNX form "
                      "here: export in eval mode, where BatchNorm uses its running statistics")


def _batch_norm(b, f, inputs, outputs):
    x, gamma, beta = inputs
    if f.training:
        raise ExportError("BatchNorm in training mode (batch statistics) has no ONNX form here: export in eval "
                          "mode (export() calls model.eval()) with running statistics")
    C = x.shape[1]
    scale = b.name(gamma) if gamma is not None else b.constant(numpy.ones(C), x.dtype)
    shift = b.name(beta) if beta is not None else b.constant(numpy.zeros(C), x.dtype)
    mean = b.array_name(f.running_mean, "running_mean", x.dtype)
    var = b.array_name(f.running_var, "running_var", x.dtype)
    b.node("BatchNormalization", [b.name(x), scale, shift, mean, var], [b.output(outputs[0], "batch_norm")],
           epsilon=float(f.eps))


def _local_response_norm(b, f, inputs, outputs):
    (x,), (y,) = inputs, outputs
    # f.alpha is the coefficient of each square (alpha / size in PyTorch's convention, alpha in the
    # AlexNet paper's); ONNX's LRN, like PyTorch's, divides its alpha by size.
    if f.size % 2 == 1:
        b.node("LRN", [b.name(x)], [b.output(y, "lrn")], size=f.size, alpha=float(f.alpha * f.size),
               beta=float(f.beta), bias=float(f.k))
        return
    # An even window is [c - size/2, c + size/2 - 1] in PyTorch and tinycnn, but one channel later
    # in ONNX's LRN. Written out instead: the window sum of squares as a (size x 1) convolution
    # over the channel axis of x^2 viewed as N x 1 x C x (H*W).
    N, C = x.shape[:2]
    rest = int(numpy.prod(x.shape[2:]))
    square = b.fresh("lrn_square")
    b.node("Mul", [b.name(x), b.name(x)], [square])
    column = b.fresh("lrn_column")  # N x 1 x C x (H*W)
    b.node("Reshape", [square, b.constant([N, 1, C, rest], numpy.int64)], [column])
    window_sum = b.fresh("lrn_window_sum")
    ones = b.initializer(numpy.ones((1, 1, f.size, 1), dtype=x.dtype), "lrn_window")
    b.node("Conv", [column, ones], [window_sum], kernel_shape=[f.size, 1],
           pads=[f.size // 2, 0, (f.size - 1) // 2, 0])
    summed = b.fresh("lrn_sum")  # back to x's shape
    b.node("Reshape", [window_sum, b.constant(x.shape, numpy.int64)], [summed])
    # y = x * (k + alpha * sum)^(-beta)
    scaled, scale, powered = b.fresh("lrn_alpha_sum"), b.fresh("lrn_scale"), b.fresh("lrn_power")
    b.node("Mul", [summed, b.constant(f.alpha, x.dtype)], [scaled])
    b.node("Add", [scaled, b.constant(f.k, x.dtype)], [scale])
    b.node("Pow", [scale, b.constant(-f.beta, x.dtype)], [powered])
    b.node("Mul", [b.name(x), powered], [b.output(y, "lrn")])


def _linear(b, f, inputs, outputs):
    x, W, bias = inputs
    if x.ndim == 2:  # y = x W^T + b is exactly Gemm with transB
        names = [b.name(x), b.name(W)] + ([b.name(bias)] if bias is not None else [])
        b.node("Gemm", names, [b.output(outputs[0], "linear")], transB=1)
        return
    transposed = b.fresh("linear_weight_T")
    b.node("Transpose", [b.name(W)], [transposed], perm=[1, 0])
    if bias is None:
        b.node("MatMul", [b.name(x), transposed], [b.output(outputs[0], "linear")])
    else:
        product = b.fresh("linear_product")
        b.node("MatMul", [b.name(x), transposed], [product])
        b.node("Add", [product, b.name(bias)], [b.output(outputs[0], "linear")])


def _concat(b, f, inputs, outputs):
    b.node("Concat", [b.name(x) for x in inputs], [b.output(outputs[0], "concat")], axis=f.axis)


def _add_n(b, f, inputs, outputs):
    # ONNX's Sum adds any number of inputs, broadcasting as NumPy: the residual and multi-branch join.
    b.node("Sum", [b.name(x) for x in inputs], [b.output(outputs[0], "add")])


def _reshape_to_output(b, f, inputs, outputs, hint):
    (x,), (y,) = inputs, outputs
    b.node("Reshape", [b.name(x), b.constant(y.shape, numpy.int64)], [b.output(y, hint)])


def _flatten(b, f, inputs, outputs):
    (x,), (y,) = inputs, outputs
    if x.ndim >= 2 and y.ndim == 2 and f.start_dim % x.ndim == 1 and f.end_dim % x.ndim == x.ndim - 1:
        b.node("Flatten", [b.name(x)], [b.output(y, "flatten")], axis=1)  # the usual N x (C*H*W)
    else:
        _reshape_to_output(b, f, inputs, outputs, "flatten")


def _relu(b, f, inputs, outputs):
    b.node("Relu", [b.name(inputs[0])], [b.output(outputs[0], "relu")])


def _leaky_relu(b, f, inputs, outputs):
    b.node("LeakyRelu", [b.name(inputs[0])], [b.output(outputs[0], "leaky_relu")], alpha=float(f.negative_slope))


def _sigmoid(b, f, inputs, outputs):
    b.node("Sigmoid", [b.name(inputs[0])], [b.output(outputs[0], "sigmoid")])


def _tanh(b, f, inputs, outputs):
    b.node("Tanh", [b.name(inputs[0])], [b.output(outputs[0], "tanh")])


def _softmax(b, f, inputs, outputs):
    b.node("Softmax", [b.name(inputs[0])], [b.output(outputs[0], "softmax")], axis=f.dim)


def _log_softmax(b, f, inputs, outputs):
    b.node("LogSoftmax", [b.name(inputs[0])], [b.output(outputs[0], "log_softmax")], axis=f.dim)


def _dropout(b, f, inputs, outputs):
    raise ExportError(f"Dropout in training mode (p={f.p}) has no deterministic ONNX form: export in eval mode, "
                      "where dropout is the identity")


def _add(b, f, inputs, outputs):
    b.node("Add", [b.name(x) for x in inputs], [b.output(outputs[0], "add")])


def _sub(b, f, inputs, outputs):
    b.node("Sub", [b.name(x) for x in inputs], [b.output(outputs[0], "sub")])


def _mul(b, f, inputs, outputs):
    b.node("Mul", [b.name(x) for x in inputs], [b.output(outputs[0], "mul")])


def _div(b, f, inputs, outputs):
    b.node("Div", [b.name(x) for x in inputs], [b.output(outputs[0], "div")])


def _neg(b, f, inputs, outputs):
    b.node("Neg", [b.name(inputs[0])], [b.output(outputs[0], "neg")])


def _pow(b, f, inputs, outputs):
    (x,) = inputs
    b.node("Pow", [b.name(x), b.constant(f.exponent, x.dtype)], [b.output(outputs[0], "pow")])


def _matmul(b, f, inputs, outputs):
    b.node("MatMul", [b.name(x) for x in inputs], [b.output(outputs[0], "matmul")])


def _exp(b, f, inputs, outputs):
    b.node("Exp", [b.name(inputs[0])], [b.output(outputs[0], "exp")])


def _log(b, f, inputs, outputs):
    b.node("Log", [b.name(inputs[0])], [b.output(outputs[0], "log")])


def _cast(b, f, inputs, outputs):
    b.node("Cast", [b.name(inputs[0])], [b.output(outputs[0], "cast")], to=_onnx_dtype(b.onnx, f.dtype))


def _sum(b, f, inputs, outputs):
    (x,) = inputs
    names = [b.name(x)]
    if f.axis is not None:  # no axes input: ReduceSum reduces every axis, as x.sum()
        names.append(b.constant(list(f.axis), numpy.int64))
    b.node("ReduceSum", names, [b.output(outputs[0], "sum")], keepdims=int(f.keepdims))


def _max(b, f, inputs, outputs):
    (x,) = inputs
    axes = {} if f.axis is None else {"axes": list(f.axis)}
    b.node("ReduceMax", [b.name(x)], [b.output(outputs[0], "max")], keepdims=int(f.keepdims), **axes)


def _reshape(b, f, inputs, outputs):
    _reshape_to_output(b, f, inputs, outputs, "reshape")


def _permute(b, f, inputs, outputs):
    (x,) = inputs
    b.node("Transpose", [b.name(x)], [b.output(outputs[0], "transpose")], perm=[a % x.ndim for a in f.axes])


def _getitem(b, f, inputs, outputs):
    """Basic indexing: slices with positive steps (one Slice node) and integers (a Gather each)."""
    (x,), (y,) = inputs, outputs
    index = f.index if isinstance(f.index, tuple) else (f.index,)
    if len(index) > x.ndim or not all(isinstance(i, slice) or numpy.ndim(i) == 0 and
                                      numpy.issubdtype(type(i), numpy.integer) for i in index):
        raise ExportError(f"GetItem: the index {f.index!r} has no ONNX form here (only integers and slices "
                          "with positive steps are exported)")
    starts, ends, axes, steps = [], [], [], []
    for axis, i in enumerate(index):
        if isinstance(i, slice):
            start, stop, step = i.indices(x.shape[axis])
            if step < 0:
                raise ExportError(f"GetItem: the index {f.index!r} has a negative step, not exported here")
            starts.append(start)
            ends.append(stop)
            axes.append(axis)
            steps.append(step)
    name = b.name(x)
    if axes:
        sliced = b.fresh("slice") if any(not isinstance(i, slice) for i in index) else b.output(y, "slice")
        b.node("Slice", [name, b.constant(starts, numpy.int64), b.constant(ends, numpy.int64),
                         b.constant(axes, numpy.int64), b.constant(steps, numpy.int64)], [sliced])
        name = sliced
    integers = [(axis, int(i)) for axis, i in enumerate(index) if not isinstance(i, slice)]
    # Each Gather with a scalar index removes its axis: from the last, so the earlier axes keep their numbers.
    for count, (axis, i) in enumerate(reversed(integers)):
        last = count == len(integers) - 1
        gathered = b.output(y, "select") if last else b.fresh("select")
        b.node("Gather", [name, b.constant(i % x.shape[axis], numpy.int64)], [gathered], axis=axis)
        name = gathered


def _identity(b, f, inputs, outputs):
    for x, y in zip(inputs, outputs):
        if y is not None:
            b.node("Identity", [b.name(x)], [b.output(y, "identity")])


WRITERS = {
    conv.Conv2d: _conv2d,
    conv.Pad: _pad,
    pooling.MaxPool2d: _max_pool2d,
    pooling.AvgPool2d: _avg_pool2d,
    pooling.AdaptiveAvgPool2d: _adaptive_avg_pool2d,
    pooling.GlobalAvgPool2d: _global_avg_pool2d,
    normalization.BatchNorm: _batch_norm,
    normalization.BatchNormReLU: _batch_norm_relu,
    normalization.LocalResponseNorm: _local_response_norm,
    basic.Linear: _linear,
    basic.Concat: _concat,
    basic.AddN: _add_n,
    basic.Flatten: _flatten,
    activation.ReLU: _relu,
    activation.LeakyReLU: _leaky_relu,
    activation.Sigmoid: _sigmoid,
    activation.Tanh: _tanh,
    activation.Softmax: _softmax,
    activation.LogSoftmax: _log_softmax,
    Dropout: _dropout,
    arithmetic.Add: _add,
    arithmetic.Sub: _sub,
    arithmetic.Mul: _mul,
    arithmetic.Div: _div,
    arithmetic.Neg: _neg,
    arithmetic.Pow: _pow,
    arithmetic.MatMul: _matmul,
    arithmetic.Exp: _exp,
    arithmetic.Log: _log,
    arithmetic.Cast: _cast,
    arithmetic.Sum: _sum,
    arithmetic.Max: _max,
    arithmetic.Reshape: _reshape,
    arithmetic.Permute: _permute,
    arithmetic.GetItem: _getitem,
    BackwardHookFunction: _identity,  # a module's full backward hook: the identity forward
}


def _functions_in_order(outputs):
    """Every Function that led to `outputs`, each after the Functions that made its inputs."""
    found, stack, seen = [], [y.creator for y in outputs if y.creator is not None], set()
    while stack:  # iterative: a 1,000-layer network would overflow a recursive walk
        function = stack.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        found.append(function)
        stack.extend(x.creator for x in function.inputs if x is not None and x.creator is not None)
    # A Function's generation is one more than the newest of its inputs' creators: a topological order.
    return sorted(found, key=lambda function: function.generation)


class _TensorKeeper:
    """Installed as autograd.active_trace during the export's forward: it calls each Function and
    module as usual and holds every Tensor made, so that a constant op's value (its array) is still
    there when the exporter writes it (the graph itself keeps no intermediate array)."""

    def __init__(self, outer):
        self.outer = outer  # a `with tinycnn.trace()` around the export, which still records
        self.tensors = []

    def call_function(self, function, inputs):
        outputs = function.apply(*inputs) if self.outer is None else self.outer.call_function(function, inputs)
        self.tensors.append(outputs)
        return outputs

    def call_module(self, module, args, kwargs):
        if self.outer is None:
            return module._call_with_hooks(args, kwargs)
        return self.outer.call_module(module, args, kwargs)


def _trace(model, example_input):
    """Run `model` in eval mode on a copy of the input that requires grad; returns (input, outputs,
    the _TensorKeeper that holds every Tensor made)."""
    data = example_input.data if isinstance(example_input, Tensor) else numpy.asarray(example_input)
    if data.dtype.kind != "f":
        raise ExportError(f"onnx.export: expected a floating-point example input, got dtype {data.dtype}")
    x = Tensor(data.copy(), requires_grad=True)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    keeper = _TensorKeeper(autograd.active_trace)
    autograd.active_trace = keeper
    try:
        with config.using(enable_backprop=True, shape_only=False):
            output = model(x)
    finally:
        autograd.active_trace = keeper.outer
        for module, training in modes:
            module.training = training
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    if not all(isinstance(y, Tensor) for y in outputs):
        raise ExportError(f"onnx.export: expected the model to return a Tensor or a tuple of Tensors, got "
                          f"{type(output).__name__}")
    return x, tuple(outputs), keeper


def to_onnx(model, example_input, opset=17):
    """The onnx.ModelProto of `model`, traced in eval mode on `example_input` (see export)."""
    onnx = _onnx()
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"onnx.export: opset {opset} is not supported; choose one of "
                          f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    x, outputs, keeper = _trace(model, example_input)  # keeper: alive until the graph is written
    outputs = tuple(graph_value(y) for y in outputs)  # as function.inputs hold them
    parameter_names = {id(p): name for name, p in model.named_parameters()}
    buffer_names = {id(array.data if isinstance(array, Tensor) else array): name
                    for name, array in model.named_buffers()}
    builder = GraphBuilder(onnx, parameter_names, buffer_names)
    builder.names[id(x)] = "input"
    builder.used.add("input")
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    for y, name in zip(outputs, output_names):
        if y is not x and y.creator is not None:  # otherwise an Identity node below gives it its name
            builder.names.setdefault(id(y), name)
            builder.used.add(name)

    depends_on_input = {id(x)}
    for function in _functions_in_order(outputs):
        inputs = list(function.inputs)
        if not any(t is not None and id(t) in depends_on_input for t in inputs):
            continue  # a constant: its outputs are stored as initializers where they are used
        results = [ref() for ref in function.outputs]
        depends_on_input.update(id(y) for y in results if y is not None)
        writer = WRITERS.get(type(function))
        if writer is None:
            exported = sorted(cls.__name__ for cls, write in WRITERS.items() if write is not _dropout)
            raise ExportError(f"onnx.export: the op {function.name} has no ONNX form in tinycnn.onnx "
                              f"(exported ops: {', '.join(exported)})")
        writer(builder, function, inputs, results)
    for y, name in zip(outputs, output_names):
        if builder.names.get(id(y)) != name:  # the input itself, or a constant
            builder.node("Identity", [builder.name(y)], [name])

    helper, proto = onnx.helper, builder.proto
    proto.ir_version = IR_VERSIONS[opset]
    proto.producer_name, proto.producer_version = "tinycnn", tinycnn.__version__
    proto.opset_import.append(helper.make_opsetid("", opset))
    proto.graph.name = type(model).__name__
    proto.graph.node.extend(builder.nodes)
    proto.graph.input.append(helper.make_tensor_value_info("input", _onnx_dtype(onnx, x.dtype), list(x.shape)))
    proto.graph.output.extend(helper.make_tensor_value_info(name, _onnx_dtype(onnx, y.dtype), list(y.shape))
                              for y, name in zip(outputs, output_names))
    return proto


def export(model, example_input, path, opset=17):
    """Write `model` as an ONNX file at `path`, as torch.onnx.export, and return the onnx.ModelProto.

    The model is traced in eval mode (auxiliary heads and dropout off; its training flags are
    restored afterwards) on `example_input` (N, C, H, W), whose shape the graph keeps. The file
    passes onnx.checker.check_model(full_check=True) (checked before it is written)."""
    onnx = _onnx()
    proto = to_onnx(model, example_input, opset)
    serialized = proto.SerializeToString()  # once, for the check and the file
    onnx.checker.check_model(serialized, full_check=True)
    with open(path, "wb") as f:
        f.write(serialized)
    return proto


# The input a network trained by `tinycnn train` on each data set takes (C, H, W).
DATASET_INPUTS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _model_and_shape(args):
    """The network to export and its default input (C, H, W), from MODEL and --checkpoint."""
    import tinycnn.models as models
    from tinycnn import checkpoint
    from tinycnn.cli import _model_from_checkpoint, model_input_shape

    shape = model_input_shape(args.model)  # a UserError naming close names for an unknown model
    if args.checkpoint is None:
        return models.create(args.model), shape
    extension = os.path.splitext(args.checkpoint)[1].lower()
    if extension in (".npz", ".pth", ".pt"):  # a state_dict
        model = models.create(args.model)
        if not os.path.isfile(args.checkpoint):
            raise UserError(f"export --checkpoint {args.checkpoint}: no such file")
        try:
            models.load_weights(model, args.checkpoint)
        except (KeyError, ValueError) as error:
            raise UserError(f"export --checkpoint {args.checkpoint} does not fit {args.model}: "
                            f"{error.args[0] if error.args else error}") from None
        return model, shape
    state = checkpoint.load(args.checkpoint)  # a run's last.ckpt; CheckpointError says what is wrong
    settings = state.get("settings") or {}
    if settings.get("model") != args.model:
        raise UserError(f"export --checkpoint {args.checkpoint} is a checkpoint of {settings.get('model')!r}, "
                        f"not of {args.model!r}")
    return _model_from_checkpoint(args.checkpoint, state), DATASET_INPUTS.get(settings.get("dataset"), shape)


def cli_command(args):
    """`tinycnn export MODEL --onnx FILE [--checkpoint CKPT] [--input C,H,W] [--opset N]`."""
    try:
        _onnx()
    except ImportError as error:
        raise UserError(f"export: {error}") from None
    model, shape = _model_and_shape(args)
    shape = tuple(args.input or shape)
    example = numpy.zeros((1,) + shape, dtype=numpy.float32)  # the graph's structure does not depend on values
    try:
        proto = export(model, example, args.onnx, opset=args.opset)
    except ValueError as error:  # an op refused the input shape (ExportError is a UserError: main prints it)
        if args.input is None:
            raise  # the network fails on its own input: a bug
        raise UserError(f"export {args.model} --input {','.join(map(str, shape))}: {error}") from None
    print(f"wrote {args.onnx}: {args.model}, input 1x{'x'.join(map(str, shape))}, {len(proto.graph.node)} nodes, "
          f"opset {args.opset}")
    return 0
