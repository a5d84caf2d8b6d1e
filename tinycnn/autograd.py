"""The reverse-mode autograd engine: Tensor, Function and the backward pass.

A Tensor wraps an array (`.data`, NumPy or CuPy) and remembers the Function that made it
(`.creator`). A Function's `forward` works on arrays; calling the Function on Tensors runs
`forward` and, when any input needs a gradient, links the outputs to it. `Tensor.backward()` walks
that graph from the output back to the leaves, newest function first, calling each `backward(gy)`.

The graph holds the leaves (parameters, data, constants) and, for every other input, a GraphValue:
which Function made it and its shape, not its array. An intermediate array stays in memory only
while the user holds its Tensor or a backward saved it (`save_for_backward`), as in PyTorch.

    >>> x = tinycnn.tensor([1.0, 2.0], requires_grad=True)
    >>> y = (x * x).sum()
    >>> y.backward()
    >>> x.grad            # dy/dx = 2x
    array([2., 4.], dtype=float32)
"""
import heapq
import itertools
import weakref

import numpy

from tinycnn import backend, config

# The `with tinycnn.trace()` in force (tinycnn/trace.py), or None: outside a trace, each Function
# call and each backward step costs one check of this name and nothing else.
active_trace = None

# Set once a hook is registered on a leaf (Tensor.register_hook): until then no backward pays for
# the walk of the graph that tells when each leaf's gradient is complete (run_backward).
leaf_hooks_registered = False

# The memory that recorded graphs keep for their backward: for every array a linked Function saved
# (save_for_backward), the id of the array that owns its memory (a view's base), counted once per
# saving Function while that Function lives and has not been released. An op asked to write in
# place looks here first (tinycnn/functional/_inplace.py): overwriting memory that a backward
# still needs would corrupt its gradient silently. PyTorch catches the same mistake later, at
# backward, with a version counter on every tensor; tinycnn avoids it instead, by writing out of
# place. An owner counted here cannot be freed and its id reused: the saving Function holds it.
_kept_for_backward = {}


def memory_owner(array):
    """The array that owns `array`'s memory: array itself, or the base its view looks into."""
    while getattr(array, "base", None) is not None and hasattr(array.base, "shape"):
        array = array.base
    return array


def kept_for_backward(array):
    """Whether a Function of a recorded graph saved for its backward any array in `array`'s memory
    (the same owner: a view of it, or the array a view of it looks into)."""
    return bool(_kept_for_backward) and id(memory_owner(array)) in _kept_for_backward


def _keep(owner_ids):
    for key in owner_ids:
        _kept_for_backward[key] = _kept_for_backward.get(key, 0) + 1


def _forget(owner_ids):
    for key in owner_ids:
        count = _kept_for_backward.pop(key) - 1
        if count:
            _kept_for_backward[key] = count


class GraphValue:
    """A non-leaf tensor as the graph remembers it: the Function that made it (`creator`), which
    of that Function's outputs it is (`index`), its shape and dtype, and its backward hooks, but not
    its array. The consumers of a tensor hold its GraphValue (strongly: the graph must reach the
    leaves), the Tensor holds it too, and the creator only weakly, so no cycle keeps a graph alive.
    Like a Tensor, it has `creator`, `requires_grad`, `is_leaf`, `shape` and `dtype`, so code that
    walks the graph reads both the same way."""

    __slots__ = ("creator", "index", "shape", "dtype", "tensor_ref", "hooks", "__weakref__")
    requires_grad = True
    is_leaf = False

    def __init__(self, creator, index, tensor):
        self.creator, self.index = creator, index
        self.shape, self.dtype = tuple(tensor.data.shape), tensor.data.dtype
        self.tensor_ref = weakref.ref(tensor)  # for retain_grad(); None once the user dropped it
        self.hooks = None  # register_hook's hooks of a non-leaf tensor, kept even if the Tensor is dropped

    @property
    def generation(self):
        return self.creator.generation + 1

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def name(self):
        """The name given to the Tensor (tensor.name = ...), while the user holds it."""
        tensor = self.tensor_ref()
        return None if tensor is None else tensor.name

    def __repr__(self):
        return f"<GraphValue: output {self.index} of {self.creator.name}, shape {self.shape}>"


def graph_value(tensor):
    """What the graph holds for `tensor`: its GraphValue if a Function made it, else the Tensor
    itself (a leaf). Code that matches the user's tensors against `function.inputs` compares these."""
    return tensor if tensor._value is None else tensor._value


