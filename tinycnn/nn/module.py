"""Module: the container of parameters, buffers and sub-modules, with PyTorch's API and key names.

Assigning a Parameter, a Module or (through `register_buffer`) an array to an attribute registers
it, so `parameters()`, `state_dict()` and `to('gpu')` find everything without bookkeeping in the
layers. Buffers are plain arrays (BatchNorm's running statistics are updated in place).
"""
from collections import OrderedDict

import numpy

from tinycnn import autograd, backend, config
from tinycnn.autograd import Function, HookHandle, Parameter, Tensor, hook_gradient


def _as_numpy(value):
    """An array from a tinycnn Tensor, a torch tensor, a CuPy array or anything array-like."""
    if isinstance(value, Tensor):
        return backend.to_cpu(value.data)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    return backend.to_cpu(value)


class Module:
    """Base class of every layer and network: subclasses define `forward`."""

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            # Re-assigning a buffer (`self.running_mean = new_array`) keeps it registered, as in torch.
            object.__setattr__(self, name, value)
            return
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name, parameter):
        """Register a Parameter, or None for an absent optional one (a layer built with bias=False)."""
        if parameter is None:
            object.__setattr__(self, name, None)
            self._parameters[name] = None
        else:
            setattr(self, name, parameter)

    def register_buffer(self, name, array, persistent=True):
        """Register an array that is state but not trained (running statistics); saved in state_dict.

        None registers an absent buffer (BatchNorm with track_running_stats=False): it is skipped
        by state_dict, load_state_dict, buffers() and to(), as in torch."""
        object.__setattr__(self, name, array)
        self._buffers[name] = persistent

    def __call__(self, *args, **kwargs):
        if autograd.active_trace is not None:  # inside `with tinycnn.trace()`: it notes which module runs
            return autograd.active_trace.call_module(self, args, kwargs)
        return self._call_with_hooks(args, kwargs)

    def _call_with_hooks(self, args, kwargs):
        # PyTorch's order: pre-hooks (may replace the arguments), forward, forward hooks (may
        # replace the output); full backward hooks watch the arguments and the final output.
        # Each kind costs one check when unused, as most calls are (list() copies the hooks, so
        # a hook may remove itself).
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        backward_hooks = None
        if self._backward_hooks and config.enable_backprop:
            backward_hooks = ModuleBackwardHooks(self)
            args = backward_hooks.watch_inputs(args)
        output = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                result = hook(self, args, output)
                if result is not None:
                    output = result
        if backward_hooks is not None:
            output = backward_hooks.watch_output(output)
        return output

    def register_forward_pre_hook(self, hook):
        """Call hook(module, args) before every forward; it may return replacement arguments (a
        tuple, or one value for a single argument), as torch. Returns a HookHandle (`.remove()`)."""
        return HookHandle(self._forward_pre_hooks, hook)

    def register_forward_hook(self, hook):
        """Call hook(module, args, output) after every forward (to inspect feature maps, count
        operations, ...); it may return a replacement output. Returns a HookHandle (`.remove()`)."""
        return HookHandle(self._forward_hooks, hook)

    def register_full_backward_hook(self, hook):
        """Call hook(module, grad_input, grad_output) in backward, as torch, once the gradients
        with respect to this call's positional arguments are computed.

        grad_output holds the gradients of the output's tensors; grad_input one entry per
        positional argument: the gradient that this module's operations send to it, or None (a
        non-tensor, or a tensor that needs no gradient, such as the image at the first layer). The
        hook may return a replacement grad_input (a tuple of the same length). Returns a
        HookHandle (`.remove()`).
        """
        return HookHandle(self._backward_hooks, hook)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def named_children(self):
        yield from self._modules.items()

    def children(self):
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix="", recurse=True):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, parameter in module._parameters.items():
                if parameter is None or id(parameter) in seen:
                    continue
                seen.add(id(parameter))  # a shared parameter is listed once
                yield (f"{module_prefix}.{name}" if module_prefix else name), parameter

    def parameters(self, recurse=True):
        for _, parameter in self.named_parameters(recurse=recurse):
            yield parameter

    def named_buffers(self, prefix=""):
        for module_prefix, module in self.named_modules(prefix):
            for name in module._buffers:
                if getattr(module, name) is not None:
                    yield (f"{module_prefix}.{name}" if module_prefix else name), getattr(module, name)

    def buffers(self):
        for _, buffer in self.named_buffers():
            yield buffer

    def num_parameters(self, trainable_only=False):
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter of this module, for transfer learning."""
        for parameter in self.parameters():
            parameter.requires_grad = requires_grad
        return self

    def zero_grad(self):
        for parameter in self.parameters():
            parameter.grad = None

    def apply(self, fn):
        for module in self.modules():
            fn(module)
        return self

    def to(self, *args, device=None, dtype=None):
        """Move and/or cast every parameter and buffer in place, as torch: `to('gpu')`,
        `to(numpy.float64)`, `to('cpu', numpy.float64)`, `to(device=..., dtype=...)`; returns self.

        A dtype must be floating point and applies only to floating parameters, gradients and
        buffers (an integer counter stays an integer). Each Parameter keeps its identity (its
        `.data` is replaced), so an optimizer built before still holds the model's parameters.
        """
        device, dtype = backend.device_and_dtype(args, device, dtype)
        if dtype is not None:
            try:
                dtype = numpy.dtype(dtype)
            except TypeError:
                raise TypeError(f"{type(self).__name__}.to: expected a device ('cpu', 'gpu') or a NumPy "
                                f"floating dtype, got {dtype!r}") from None
            if dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}.to: only floating-point dtypes are accepted, got {dtype}")

        def convert(array):
            if dtype is not None and array.dtype.kind == "f":
                array = array.astype(dtype, copy=False)
            return array if device is None else backend.to_device(array, device)

        for module in self.modules():
            for parameter in module._parameters.values():
                if parameter is not None:
                    parameter.data = convert(parameter.data)
                    if parameter.grad is not None:
                        parameter.grad = convert(parameter.grad)
            for name in module._buffers:
                if getattr(module, name) is not None:
                    object.__setattr__(module, name, convert(getattr(module, name)))
        return self

    def double(self):
        """Cast floating parameters and buffers to float64 (for gradcheck); returns self."""
        return self.to(numpy.float64)

    def float(self):
        """Cast floating parameters and buffers to float32; returns self."""
        return self.to(numpy.float32)

    def state_dict(self):
        """An OrderedDict of NumPy arrays keyed as PyTorch would (`features.0.weight`, ...)."""
        state = OrderedDict()
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    state[dot + name] = backend.to_cpu(parameter.data).copy()
            for name, persistent in module._buffers.items():
                if persistent and getattr(module, name) is not None:
                    state[dot + name] = backend.to_cpu(getattr(module, name)).copy()
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (NumPy, CuPy, tinycnn or torch tensors) into the parameters and buffers.

        With strict=True a missing or unexpected key raises KeyError; a shape that differs always
        raises ValueError naming the key. Returns (missing_keys, unexpected_keys) as lists.
        """
        own = self._state_slots()
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected}")
        for key, (module, name, is_parameter) in own.items():
            if key not in state_dict:
                continue
            value = _as_numpy(state_dict[key])
            current = module._parameters[name].data if is_parameter else getattr(module, name)
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} expected shape "
                                 f"{tuple(current.shape)}, got {tuple(value.shape)}")
            xp = backend.get_array_module(current)
            new = xp.asarray(value.astype(current.dtype, copy=False))
            if is_parameter:
                module._parameters[name].data = new.copy()
            else:
                current[...] = new
        return missing, unexpected

    def _state_slots(self):
        slots = OrderedDict()
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    slots[dot + name] = (module, name, True)
            for name, persistent in module._buffers.items():
                if persistent and getattr(module, name) is not None:
                    slots[dot + name] = (module, name, False)
        return slots

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class BackwardHookFunction(Function):
    """The identity, whose backward hands the gradients to a module's backward hooks (as
    PyTorch's function of the same name). `side` is "inputs" or "output"."""

    def __init__(self, hooks, side):
        self.hooks, self.side = hooks, side

    def forward(self, *arrays):
        return arrays

    def backward(self, *grads):
        if self.side == "output":
            return self.hooks.output_gradients(grads)
        return self.hooks.input_gradients(grads)


