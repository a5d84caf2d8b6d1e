"""Explain one op of tinycnn.functional: its formulas, its backward, what it keeps, where its code
is, and a live check of its gradient.

    >>> text = tinycnn.explain("max_pool2d")          # prints, and returns the text
    $ tinycnn explain conv2d --shape 2,3,8,8 --seed 1

The words are not here. Each Function in tinycnn/functional/*.py carries an `explanation` (the
forward formula, the backward derived step by step, what forward keeps, the reference kernels it
calls) and `examples` (one small call per public name), so the text sits beside the code it
describes. This module runs the example in float64 and measures: the arrays the Function instance
holds after forward, the file:line of its code (by inspect), and the analytic gradient against
central differences, with tinycnn.gradcheck's weighted-sum loss.
"""
import argparse
import difflib
import inspect
import io
import os
import sys

import numpy

from tinycnn import config, random
from tinycnn.autograd import Tensor
from tinycnn.errors import UserError
from tinycnn.gradcheck import numeric_gradient, weighted_loss
from tinycnn.kernels import reference

# Central differences in float64, with gradcheck's defaults (torch.autograd.gradcheck's too).
EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3
# The live check runs forward twice per element of every input that gets a gradient; past this
# many elements it would take long enough to look hung.
MAX_CHECKED_ELEMENTS = 20_000
ELEMENTS_SHOWN = 3  # rows of the side-by-side table per input: the worst element and two others


class UnknownOpError(ValueError):
    """explain was asked for a name that is not a public function of tinycnn.functional."""


class Explanation:
    """What tinycnn.explain prints about a Function, declared as a class field beside its code.

    forward: the formula; backward: the derivation, step by step; saved: what forward keeps for
    backward and why; kernels: names of the functions in kernels/reference.py it calls (none for
    an op computed in its own file).
    """

    def __init__(self, forward, backward, saved, kernels=()):
        self.forward, self.backward, self.saved = forward.strip("\n"), backward.strip("\n"), saved.strip("\n")
        self.kernels = tuple(kernels)


class Example:
    """A small call of one public function, declared beside its Function, that explain runs.

    shape: the default shape of the main (first) input, which --shape replaces.
    inputs(shape, rng): the other positional inputs, made to fit a main input of that shape; each
    is a shape (a random float64 Tensor whose gradient is checked), an array (a constant that
    gets none: labels) or None (an absent optional input).
    options: keyword arguments (hyper-parameters: kernel size, stride, ...).
    as_list: the tensors go in as one list, as in cat([x, y]).
    """

    def __init__(self, shape, inputs=None, options=None, as_list=False):
        self.shape = tuple(shape)
        self.inputs = inputs or (lambda shape, rng: [])
        self.options = dict(options or {})
        self.as_list = as_list


def public_functions():
    """The names of tinycnn.functional's public functions, sorted."""
    # Imported here: the Functions in tinycnn.functional import Example and Explanation from this
    # module while tinycnn.functional is still loading.
    from tinycnn import functional
    return sorted(name for name, value in vars(functional).items()
                  if inspect.isfunction(value) and not name.startswith("_"))


def find(name):
    """(public function, Function class, Example) for an op name; UnknownOpError (a ValueError)
    naming the closest names for an unknown one."""
    from tinycnn import functional
    names = public_functions()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"the ops are {', '.join(names)}"
        raise UnknownOpError(f"explain: tinycnn.functional has no op {name!r}; {hint}")
    function = getattr(functional, name)
    # The Function class lives in the public function's own file and lists the name in `examples`.
    module = sys.modules[function.__module__]
    for value in vars(module).values():
        if inspect.isclass(value) and name in getattr(value, "examples", {}):
            return function, value, value.examples[name]
    raise LookupError(f"explain: no Function in {module.__name__} declares an example for {name!r}; "
                      "add `examples = {...}` and `explanation = Explanation(...)` to its class")


