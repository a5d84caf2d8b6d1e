"""A layer-by-layer table of a network: output shape, parameters and multiply-adds of every layer.

    >>> import tinycnn, tinycnn.models
    >>> info = tinycnn.summary(tinycnn.models.create("vgg16"), (3, 224, 224))   # prints the table
    >>> info.total_params, info.total_macs
    (138357544, 15470264320)

It runs the network once on zeros with a forward hook on every module. By default
(`shapes_only=True`) the run is made under `tinycnn.config.using(shape_only=True)`: convolutions and
matrix products return zeros of the right shape without computing anything, so a 224x224 VGG-16 is
summarised in about a second. The network is put in eval mode for the run (no dropout, no update
of BatchNorm's running statistics) and its mode is restored afterwards. Modules the run does not
reach (GoogLeNet's auxiliary classifiers in eval mode) get no row; the table names them and their
parameters in a line "not run for this input: aux1, aux2 - N params", so rows and totals agree.

Multiply-adds (MACs) are counted as torchvision and the papers count them: one per weight per
output position of each convolution and fully connected layer, biases, pooling, normalisation and
activations excluded. A layer of another type can count its own by defining
`multiply_adds(inputs, output)` (shapes in, an int out).
"""
from collections import namedtuple

import numpy

from tinycnn import config
from tinycnn.autograd import Tensor
from tinycnn.nn.conv import Conv2d
from tinycnn.nn.linear import Linear

__all__ = ["ModelSummary", "SummaryRow", "count_multiply_adds", "summary"]

# One call of one layer. `params` counts the layer's own parameters (a shared layer called twice
# shows them on both rows; the totals count them once); `macs` is for the whole batch.
SummaryRow = namedtuple("SummaryRow", ["name", "type", "output_shape", "params", "macs"])


class ModelSummary:
    """What summary() returns: the rows, and the totals over the network."""

    def __init__(self, rows, input_shape, output_shape, total_params, trainable_params, total_macs, not_run=(),
                 not_run_params=0):
        self.rows = rows
        # Modules with parameters that this input did not reach (GoogLeNet's auxiliary heads in
        # eval mode): no row, but their parameters are in the totals, so the table names them.
        self.not_run = list(not_run)
        self.not_run_params = not_run_params
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.total_macs = total_macs

    def table(self):
        """The rows and totals as a fixed-width text table."""
        header = ("Layer", "Type", "Output shape", "Params", "Mult-adds")
        body = [(row.name, row.type, _shape_text(row.output_shape), f"{row.params:,}", f"{row.macs:,}")
                for row in self.rows]
        widths = [max(len(line[i]) for line in [header] + body) for i in range(5)]

        def line(cells):
            left = "  ".join(cell.ljust(width) for cell, width in zip(cells[:3], widths[:3]))
            right = "  ".join(cell.rjust(width) for cell, width in zip(cells[3:], widths[3:]))
            return f"{left}  {right}"

        rule = "-" * len(line(header))
        skipped = []
        if self.not_run:
            skipped = [f"not run for this input: {', '.join(self.not_run)} - {self.not_run_params:,} params"]
        totals = [
            f"Input shape: {_shape_text(self.input_shape)}   Output shape: {_shape_text(self.output_shape)}",
            f"Total params: {self.total_params:,}   Trainable params: {self.trainable_params:,}   "
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"Total mult-adds: {self.total_macs:,} ({self.total_macs / 1e9:.3f} G)",
        ]
        return "\n".join([rule, line(header), rule] + [line(cells) for cells in body] + skipped + [rule] + totals)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (f"ModelSummary({len(self.rows)} rows, total_params={self.total_params:,}, "
                f"total_macs={self.total_macs:,})")


def _shape_text(shape):
    if shape and isinstance(shape[0], tuple):  # several outputs
        return ", ".join(_shape_text(s) for s in shape)
    return "x".join(str(s) for s in shape)


def _output_shapes(output):
    """The shape of a Tensor output, or a tuple of shapes for a tuple (or named tuple) of outputs."""
    if isinstance(output, Tensor):
        return output.shape
    if isinstance(output, (tuple, list)):
        return tuple(_output_shapes(o) for o in output if o is not None)
    return ()


def count_multiply_adds(module, input_shapes, output_shape):
    """Multiply-adds of one call: conv = N*OC*OH*OW * (C/groups)*KH*KW, linear = outputs * in_features."""
    if hasattr(module, "multiply_adds"):
        return int(module.multiply_adds(input_shapes, output_shape))
    if isinstance(module, Conv2d):
        KH, KW = module.kernel_size
        return int(numpy.prod(output_shape)) * (module.in_channels // module.groups) * KH * KW
    if isinstance(module, Linear):
        return int(numpy.prod(output_shape)) * module.in_features
    return 0


def summary(model, input_shape, shapes_only=True, print_table=True, batch_size=1, dtype=numpy.float32,
            leaves_only=True):
    """Run `model` once on zeros of `input_shape` and tabulate every layer.

    input_shape: (C, H, W) (a batch of `batch_size` is added) or (N, C, H, W).
    shapes_only: skip the arithmetic of convolutions and matrix products (see the module docstring);
        False runs the real forward pass.
    leaves_only: one row per layer without sub-modules (conv, bn, ...); False adds a row for every
        module, blocks and containers included, each after its sub-modules (a hook fires when
        forward returns); a container's row shows its parameters, and its MACs only on its leaves,
        so the totals are the leaves' sums.
    Returns a ModelSummary (rows, total_params, trainable_params, total_macs, output_shape); prints
    its table when print_table is True.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 3:
        input_shape = (batch_size,) + input_shape
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(f"summary: expected input_shape (C, H, W) or (N, C, H, W) of positive sizes, got "
                         f"{input_shape}")
    names = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name or type(model).__name__)
    rows = []  # (row, is_leaf) in call order: a hook fires when its module's forward returns
    ran = set()  # id of every module whose forward was called

    def hook(module, inputs, output):
        is_leaf = not any(child is not None for child in module._modules.values())
        input_shapes = tuple(x.shape for x in inputs if isinstance(x, Tensor))
        shape = _output_shapes(output)
        macs = count_multiply_adds(module, input_shapes, shape) if is_leaf else 0
        params = sum(p.size for p in module.parameters(recurse=not is_leaf))
        rows.append((SummaryRow(names[id(module)], type(module).__name__, shape, params, macs), is_leaf))
        ran.add(id(module))

    handles = [module.register_forward_hook(hook) for module in model.modules() if module is not model]
    was_training = model.training
    x = Tensor(numpy.zeros(input_shape, dtype=dtype))
    try:
        model.eval()
        with config.no_grad(), config.using(shape_only=bool(shapes_only)):
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    leaf_rows = [row for row, is_leaf in rows if is_leaf]
    not_run, not_run_params = [], 0
    for name, module in model.named_modules():
        outside = module is not model and id(module) not in ran
        if outside and not any(name.startswith(f"{above}.") for above in not_run):
            params = sum(p.size for p in module.parameters())
            if params:
                not_run.append(name)
                not_run_params += params
    result = ModelSummary(leaf_rows if leaves_only else [row for row, _ in rows], input_shape,
                          _output_shapes(output), model.num_parameters(), model.num_parameters(trainable_only=True),
                          sum(row.macs for row in leaf_rows), not_run, not_run_params)
    if print_table:
        print(result.table())
    return result


# The package does `from tinycnn.summary import summary`, so the attribute `tinycnn.summary` is this
# function rather than the module; the alias keeps `tinycnn.summary.summary(...)` working too.
summary.summary = summary
