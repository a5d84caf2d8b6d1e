"""A convolution's weight in the layouts of conv2d's products, for the Numba backend: the live
kernel taps gathered out of W (OC, C, KH, KW) on every thread.

conv2d's paths multiply by the weight in another order than W's own: the tap products
(kernels/cpu_conv_taps.py) one (OC, C) matrix per tap, the pixel-major columns (kernels/cpu_conv.py)
(OC, KH*KW*C) with the channels innermost, and a kernel cut to its live taps only those taps. Each
is a copy of the weight every call, as the weight changes every step. NumPy made these copies on
one thread, element by element along W's tap axis (a transposed view, or `take`): 0.22-0.33 ms for
ResNet-18's 3x3 256->256 and 512->512 weights, where a tap's values lie 9 floats apart. Here each
output channel o is one item of a parallel loop: its C*KH*KW values (at most 18 KiB for 512
channels) are read once into the core's cache and written out in the layout asked for.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.parallel import parallel_range


@njit(cache=True, nogil=True)
def _gather_taps(W, taps, out, start, stop):
    # out[t, o, c] = W[o, c, taps[t]] for the output channels o in [start, stop); W (OC, C, KH*KW),
    # out a (T, OC, C) view of the layout asked for (its strides say which).
    C = W.shape[1]
    for o in range(start, stop):
        for t in range(taps.shape[0]):
            tap = taps[t]
            for c in range(C):
                out[t, o, c] = W[o, c, tap]


def gather_taps(W, taps, layout):
    """The taps `taps` (flat indices into KH*KW) of W (OC, C, KH, KW), as a new C-contiguous array:
    layout "tap" (T, OC, C), "pixel" (OC, T, C) or "channel" (OC, C, T)."""
    W = np.ascontiguousarray(W)
    OC, C = W.shape[:2]
    taps = np.asarray(taps, dtype=np.int64)
    T = taps.shape[0]
    if layout == "tap":
        out = np.empty((T, OC, C), dtype=W.dtype)
        view = out
    elif layout == "pixel":
        out = np.empty((OC, T, C), dtype=W.dtype)
        view = out.transpose(1, 0, 2)
    elif layout == "channel":
        out = np.empty((OC, C, T), dtype=W.dtype)
        view = out.transpose(2, 0, 1)
    else:
        raise ValueError(f"gather_taps: layout must be 'tap', 'pixel' or 'channel', got {layout!r}")
    W3 = W.reshape(OC, C, -1)
    # An output channel's work is all of its C*KH*KW values, not only the T*C it keeps: each tap's
    # values lie KH*KW apart, so every cache line of W is read whatever the taps (the centre tap of
    # a 512x512x3x3 weight, one value in 9, read all 9.4 MB, on one thread when counted as T*C:
    # 0.43 ms, against 0.33 on two).
    parallel_range(lambda start, stop: _gather_taps(W3, taps, view, start, stop), OC, W3.shape[1] * W3.shape[2])
    return out