def parse_shape(text):
    """'2,3,8,8' -> (2, 3, 8, 8): an argparse type for --shape."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, e.g. 2,3,8,8; got {text!r}")
    return shape


def explain(name, shape=None, seed=0, file=None):
    """Print the explanation of tinycnn.functional.`name` to `file` (default stdout) and return it.

    shape: the main input's shape (default: the op's example's); seed: the random example's seed.
    """
    function, cls, example = find(name)
    shape = _checked_shape(name, example, shape)
    rng = numpy.random.default_rng(seed)
    inputs = [Tensor(rng.standard_normal(shape), requires_grad=True)]
    for item in example.inputs(shape, rng):
        if item is None or isinstance(item, numpy.ndarray):
            inputs.append(None if item is None else Tensor(item))
        else:
            inputs.append(Tensor(rng.standard_normal(tuple(item)), requires_grad=True))
    input_names = _input_names(function, example, len(inputs))
    checked = [i for i, x in enumerate(inputs) if x is not None and x.requires_grad]
    if sum(inputs[i].size for i in checked) > MAX_CHECKED_ELEMENTS:
        raise ValueError(f"explain {name}: the live check perturbs every input element twice; shape {shape} gives "
                         f"more than {MAX_CHECKED_ELEMENTS:,} of them. Use a smaller --shape")

    # Random ops (dropout) draw from tinycnn's generator: every call starts from the same state,
    # so all the finite-difference calls see one mask; the caller's state is restored at the end.
    rng_state = random.get_rng_state()

    def call(*tensors):
        random.set_rng_state(rng_state)
        if example.as_list:
            return function(list(tensors), **example.options)
        return function(*tensors, **example.options)

    try:
        # Inside the caller's no_grad() or shape_only there would be no graph or no numbers.
        with config.using(enable_backprop=True, shape_only=False):
            outputs = call(*inputs)
            outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
            op = outputs[0].creator
            if not isinstance(op, cls):
                raise RuntimeError(f"explain {name}: the example's output was made by {type(op).__name__}, "
                                   f"not by {cls.__name__}, the class that declares the example")
            saved = _saved_arrays(op, inputs, input_names, outputs)  # before backward releases them
            gradients = _compare_gradients(call, inputs, outputs, checked, seed)
    finally:
        random.set_rng_state(rng_state)

    text = _format(name, function, cls, example, inputs, input_names, outputs, saved, gradients, seed)
    print(text, file=file if file is not None else sys.stdout)
    return text


def explain_command(args):
    """`tinycnn explain OP [--shape ...] [--seed S]`: an unknown op, or a --shape the op refuses,
    is the user's to fix (one line); the op failing on its own example is a bug (a traceback)."""
    try:
        find(args.op)
    except UnknownOpError as error:
        raise UserError(str(error)) from None
    try:
        explain(args.op, args.shape, args.seed)
    except ValueError as error:
        if args.shape is None:
            raise
        message = str(error)
        if not message.startswith("explain"):  # the op's own check: say which command and shape
            message = f"explain {args.op} --shape {','.join(map(str, args.shape))}: {message}"
        raise UserError(message) from None
    return 0


def _checked_shape(name, example, shape):
    if shape is None:
        return example.shape
    shape = tuple(shape)
    if not all(isinstance(s, (int, numpy.integer)) and s >= 1 for s in shape):
        raise ValueError(f"explain {name}: expected a shape of positive integers, got {shape}")
    if len(shape) != len(example.shape):
        raise ValueError(f"explain {name}: its example takes a {len(example.shape)}-D main input like "
                         f"{','.join(map(str, example.shape))}, got shape {','.join(map(str, shape))}")
    return tuple(int(s) for s in shape)


def _input_names(function, example, count):
    """Each input's name, from the public function's signature: input, weight, bias, ..."""
    parameters = list(inspect.signature(function).parameters.values())
    if example.as_list or parameters[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return [f"{parameters[0].name}[{i}]" for i in range(count)]
    return [p.name for p in parameters[:count]]


def _is_array(value):
    return hasattr(value, "nbytes") and hasattr(value, "dtype") and hasattr(value, "shape")


def _saved_arrays(op, inputs, input_names, outputs):
    """[(attribute, array or None, what it is)] for everything the Function instance holds after
    forward: its saved_arrays and any array attribute (argmax, mask, ...). The graph's links
    (`inputs`, `outputs`) are not counted: every Function has them."""
    held = []
    for key, value in vars(op).items():
        if key in ("inputs", "outputs"):
            continue
        if key == "saved_arrays":
            held.extend((f"saved_arrays[{i}]", a) for i, a in enumerate(value))
        elif _is_array(value):
            held.append((key, value))
        elif isinstance(value, (tuple, list)) and any(_is_array(a) for a in value):
            held.extend((f"{key}[{i}]", a) for i, a in enumerate(value) if _is_array(a))
    described = []
    for key, array in held:
        what = ""
        if array is not None and isinstance(array, numpy.ndarray):
            for x, x_name in zip(inputs, input_names):
                if x is None:
                    continue
                if array is x.data:
                    what = f"the input `{x_name}` itself (no copy)"
                elif numpy.shares_memory(array, x.data):
                    what = f"a view of the input `{x_name}` (no copy)"
            for y in outputs:
                if array is y.data:
                    what = "the output itself (no copy)"
                elif not what and numpy.shares_memory(array, y.data):
                    what = "a view of the output (no copy)"
        described.append((key, array, what or ("None" if array is None else "new memory")))
    return described


def _compare_gradients(call, inputs, outputs, checked, seed):
    """{input index: (analytic, numeric)}: the gradients of L = sum_k w_k y_k (gradcheck's loss,
    fixed random weights w) from backward and by central differences in float64."""
    weight_rng = numpy.random.default_rng(seed)
    weights = [weight_rng.standard_normal(y.shape) for y in outputs]
    weighted_loss(outputs, weights).backward()
    results = {}
    for i in checked:
        x = inputs[i]
        analytic = x.grad if x.grad is not None else numpy.zeros(x.shape)
        results[i] = (analytic, numeric_gradient(call, inputs, i, weights, EPS))
    return results


def _where(obj):
    """'path:line' of a function's `def`, the path relative to the directory above the package."""
    path = inspect.getsourcefile(obj)
    line = inspect.getsourcelines(obj)[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["tinycnn"].__file__)))
    relative = os.path.relpath(path, root)
    return f"{path if relative.startswith('..') else relative}:{line}"