class Function:
    """One differentiable operation.

    Subclasses take hyper-parameters in `__init__`, and implement

    - `forward(*arrays)`: returns an array or a tuple of arrays; keeps what backward needs with
      `self.save_for_backward(...)` or as a named attribute (`self.argmax = ...`);
    - `backward(*grad_outputs)`: returns one gradient array per input, None where the input needs
      none (`self.needs_input_grad[i]` says which are wanted);
    - optionally `forward_shape_only(*arrays)`: zeros of the output's shape and dtype, used under
      `config.shape_only` by ops too costly to run just to learn a shape.

    Inputs may be Tensors, None (an absent optional input such as a bias), or plain arrays and
    numbers, which become constant Tensors.
    """

    generation = 0

    def __call__(self, *inputs):
        if active_trace is not None:  # inside `with tinycnn.trace()`: it times apply() and records a row
            return active_trace.call_function(self, inputs)
        return self.apply(*inputs)

    def apply(self, *inputs):
        """Run forward on the inputs' arrays and, when a gradient is needed, link the outputs to self."""
        inputs = tuple(x if x is None or isinstance(x, Tensor) else as_tensor(x) for x in inputs)
        arrays = tuple(None if x is None else x.data for x in inputs)
        backend.get_array_module(*arrays, where=self.name)
        if config.check_nan:
            self._check_finite(arrays)
        if config.shape_only and hasattr(self, "forward_shape_only"):
            outputs = self.forward_shape_only(*arrays)
        else:
            outputs = self.forward(*arrays)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        outputs = tuple(Tensor(y) for y in outputs)

        self.needs_input_grad = tuple(x is not None and x.requires_grad for x in inputs)
        if config.enable_backprop and any(self.needs_input_grad):
            self.generation = max(x.generation for x in inputs if x is not None and x.requires_grad)
            values = []
            for index, y in enumerate(outputs):
                y.requires_grad = True
                y._value = GraphValue(self, index, y)
                values.append(y._value)
            # Leaves as they are; any other input as its GraphValue, so the input's array is not
            # kept here: a backward that needs it saved it (save_for_backward).
            self.inputs = tuple(graph_value(x) if x is not None else None for x in inputs)
            # Weak references: the outputs own their creator, not the other way round, so a
            # graph is freed as soon as the user drops its output. Their shapes and dtypes stay,
            # for the zero gradient of an output nobody used.
            self.outputs = tuple(weakref.ref(value) for value in values)
            self.output_shapes = tuple((value.shape, value.dtype) for value in values)
            self._note_saved_memory()
        return outputs[0] if len(outputs) == 1 else outputs

    def _note_saved_memory(self):
        """Count the memory of saved_arrays in _kept_for_backward until this Function is released or
        freed (only for a linked Function: an unlinked one is dropped with its arrays at once)."""
        owners = tuple(id(memory_owner(a)) for a in getattr(self, "saved_arrays", ()) if hasattr(a, "shape"))
        if owners:
            _keep(owners)
            self._forget_saved_memory = weakref.finalize(self, _forget, owners)

    @property
    def name(self):
        return type(self).__name__

    def forward(self, *arrays):
        raise NotImplementedError(f"{self.name}.forward")

    def backward(self, *grad_outputs):
        raise NotImplementedError(f"{self.name}.backward")

    def save_for_backward(self, *arrays):
        self.saved_arrays = arrays

    def release(self):
        """Drop the inputs and everything kept for backward (after a backward without retain_graph)."""
        if "_forget_saved_memory" in self.__dict__:
            self._forget_saved_memory()  # a finalize runs once: not again when this object is freed
        self.__dict__.clear()
        self.released = True

    def _check_finite(self, arrays):
        for index, a in enumerate(arrays):
            if a is None or a.dtype.kind != "f":
                continue
            xp = backend.get_array_module(a)
            if not bool(xp.isfinite(a).all()):
                bad = int((~xp.isfinite(a)).sum())
                raise ValueError(
                    f"{self.name}: input {index} of shape {tuple(a.shape)} holds {bad} NaN or infinite "
                    "values (tinycnn.config.check_nan is on)")