class ModuleBackwardHooks:
    """One module call, watched for register_full_backward_hook.

    An identity Function on the positional tensor arguments and one on the output: in backward,
    the output's identity runs first and records grad_output; the inputs' identity runs when
    every operation of the module has sent its gradient back, so it sees the complete grad_input,
    calls the hooks (which may replace it) and passes the result on.
    """

    def __init__(self, module):
        self.module = module
        self.num_args = 0
        self.positions = ()  # the positional arguments that are tensors needing a gradient
        self.grad_output = ()

    def watch_inputs(self, args):
        self.num_args = len(args)
        self.positions = tuple(i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad)
        if not self.positions:
            return args
        watched = BackwardHookFunction(self, "inputs")(*(args[i] for i in self.positions))
        watched = watched if isinstance(watched, tuple) else (watched,)
        args = list(args)
        for position, tensor in zip(self.positions, watched):
            args[position] = tensor
        return tuple(args)

    def watch_output(self, output):
        if isinstance(output, Tensor):
            items = [output]
        elif isinstance(output, (tuple, list)):
            items = list(output)
        else:
            raise TypeError(f"{type(self.module).__name__}: a full backward hook needs forward to return a "
                            f"Tensor or a tuple of Tensors, got {type(output).__name__}")
        places = [i for i, item in enumerate(items) if isinstance(item, Tensor) and item.requires_grad]
        if not places:
            return output
        watched = BackwardHookFunction(self, "output")(*(items[i] for i in places))
        watched = watched if isinstance(watched, tuple) else (watched,)
        for place, tensor in zip(places, watched):
            items[place] = tensor
        if isinstance(output, Tensor):
            return items[0]
        if hasattr(output, "_fields"):  # a namedtuple such as ModelOutputs
            return type(output)(*items)
        return type(output)(items)

    def output_gradients(self, grads):
        self.grad_output = tuple(Tensor(g) for g in grads)
        if not self.positions:  # no argument needs a gradient: the hooks run now, with grad_input all None
            self.call_hooks(())
        return grads

    def input_gradients(self, grads):
        return self.call_hooks(grads)

    def call_hooks(self, grads):
        grad_input = [None] * self.num_args
        for position, g in zip(self.positions, grads):
            grad_input[position] = Tensor(g)
        for hook in list(self.module._backward_hooks.values()):
            result = hook(self.module, tuple(grad_input), self.grad_output)
            if result is None:
                continue
            name = getattr(hook, "__qualname__", repr(hook))
            if not isinstance(result, (tuple, list)) or len(result) != self.num_args:
                raise RuntimeError(f"backward hook {name} of {type(self.module).__name__} returned {result!r}; "
                                   f"expected a tuple of {self.num_args} gradients (grad_input)")
            for position in self.positions:
                if result[position] is not None:
                    grad_input[position] = Tensor(hook_gradient(hook, result[position], grad_input[position].data))
        return tuple(None if grad_input[p] is None else grad_input[p].data for p in self.positions)


class Sequential(Module):
    """Modules applied in order; children are named '0', '1', ... (or by an OrderedDict's keys)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                setattr(self, name, module)
        else:
            for index, module in enumerate(modules):
                setattr(self, str(index), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return modules[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of modules whose parameters are registered (children named '0', '1', ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
