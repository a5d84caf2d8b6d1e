"""The optimizers' parameter updates for the Numba backend (see tinycnn.kernels.cpu for the whole
picture): SGD's, one pass over each parameter.

The reference's update is five NumPy operations, each a pass over the parameter, its gradient or
its momentum buffer; here each element is read once and written once, on the kernel threads, with
the reference's operations in the reference's order, so the values are the reference's to the bit.
LeNet's 431,080 parameters (momentum 0.9): 263 microseconds a step as the optimizer's former NumPy
update (the reference's operations, in 64 Ki-element blocks), 170 here on one thread, about 145 on
two.
"""
import numpy as np
from numba import njit

from tinycnn.kernels import reference
from tinycnn.kernels.parallel import parallel_range


@njit(cache=True, nogil=True)
def _sgd_update(param, grad, buffer, lr, momentum, keep, weight_decay, decays, nesterov, maximize, first_step, start,
                stop):
    # reference.sgd_update on the flat elements [start, stop), one element at a time: buffer is
    # empty without momentum, keep = 1 - dampening, and decays = weight_decay != 0, decided on the
    # caller's value rather than on its rounding to param's dtype, as the reference decides. The
    # loop runs over slices from index 0: then LLVM sees no negative index and vectorises it (see
    # cpu_elementwise._relu_forward).
    has_momentum = buffer.size > 0
    p, gradient = param[start:stop], grad[start:stop]
    b = buffer[start:stop] if has_momentum else buffer
    for i in range(p.size):
        g = -gradient[i] if maximize else gradient[i]
        if decays:
            g = g + weight_decay * p[i]
        if has_momentum:
            if first_step:
                velocity = g
            elif keep == 1:
                velocity = momentum * b[i] + g
            else:
                velocity = momentum * b[i] + keep * g
            b[i] = velocity
            g = g + momentum * velocity if nesterov else velocity
        p[i] = p[i] - lr * g


def sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    """As the reference: one SGD step on one parameter, in place; returns (param, buffer). Arrays
    that are not all C-contiguous and of param's dtype take the reference's NumPy operations."""
    arrays = [param, grad] + ([] if buffer is None else [buffer])
    usual = all(a.flags.c_contiguous and a.dtype == param.dtype for a in arrays) and param.size > 0
    if not usual or (momentum != 0) != (buffer is not None):
        return reference.sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay, nesterov, maximize,
                                    first_step)
    scalar = param.dtype.type  # the scalars rounded to param's dtype, as NumPy rounds them in the reference
    param_flat, grad_flat = param.reshape(-1), grad.reshape(-1)
    buffer_flat = np.empty(0, dtype=param.dtype) if buffer is None else buffer.reshape(-1)
    parallel_range(lambda start, stop: _sgd_update(
        param_flat, grad_flat, buffer_flat, scalar(lr), scalar(momentum), scalar(1 - dampening), scalar(weight_decay),
        weight_decay != 0, bool(nesterov), bool(maximize), bool(first_step), start, stop), param_flat.size, 1)
    return param, buffer
