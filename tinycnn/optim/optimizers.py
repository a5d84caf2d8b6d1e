"""Optimizers with torch.optim's arguments, state_dict format and update formulas, step for step.

An optimizer holds `param_groups`, a list of dicts: each has its `params` and its own
hyper-parameters (`lr`, ...), so a scheduler or the user can change `group['lr']` between steps.
`state[p]` keeps the per-parameter buffers (momentum, moment estimates), created at the first
step. `step()` updates each parameter's `.data` in place from its `.grad`; parameters whose grad is
None (unused, or frozen with requires_grad_(False)) are skipped.

The formulas follow torch.optim's single-tensor code line by line (the order of operations
matters for float32 round-off and for matching torch's trajectories).
"""
import copy
import math

from tinycnn import backend, config, kernels
from tinycnn.autograd import Tensor

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD"]


class Optimizer:
    """Base class: param_groups, zero_grad, state_dict / load_state_dict; subclasses write step()."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}  # Parameter -> dict of buffers; Tensor hashes by identity
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Parameters or of dicts, "
                            "got a single Tensor")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group of parameters with its own hyper-parameters (missing ones take the defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}.add_param_group: expected a dict, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: can't optimize a non-leaf Tensor (shape {p.shape})")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        """Forget the gradients before the next backward (which accumulates into .grad)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter with a gradient; `closure` re-evaluates the loss and returns it."""
        loss = None
        if closure is not None:
            with config.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}.step: grad of shape {tuple(p.grad.shape)} for a "
                                     f"parameter of shape {p.shape}")
                self._update(p, p.grad, group, self.state.setdefault(p, {}))
        return loss

    def _update(self, p, grad, group, state):
        raise NotImplementedError(f"{type(self).__name__}._update")

    def state_dict(self):
        """{'state': {index: {name: array or number}}, 'param_groups': [{..., 'params': [index, ...]}]}.

        Parameters are numbered in the order of the groups, as in torch, so a checkpoint does not
        refer to objects; arrays are NumPy copies, so it can be pickled and later steps don't change it.
        """
        index = {}
        param_groups = []
        for group in self.param_groups:
            packed = {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            param_groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {key: backend.to_cpu(value).copy() if hasattr(value, "shape") else value
                                           for key, value in self.state[p].items()}
        return {"state": state, "param_groups": param_groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and buffers saved by state_dict(), onto this optimizer's parameters."""
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer {len(self.param_groups)}")
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(saved['params'])} "
                                 f"parameters in the state dict, {len(group['params'])} here")
        by_index = {}
        for group, saved in zip(self.param_groups, saved_groups):
            by_index.update(zip(saved["params"], group["params"]))
        self.state = {}
        for index, saved_state in state_dict["state"].items():
            p = by_index[index]
            state = {}
            for key, value in saved_state.items():
                if key == "step":
                    # torch keeps the step count in a float tensor; the updates here want an int.
                    state[key] = int(value)
                elif hasattr(value, "shape"):
                    array = value.detach().cpu().numpy() if hasattr(value, "detach") else backend.to_cpu(value)
                    if tuple(array.shape) != p.shape:
                        raise ValueError(f"{name}.load_state_dict: state {key!r} of parameter {index} has shape "
                                         f"{tuple(array.shape)}, the parameter {p.shape}")
                    xp = backend.get_array_module(p.data)
                    state[key] = xp.array(array, dtype=p.dtype)  # a copy on the parameter's device
                else:
                    state[key] = copy.deepcopy(value)
            self.state[p] = state
        for group, saved in zip(self.param_groups, saved_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = copy.deepcopy(value)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"


def _check_nonnegative(name, **values):
    for key, value in values.items():
        if value < 0.0:
            raise ValueError(f"{name}: invalid {key}: expected >= 0, got {value}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (torch.optim.SGD).

        g = grad + weight_decay * p
        b = g at the first step, then momentum * b + (1 - dampening) * g
        g = g + momentum * b if nesterov else b          (when momentum != 0)
        p = p - lr * g
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False):
        _check_nonnegative("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _update(self, p, grad, group, state):
        first_step = group["momentum"] != 0 and "momentum_buffer" not in state
        if first_step:
            state["momentum_buffer"] = backend.get_array_module(grad).empty_like(p.data, order="C")
        # One kernel call per parameter: the Numba kernel reads and writes each element once, where
        # the rule's five array operations would make five passes over memory (the reference,
        # tinycnn.kernels.reference.sgd_update, has them written out).
        kernels.sgd_update(p.data, grad, state.get("momentum_buffer"), group["lr"], group["momentum"],
                           group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"],
                           first_step)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), as torch.optim.Adam; AdamW is the decoupled-weight-decay variant.

        g = grad + weight_decay * p          (AdamW instead: p = p * (1 - lr * weight_decay))
        m = beta1 * m + (1 - beta1) * g      first moment
        v = beta2 * v + (1 - beta2) * g^2    second moment (v_max = max(v_max, v) with amsgrad)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False):
        name = type(self).__name__
        _check_nonnegative(name, lr=lr, eps=eps, weight_decay=weight_decay)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: invalid beta parameter at index {i}: expected 0 <= beta < 1, got {beta}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _update(self, p, grad, group, state):
        xp = backend.get_array_module(p.data)
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        grad = -grad if group["maximize"] else grad
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"]

        if weight_decay != 0:
            if self.decoupled_weight_decay:
                p.data *= 1 - lr * weight_decay  # shrink the weights directly (Loshchilov & Hutter, 2019)
            else:
                grad = grad + weight_decay * p.data  # L2 penalty folded into the gradient
        # m + (1 - beta1) (g - m) is torch's lerp for a weight below 0.5: the same value as
        # beta1 m + (1 - beta1) g, rounded the same way as torch.
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad

        bias_correction1 = 1 - beta1 ** step  # m and v start at 0, so early averages are too small
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = math.sqrt(bias_correction2)
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denom = xp.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
        else:
            denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        p.data -= step_size * exp_avg / denom  # (step_size m) / d: torch's addcdiv order


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): p = p * (1 - lr * weight_decay)
    before the Adam step, instead of adding weight_decay * p to the gradient. Default weight_decay 1e-2."""

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), as torch.optim.RMSprop.

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g^2
        centered: a = alpha * a + (1 - alpha) * g and the denominator uses v - a^2 (a variance)
        d = sqrt(v [- a^2]) + eps
        momentum > 0: b = momentum * b + g / d, p = p - lr * b;  else p = p - lr * g / d
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, *,
                 maximize=False):
        _check_nonnegative("RMSprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _update(self, p, grad, group, state):
        xp = backend.get_array_module(p.data)
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = xp.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = xp.zeros_like(p.data)
        grad = -grad if group["maximize"] else grad
        alpha, eps = group["alpha"], group["eps"]
        state["step"] += 1

        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * p.data
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * grad * grad
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - alpha) * (grad - grad_avg)  # torch's lerp, as in Adam
            avg = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += eps
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += grad / avg
            p.data -= group["lr"] * buf
        else:
            p.data -= group["lr"] * grad / avg
