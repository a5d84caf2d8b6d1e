"""The Numba CPU backend: the same functions, arguments and results as tinycnn.kernels.reference.

This module is the backend's face: it holds the 24 primitives under the reference's names, each
written in the file of its concern, where a reader following one call stays:

    kernels/cpu_columns.py   im2col, col2im (channel-major columns) and conv2d's pixel-major columns
    kernels/cpu_matmul.py    matmul (a big product split into one OpenBLAS product per thread) and
                             the small-result product Numba loop
    kernels/cpu_conv.py      conv2d_forward, conv2d_backward: chunks of samples, columns, products;
                             conv2d_batch_norm_relu_inference, inference's conv-BN-ReLU in one pass
    kernels/cpu_winograd.py  conv2d_forward's Winograd F(2x2, 3x3) for 3x3 stride-1 layers
    kernels/cpu_winograd_backward.py  conv2d_backward's weight gradient by the same transforms
    kernels/cpu_conv_taps.py  conv2d forward and backward as one product per kernel tap, for layers
                             of small outputs whose im2col columns are mostly padding
    kernels/cpu_conv_dense.py  conv2d's forward as one product with the layer's whole linear map,
                             for layers on planes of a few pixels
    kernels/cpu_conv_weights.py  the weight's live taps in the products' layouts, on every thread
    kernels/cpu_conv_chunks.py  cpu_conv's forward chunks (each layout, with inference's fused
                             BatchNorm-ReLU) as single nogil Numba calls
    kernels/cpu_blas.py      NumPy's own OpenBLAS gemm called by address from Numba code, so that a
                             chunk's loops and products run in one nogil call (conv2d's forward
                             chunks, the taps' backward, Winograd's forward and weight gradient)
    kernels/cpu_pool.py      max_pool2d_forward/_backward, avg_pool2d_forward/_backward
    kernels/cpu_norm.py      batch_norm_forward_training, batch_norm_backward, lrn_forward, lrn_backward,
                             batch_norm_forward_inference, batch_norm_backward_inference,
                             concat_batch_norm_relu_inference (DenseNet's concat-BN-ReLU in one pass),
                             batch_norm_relu_forward_training, batch_norm_relu_backward (training's
                             BN-add-ReLU, each one pass)
    kernels/cpu_elementwise.py  relu_forward, relu_backward, add_in_place, concatenate
    kernels/cpu_optim.py     sgd_update, the optimizer's step in one pass over each parameter
    kernels/parallel.py      the small pool of Python threads all of them run on

Each public function is a thin wrapper that makes its inputs C-contiguous (so one compiled version
per dtype serves every call), allocates the output, and calls an `@njit(cache=True, nogil=True)`
loop nest on a range of its outermost index. Compiled machine code is cached in
kernels/__pycache__, so only the first process pays the compile. Numba checks a cached function
against its own file only: after editing a jitted helper that another file's kernel calls
(cpu_columns._tap_tables, used by cpu_pool's average pooling), delete kernels/__pycache__/*.nb*.

tinycnn.kernels.parallel runs those ranges on several threads at once (see there why not Numba's
`prange`). Each range owns what it writes, so no two threads write to the same element and no
atomics or locks are needed:

    im2col, pooling forward        one (n, c) image plane per item
    col2im, avg_pool2d_backward    one input row (n, c, h) per item: it gathers, in tap order,
                                   every column entry that saw one of its pixels
    max_pool2d_backward            one (n, c) plane per item (its outputs only point into it)
    batch norm                     one channel c per item (its statistics need all of it)
    LRN                            one (n, c) row per item (it reads the neighbouring channels)
    batch norm inference           one (n, c) row per item (its statistics are given)
    ReLU, add_in_place             a chunk of consecutive elements per item
    sgd_update                     a chunk of consecutive elements per item
    conv2d                         a chunk of samples per item (im2col, product and col2im of a
                                   few samples, while their columns are in the core's cache);
                                   Winograd's, a chunk of tile rows (2 output rows of a sample);
                                   the tap products', a chunk of samples through all its taps;
                                   the dense product's, a chunk of output channels

Where the reference sums taps in a fixed order (col2im, pooling, LRN's window) the loops here add
in that same order, so those results are equal to the reference to the last bit; batch norm
accumulates its statistics in float64 and so differs from the reference by round-off only.

Index maths as in the reference: tap (i, j) of the window at output (oh, ow) reads input pixel
h = oh*SH - PH + i*DH, w = ow*SW - PW + j*DW.
"""
from tinycnn.kernels.cpu_columns import col2im, im2col
from tinycnn.kernels.cpu_conv import conv2d_backward, conv2d_batch_norm_relu_inference, conv2d_forward
from tinycnn.kernels.cpu_matmul import matmul
from tinycnn.kernels.cpu_optim import sgd_update
from tinycnn.kernels.cpu_norm import batch_norm_backward, batch_norm_forward_training, lrn_backward, lrn_forward
from tinycnn.kernels.cpu_norm import batch_norm_backward_inference, batch_norm_forward_inference
from tinycnn.kernels.cpu_norm import batch_norm_relu_backward, batch_norm_relu_forward_training
from tinycnn.kernels.cpu_norm import concat_batch_norm_relu_inference
from tinycnn.kernels.cpu_elementwise import add_in_place, concatenate, relu_backward, relu_forward
from tinycnn.kernels.cpu_pool import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

__all__ = [
    "matmul", "im2col", "col2im", "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "batch_norm_forward_training", "batch_norm_backward", "lrn_forward", "lrn_backward",
    "batch_norm_forward_inference", "batch_norm_backward_inference", "relu_forward", "relu_backward",
    "add_in_place", "conv2d_batch_norm_relu_inference", "concat_batch_norm_relu_inference",
    "batch_norm_relu_forward_training", "batch_norm_relu_backward", "concatenate", "sgd_update",
]