def _indent(text, prefix="  "):
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def _describe_call(name, example, inputs, input_names):
    parts = []
    for x, x_name in zip(inputs, input_names):
        if x is None:
            parts.append(f"{x_name}=None")
        else:
            constant = "" if x.requires_grad else f" {x.dtype}, constant"
            parts.append(f"{x_name} {x.shape}{constant}")
    arguments = f"[{', '.join(parts)}]" if example.as_list else ", ".join(parts)
    options = "".join(f", {key}={value!r}" for key, value in example.options.items())
    return f"{name}({arguments}{options})"


def _format(name, function, cls, example, inputs, input_names, outputs, saved, gradients, seed):
    explanation = cls.explanation
    out = io.StringIO()
    write = lambda line="": print(line, file=out)  # noqa: E731
    call = _describe_call(name, example, inputs, input_names)
    write(f"{name}: tinycnn.functional.{name}, recorded in the graph as the Function {cls.__name__}")
    write(f"example: {call} -> output {outputs[0].shape}")
    write()
    write("forward")
    write(_indent(explanation.forward))
    write()
    write("backward, step by step (gy = dL/dy arrives from the layer above)")
    write(_indent(explanation.backward))
    write()
    write("kept for backward")
    write(_indent(explanation.saved))
    write(f"  measured on the example, the arrays {cls.__name__} holds after forward:")
    total = new = 0
    counted = set()
    for key, array, what in saved:
        if array is None:
            write(f"    {key:<18} None")
            continue
        write(f"    {key:<18} {str(tuple(array.shape)):<16} {str(array.dtype):<8} {array.nbytes:>9,} B  {what}")
        if id(array) not in counted:
            counted.add(id(array))
            total += array.nbytes
            new += array.nbytes if what == "new memory" else 0
    if not saved:
        write("    no arrays")
    if total > new:
        write(f"  total {total:,} bytes, of which {new:,} new memory (the rest keeps the input or output arrays alive)")
    else:
        write(f"  total {total:,} bytes")
    write()
    write("where the code is")
    rows = [(f"tinycnn.functional.{name}", _where(function)),
            (f"{cls.__name__}.forward", _where(cls.forward)),
            (f"{cls.__name__}.backward", _where(cls.backward))]
    rows += [(f"reference kernel {kernel}", _where(getattr(reference, kernel))) for kernel in explanation.kernels]
    for label, where in rows:
        write(f"  {label:<40} {where}")
    write()
    write(f"live check (float64, seed {seed}, kernels {config.kernels!r}): L = sum(w * y) with fixed random w, so "
          "backward starts from gy = w;")
    write(f"  numeric = (L(x + eps) - L(x - eps)) / (2 eps) for each element, eps = {EPS:g}")
    write(f"  {'input':<12} {'element':<16} {'analytic':>18} {'numeric':>18} {'|difference|':>13}")
    worst_error, elements, all_agree = 0.0, 0, True
    for i, (analytic, numeric) in gradients.items():
        difference = numpy.abs(analytic - numeric)
        worst = numpy.unravel_index(numpy.argmax(difference), difference.shape)
        others = numpy.random.default_rng(seed + 1 + i).permutation(difference.size)[:ELEMENTS_SHOWN]
        shown = [worst] + [numpy.unravel_index(k, difference.shape) for k in others
                           if numpy.unravel_index(k, difference.shape) != worst][:ELEMENTS_SHOWN - 1]
        for index in shown:
            element = str(tuple(int(k) for k in index))
            write(f"  {input_names[i]:<12} {element:<16} {analytic[index]:>18.10g} {numeric[index]:>18.10g} "
                  f"{difference[index]:>13.2e}")
        worst_error = max(worst_error, float(difference.max()))
        elements += difference.size
        all_agree &= bool((difference <= ATOL + RTOL * numpy.abs(numeric)).all())
    verdict = ("they agree within gradcheck's tolerance" if all_agree else
               "THEY DISAGREE: the backward does not match the forward")
    write(f"  max error |analytic - numeric| = {worst_error:.2e} over {elements:,} elements: {verdict} "
          f"({ATOL:g} + {RTOL:g} |numeric|)")
    return out.getvalue().rstrip("\n")
