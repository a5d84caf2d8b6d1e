"""SyncBatchNorm: batch normalisation with the statistics of the global batch of a distributed job.

In data-parallel training (tinycnn.distributed) each process sees only its shard of the batch,
and a plain BatchNorm normalises with that shard's statistics. SyncBatchNorm sums the per-channel
statistics over every process, so the output and the gradients are those of one BatchNorm on the
whole global batch (Ioffe & Szegedy, 2015; the synchronised form as in Peng et al., 2018, MegDet).
It costs two all-reduces of 2C values in forward and one in backward per layer.

Without a process group (no tinycnn.distributed.init()) it is a BatchNorm of one process.
"""
import numpy

from tinycnn import backend, distributed
from tinycnn.autograd import Function
from tinycnn.functional._checks import check_floating
from tinycnn.functional.normalization import update_running_statistics
from tinycnn.nn.normalization import _BatchNorm

__all__ = ["SyncBatchNorm", "sync_batch_norm"]


class SyncBatchNormFunction(Function):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta per channel (axis 1) of x (N, C, ...), with
    mean and (biased) var taken over the n values of the channel on every process.

    Training only (evaluation uses the running statistics, which need no communication:
    F.batch_norm). The running statistics, given, are updated in place with the global mean and
    the unbiased global variance (times n / (n - 1)), the same on every process.
    """

    def __init__(self, group, running_mean, running_var, momentum, eps):
        self.group = group  # a tinycnn.distributed.ProcessGroup, or None: this process alone
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps = momentum, eps

    def _sum_over_processes(self, array, what):
        """`array` summed over the processes (in float64, so counts and float32 sums stay exact)."""
        total = array.astype(numpy.float64)
        if self.group is not None:
            self.group.all_reduce_sum(total, f"SyncBatchNorm {what}")
        return total

    def forward(self, x, gamma, beta):
        check_floating("sync_batch_norm", input=x, weight=gamma, bias=beta)
        if x.ndim < 2:
            raise ValueError(f"sync_batch_norm: expected input of shape (N, C) or (N, C, H, W), got {tuple(x.shape)}")
        xp = backend.get_array_module(x)
        C = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channel's
        shape = (1, C) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, 1): broadcast over N, H, W
        # Two passes, as one process would do them: the mean first, then the squares about it
        # (a sum of squares minus the squared mean loses digits when the mean is large).
        local = xp.concatenate([x.sum(axis=axes), xp.asarray([x.size // C], dtype=x.dtype)])
        total = self._sum_over_processes(local, "sum of x")
        n = int(total[-1])
        if n <= 1:
            raise ValueError(f"sync_batch_norm: expected more than 1 value per channel over all processes, got {n} "
                             f"(this process's input has shape {tuple(x.shape)})")
        mean = (total[:C] / n).astype(x.dtype)
        centered = x - mean.reshape(shape)
        var = (self._sum_over_processes((centered * centered).sum(axis=axes), "sum of squares") / n).astype(x.dtype)
        inv_std = 1 / xp.sqrt(var + self.eps)
        x_hat = centered * inv_std.reshape(shape)
        y = x_hat
        if gamma is not None:
            y = y * gamma.reshape(shape)
        if beta is not None:
            y = y + beta.reshape(shape)
        update_running_statistics(self.running_mean, self.running_var, mean, var, n, self.momentum)
        self.n = n
        self.save_for_backward(x_hat, gamma, inv_std)
        return y

    def backward(self, gy):
        # BatchNorm's backward (kernels/reference.py batch_norm_backward) with its two sums taken
        # over the global batch, since mean and var depend on every process's values:
        #   gx = gamma inv_std (gy - sum(gy) / n - x_hat sum(gy x_hat) / n),  sums over all n values.
        # ggamma = sum gy x_hat and gbeta = sum gy stay this process's sums: they are parameter
        # gradients, which DataParallel averages like every other.
        x_hat, gamma, inv_std = self.saved_arrays
        C = x_hat.shape[1]
        axes = (0,) + tuple(range(2, x_hat.ndim))
        shape = (1, C) + (1,) * (x_hat.ndim - 2)
        xp = backend.get_array_module(gy)
        gbeta = gy.sum(axis=axes)
        ggamma = (gy * x_hat).sum(axis=axes)
        gx = None
        if self.needs_input_grad[0]:
            total = self._sum_over_processes(xp.concatenate([gbeta, ggamma]), "sums of the gradient")
            sum_gy, sum_gy_x_hat = total[:C].astype(gy.dtype), total[C:].astype(gy.dtype)
            gain = inv_std if gamma is None else gamma * inv_std
            gx = gain.reshape(shape) * (gy - sum_gy.reshape(shape) / self.n
                                        - x_hat * sum_gy_x_hat.reshape(shape) / self.n)
        return (gx,
                ggamma if self.needs_input_grad[1] else None,
                gbeta if self.needs_input_grad[2] else None)


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5, group=None):
    """Batch normalisation in training mode with the statistics of all processes of `group`
    (a tinycnn.distributed.ProcessGroup; None: this process alone)."""
    return SyncBatchNormFunction(group, running_mean, running_var, momentum, eps)(input, weight, bias)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch of all processes, as
    torch.nn.SyncBatchNorm; input (N, C) or (N, C, ...). `group` defaults to the group of
    tinycnn.distributed.init() when there is one, else this process alone. In evaluation it is a
    BatchNorm with the running statistics (the same on every process). Convert a network's
    BatchNorm layers with SyncBatchNorm.convert_sync_batchnorm(model)."""

    expected_dims = (2, 3, 4, 5)
    layout = "(N, C, ...)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=numpy.float32, *, bias=True, group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias=bias)
        self.group = group

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self._check_input(x)
        momentum = self._momentum_of_this_call()
        group = self.group if self.group is not None else distributed.default_group()
        return sync_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, momentum, self.eps,
                               group)

    @classmethod
    def convert_sync_batchnorm(cls, module, group=None):
        """`module` with every BatchNorm1d/2d replaced by a SyncBatchNorm holding its parameters
        and running statistics (the module itself when it is a BatchNorm)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, bias=module.bias is not None, group=group)
            if module.affine:
                converted.weight = module.weight
                if module.bias is not None:
                    converted.bias = module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(converted, name, getattr(module, name))
            converted.train(module.training)
            return converted
        for name, child in list(module.named_children()):
            setattr(module, name, cls.convert_sync_batchnorm(child, group))
        return module