class Tensor:
    """An array with an optional gradient and a link to the Function that produced it."""

    # Make NumPy defer to Tensor's reflected operators: ndarray + Tensor -> Tensor.__radd__.
    __array_ufunc__ = None
    # register_hook's hooks of a leaf; a class-level None, so the many tensors without hooks store
    # nothing (a non-leaf tensor's hooks live on its GraphValue).
    _backward_hooks = None
    # What the graph holds for this tensor when a Function made it (GraphValue), else None.
    _value = None

    def __init__(self, data, requires_grad=False, name=None):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            raise TypeError(f"Tensor: expected a NumPy or CuPy array, got {type(data).__name__}; "
                            "use tinycnn.tensor(...) to convert Python data")
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.name = name
        self.retains_grad = False

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    device = property(lambda self: backend.device_of(self.data))
    # The Function that made this tensor and its generation (one more than that Function's), read
    # from the GraphValue the graph holds for it; a leaf has no creator and generation 0.
    creator = property(lambda self: None if self._value is None else self._value.creator)
    generation = property(lambda self: 0 if self._value is None else self._value.generation)
    is_leaf = property(lambda self: self._value is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = str(backend.to_cpu(self.data)).replace("\n", "\n       ")
        extra = ", requires_grad=True" if self.requires_grad else ""
        device = ", device='gpu'" if self.device == "gpu" else ""
        return f"tensor({body}, dtype={self.dtype}{device}{extra})"

    def numpy(self):
        """The data as a NumPy array (copied to the host if it is on the GPU)."""
        return backend.to_cpu(self.data)

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad=True):
        if not self.is_leaf:
            raise RuntimeError("requires_grad_: only leaf tensors can change requires_grad; use detach()")
        if requires_grad and self.dtype.kind != "f":
            raise TypeError(f"requires_grad_: dtype {self.dtype} cannot require gradients")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self):
        """Keep `.grad` on this non-leaf tensor after backward (for inspecting a network)."""
        self.retains_grad = True
        return self

    def zero_grad(self):
        self.grad = None

    def register_hook(self, hook):
        """Call `hook(grad)` once backward has the complete gradient of this tensor, as torch.

        `grad` is a Tensor of this tensor's shape. The hook may return a replacement (a Tensor or
        an array of the same shape): the rest of the backward pass uses it, and a leaf stores it in
        `.grad`. Hooks run in the order they were registered. Returns a HookHandle; its
        `remove()` unregisters the hook.
        """
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does not require grad")
        if self._value is not None:  # on the GraphValue, which backward reaches even if the Tensor is dropped
            if self._value.hooks is None:
                self._value.hooks = {}
            return HookHandle(self._value.hooks, hook)
        if self._backward_hooks is None:
            self._backward_hooks = {}
        global leaf_hooks_registered
        leaf_hooks_registered = True  # from now on run_backward counts the uses of hooked leaves
        return HookHandle(self._backward_hooks, hook)

    def to(self, *args, device=None, dtype=None):
        """This tensor on 'cpu' or 'gpu' and/or cast to `dtype`, as torch: `to('gpu')`,
        `to(numpy.float64)`, `to('cpu', numpy.float64)`; the same Tensor when nothing changes.
        The cast is recorded in the graph (gradients flow back in the source dtype); a device move
        makes a new leaf."""
        device, dtype = backend.device_and_dtype(args, device, dtype)
        result = self if dtype is None else self.astype(dtype)  # astype: tinycnn/arithmetic.py
        if device is None or result.device == device:
            return result
        return Tensor(backend.to_device(result.data, device), requires_grad=result.requires_grad)

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        `grad` is the gradient flowing into this tensor; it defaults to 1 for a one-element tensor.
        The graph is freed afterwards unless `retain_graph=True`.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input had requires_grad=True, "
                               "or it was computed under no_grad())")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: grad can be implied only for one-element outputs, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward: expected grad of shape {self.shape}, got {tuple(grad.shape)}")
        run_backward(self, grad, retain_graph)

    def __hash__(self):
        return id(self)

    # Arithmetic and shape methods are attached in tinycnn/arithmetic.py.


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable; requires_grad defaults to True."""

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class HookHandle:
    """What Tensor.register_hook and Module.register_*_hook return: `remove()` unregisters the
    hook (also usable as `with handle:` around the code that needs the hook)."""

    _ids = itertools.count()

    def __init__(self, hooks, hook):
        self.hooks = hooks  # the dict of hooks the hook was added to, keyed by handle id
        self.id = next(HookHandle._ids)
        hooks[self.id] = hook

    def remove(self):
        self.hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()


def hook_gradient(hook, result, replaced):
    """The array of the gradient a hook returned in place of `replaced`: the same shape is
    required; the dtype and device are made the same (a NumPy float64 array is accepted)."""
    array = result.data if isinstance(result, Tensor) else result
    if tuple(getattr(array, "shape", ())) != tuple(replaced.shape) or not hasattr(array, "dtype"):
        got = tuple(array.shape) if hasattr(array, "shape") else type(array).__name__
        name = getattr(hook, "__qualname__", repr(hook))
        raise RuntimeError(f"hook {name} returned a gradient of shape {got} for a tensor of shape "
                           f"{tuple(replaced.shape)}")
    return backend.get_array_module(replaced).asarray(array, dtype=replaced.dtype)


def run_tensor_hooks(hooks, grad):
    """Call a tensor's hooks (Tensor.register_hook) on its complete gradient; each may replace it,
    for the next hook and the rest of the backward pass."""
    for hook in list(hooks.values()):
        result = hook(Tensor(grad))
        if result is not None:
            grad = hook_gradient(hook, result, grad)
    return grad


def accumulate_grad(tensor, grad):
    """tensor.grad += grad (in the tensor's dtype), as PyTorch: gradients add up across backward calls."""
    if grad.dtype != tensor.dtype:
        grad = grad.astype(tensor.dtype)
    tensor.grad = grad if tensor.grad is None else tensor.grad + grad


def run_backward(output, grad, retain_graph=False):
    """Propagate `grad` from `output` to the leaves, newest function first.

    The graph is a DAG ordered by `generation` (one more than the newest input). A max-heap on
    generation pops a function only after every function that consumes its outputs has run, so
    each output's gradient is complete when it is used; no recursion, so depth is unlimited.
    Tensor hooks (register_hook) run at the two points where a gradient becomes complete.
    """
    # id(GraphValue) -> (GraphValue, gradient summed so far, whether this pass made that array).
    # Holding the GraphValue keeps it alive (functions only hold weak references to their outputs)
    # until its creator consumes the gradient.
    root = graph_value(output)
    grads = {id(root): (root, grad, False)}
    leaf_grads = {}  # the same, for leaves (Tensors): written to .grad at the end
    if output.creator is None:
        leaf_grads[id(output)] = (output, grad, False)
    counter = itertools.count()  # tie-breaker so the heap never compares Functions
    heap = []
    seen = set()

    def push(function):
        if id(function) not in seen:
            seen.add(id(function))
            heapq.heappush(heap, (-function.generation, next(counter), function))

    def accumulate(table, x, gx):
        # g1 + g2 + g3 ..., summed left to right. Never in place into an array a backward
        # returned: a backward may return the same array for two inputs (Add), or views of one
        # array (Concat). The first sum makes a new array, owned by this pass, and the later ones
        # are added into it in place: a DenseNet-121 feature map gets a gradient from every later
        # layer of its block, 1,200 sums a step at batch 8, and a new 8x32x56x56 array for each
        # took 0.41 ms against 0.25 in place (memory-bound: the kernel threads did no better).
        previous = table.get(id(x))
        if previous is None:
            table[id(x)] = (x, gx, False)
        elif previous[2] and numpy.result_type(previous[1].dtype, gx.dtype) == previous[1].dtype:
            # (a gradient of a wider dtype makes a new, promoted sum, as `+` did)
            summed = previous[1]
            summed += gx  # in place: this pass's own array
        else:
            table[id(x)] = (x, previous[1] + gx, True)

    # For leaves with hooks: how many inputs slots of the graph's functions still have to send
    # them a gradient. At zero the leaf's gradient is complete, and its hooks run at once, as
    # PyTorch runs a parameter's hooks (its AccumulateGrad node) as soon as it is ready.
    pending_uses = count_hooked_leaf_uses(output) if leaf_hooks_registered else {}

    def finish_leaf(x):
        # Hook point 2: the last function that uses leaf x has run, so its gradient is complete.
        entry = leaf_grads.pop(id(x), None)
        if entry is not None:  # no function sent x a gradient (all None): no hook, as in torch
            g = entry[1]
            accumulate_grad(x, run_tensor_hooks(x._backward_hooks, g) if x._backward_hooks else g)

    if output.creator is not None:
        push(output.creator)
    while heap:
        _, _, function = heapq.heappop(heap)
        if getattr(function, "released", False):
            raise RuntimeError("backward: trying to go through the graph a second time; the buffers were "
                               "freed by the first backward. Pass retain_graph=True to the first call.")
        values = [ref() for ref in function.outputs]
        grad_outputs = [None if y is None else grads.pop(id(y), (None, None, False))[1] for y in values]
        # Hook point 1: every consumer of these outputs has run, so their gradients are complete.
        # A hook may replace one; retain_grad() keeps what the hooks leave (as PyTorch 2).
        for index, (y, g) in enumerate(zip(values, grad_outputs)):
            if g is None:
                continue
            if y.hooks:
                grad_outputs[index] = g = run_tensor_hooks(y.hooks, g)
            tensor = y.tensor_ref()
            if tensor is not None and tensor.retains_grad:
                accumulate_grad(tensor, g)
        if any(g is not None for g in grad_outputs):
            xp = backend.get_array_module(next(g for g in grad_outputs if g is not None))
            grad_outputs = [g if g is not None else xp.zeros(shape, dtype=dtype)
                            for g, (shape, dtype) in zip(grad_outputs, function.output_shapes)]
            if active_trace is None:
                grad_inputs = function.backward(*grad_outputs)
            else:  # inside `with tinycnn.trace()`: it times the backward and records the row
                grad_inputs = active_trace.call_backward(function, grad_outputs)
            if not isinstance(grad_inputs, tuple):
                grad_inputs = (grad_inputs,)
            if len(grad_inputs) != len(function.inputs):
                raise RuntimeError(f"{function.name}.backward returned {len(grad_inputs)} gradients "
                                   f"for {len(function.inputs)} inputs")
            for x, gx in zip(function.inputs, grad_inputs):
                if x is None or not x.requires_grad or gx is None:
                    continue
                if tuple(gx.shape) != x.shape:
                    raise RuntimeError(f"{function.name}.backward returned a gradient of shape "
                                       f"{tuple(gx.shape)} for an input of shape {x.shape}")
                if x.creator is None:
                    accumulate(leaf_grads, x, gx)
                else:
                    accumulate(grads, x, gx)
                    push(x.creator)
        if pending_uses:
            for x in function.inputs:
                if x is not None and id(x) in pending_uses:
                    pending_uses[id(x)] -= 1
                    if pending_uses[id(x)] == 0:
                        finish_leaf(x)
        if not retain_graph:
            function.release()
    # The other leaves (and hooked ones whose every use did not run: a branch that got no
    # gradient) are written to .grad once the whole graph has run.
    for tensor, g, _ in leaf_grads.values():
        if tensor._backward_hooks:
            g = run_tensor_hooks(tensor._backward_hooks, g)
        accumulate_grad(tensor, g)


def count_hooked_leaf_uses(output):
    """{id(leaf): the number of input slots, over the functions behind `output`, that hold the leaf},
    for the leaves with hooks. A walk of the graph with a stack: no recursion."""
    uses = {}
    stack = [] if output.creator is None else [output.creator]
    seen = {id(function) for function in stack}
    while stack:
        function = stack.pop()
        for x in getattr(function, "inputs", ()):  # a released function has none
            if x is None or not x.requires_grad:
                continue
            if x.creator is None:
                if x._backward_hooks:  # a leaf: the Tensor itself
                    uses[id(x)] = uses.get(id(x), 0) + 1
            elif id(x.creator) not in seen:
                seen.add(id(x.creator))
                stack.append(x.creator)
    return uses


def as_array(value, like=None):
    """Convert a Python number or sequence to an array; follow `like`'s dtype and device for numbers."""
    if like is not None:
        xp = backend.get_array_module(like)
        if numpy.isscalar(value) and like.dtype.kind == "f":
            return xp.asarray(value, dtype=like.dtype)
        return xp.asarray(value)
    return numpy.asarray(value)


def as_tensor(value, like=None):
    if isinstance(value, Tensor):
        return value
    return Tensor(as_array(value, like))


def tensor(data, requires_grad=False, dtype=None, device="cpu"):
    """Build a Tensor from Python data or an array, as torch.tensor.

    Python floats become float32 and Python ints int64 (like PyTorch); NumPy and CuPy arrays keep
    their dtype and are copied.
    """
    if isinstance(data, Tensor):
        data = data.data
    if hasattr(data, "dtype") and hasattr(data, "shape"):
        xp = backend.get_array_module(data)
        array = xp.array(data, dtype=dtype)
    else:
        array = numpy.array(data, dtype=dtype)
        if dtype is None and array.dtype == numpy.float64:
            array = array.astype(numpy.float32)
    if device != backend.device_of(array):
        array = backend.to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)
