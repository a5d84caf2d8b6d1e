"""Normalisation layers: BatchNorm1d, BatchNorm2d and LocalResponseNorm."""
import numpy

from tinycnn import functional as F
from tinycnn.autograd import Parameter
from tinycnn.nn import init
from tinycnn.nn.module import Module

__all__ = ["BatchNorm1d", "BatchNorm2d", "LocalResponseNorm"]


class _BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy, 2015) over the channel axis 1, as torch's _BatchNorm.

    Training: normalise with the batch's mean and (biased) variance and update the running
    estimates, running = (1 - momentum) * running + momentum * batch statistic (the variance
    unbiased, N / (N - 1)); momentum=None uses the cumulative average, momentum = 1 / batches seen.
    Evaluation: normalise with the running estimates. With track_running_stats=False there are no
    running buffers and batch statistics are used in both modes.
    """

    expected_dims = ()
    layout = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=numpy.float32, *, bias=True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(numpy.empty(num_features, dtype=dtype))
            if bias:
                self.bias = Parameter(numpy.empty(num_features, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", numpy.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", numpy.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", numpy.zeros((), dtype=numpy.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input(self, x):
        name = type(self).__name__
        if x.ndim not in self.expected_dims:
            raise ValueError(f"{name}: expected {' or '.join(f'{d}D' for d in self.expected_dims)} input "
                             f"{self.layout}, got {x.ndim}D input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels (num_features) on axis 1, got input "
                             f"of shape {tuple(x.shape)}")

    def _momentum_of_this_call(self):
        """The momentum of this call's update of the running statistics. In training with tracked
        statistics the call counts one more batch (num_batches_tracked), and momentum=None means
        their cumulative average: 1 / batches seen."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked[...] += 1  # in place, like the running statistics
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return momentum

    def forward(self, x):
        self._check_input(x)
        momentum = self._momentum_of_this_call()
        # Batch statistics in training, and in evaluation when no running statistics are kept.
        use_batch_stats = self.training or self.running_mean is None
        # Running buffers are handed over (and so updated) only when they are tracked.
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, momentum, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features or (N, C, L) sequences, per channel C."""

    expected_dims = (2, 3)
    layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) feature maps, per channel C (statistics over N, H, W)."""

    expected_dims = (4,)
    layout = "(N, C, H, W)"


class LocalResponseNorm(Module):
    """Normalise each activation by its neighbours across `size` channels (AlexNet, Krizhevsky 2012):

        b_c = a_c / (k + alpha' * sum_{c' near c} a_c'^2) ** beta

    with alpha' = alpha / size when alpha_divided_by_size (torch's convention) and alpha' = alpha
    otherwise (the AlexNet paper's and Caffe's convention).
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, alpha_divided_by_size=True):
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.alpha_divided_by_size = alpha_divided_by_size

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.alpha_divided_by_size)

    def extra_repr(self):
        s = f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
        if not self.alpha_divided_by_size:
            s += ", alpha_divided_by_size=False"
        return s
