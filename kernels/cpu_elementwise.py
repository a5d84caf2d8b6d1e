"""ReLU's forward and backward, and the in-place add, for the Numba backend (see tinycnn.kernels.cpu
for the whole picture).

Each is one pass over flat memory: a chunk of consecutive elements per parallel item, on the
kernel threads. The forward is bound by memory traffic, so it runs at about np.maximum's speed;
the backward writes gx in one pass where NumPy's gy * (y > 0) first made a mask of the whole array.
"""
import math

import numpy as np
from numba import njit

from tinycnn.kernels.parallel import parallel_pieces, parallel_range


@njit(cache=True, nogil=True)
def _relu_forward(x, y, start, stop):
    # x, y flat; the elements in [start, stop). The loop runs over slices from index 0 and compares
    # with a zero of x's dtype: then LLVM sees no negative index and no float64 round trip, and
    # vectorises it (over range(start, stop) it ran at half NumPy's speed). `v < 0` rather than
    # `v > 0` so NaN passes through, as np.maximum(x, 0) lets it.
    x_chunk, y_chunk = x[start:stop], y[start:stop]
    zero = x.dtype.type(0)
    for i in range(x_chunk.size):
        v = x_chunk[i]
        y_chunk[i] = zero if v < zero else v


@njit(cache=True, nogil=True)
def _relu_in_place(x, start, stop):
    # x flat; its elements in [start, stop) overwritten by max(x, 0). One array, not _relu_forward
    # with y = x: given two arguments that overlap, LLVM's vectorised loop fails its run-time
    # overlap check and the scalar loop runs, at half the speed or less.
    x_chunk = x[start:stop]
    zero = x.dtype.type(0)
    for i in range(x_chunk.size):
        v = x_chunk[i]
        x_chunk[i] = zero if v < zero else v


def relu_forward(x, out=None):
    """y = max(x, 0), element by element (NaN stays NaN, as in np.maximum); written into `out`
    (x's shape and dtype, may be x itself) and out returned when it is given."""
    if out is x and x.flags.c_contiguous:
        x_flat = x.reshape(-1)  # a view
        parallel_range(lambda start, stop: _relu_in_place(x_flat, start, stop), x_flat.size, 1)
        return x
    x_flat = np.ascontiguousarray(x).reshape(-1)  # a view where x is contiguous
    # A contiguous out is written directly (an out that overlaps x: each element is read just before
    # it is overwritten); any other is filled from a contiguous result afterwards.
    direct = out is not None and out.flags.c_contiguous
    y_flat = out.reshape(-1) if direct else np.empty_like(x_flat)
    parallel_range(lambda start, stop: _relu_forward(x_flat, y_flat, start, stop), x_flat.size, 1)
    if out is None:
        return y_flat.reshape(x.shape)  # x's shape, even 0-d (ascontiguousarray makes that 1-d)
    if not direct:
        out[...] = y_flat.reshape(x.shape)
    return out


@njit(cache=True, nogil=True)
def _add_in_place(y, x, start, stop):
    # y, x flat and of one shape; the elements in [start, stop), as slices from index 0 (see
    # _relu_forward).
    y_chunk, x_chunk = y[start:stop], x[start:stop]
    for i in range(y_chunk.size):
        y_chunk[i] += x_chunk[i]


def add_in_place(y, x):
    """y += x, with x broadcast to y's shape; returns y. On the kernel threads where x has y's
    shape (a residual add: NumPy's add runs on one thread); NumPy's add for a broadcast x."""
    if x.shape != y.shape:
        np.add(y, x, out=y)
        return y
    if x is not y and np.may_share_memory(x, y):
        x = x.copy()  # read every x before any y is written, as NumPy does
    x_flat = np.ascontiguousarray(x).reshape(-1)
    y_flat = y.reshape(-1) if y.flags.c_contiguous else np.ascontiguousarray(y).reshape(-1)
    parallel_range(lambda start, stop: _add_in_place(y_flat, x_flat, start, stop), y_flat.size, 1)
    if not y.flags.c_contiguous:
        y[...] = y_flat.reshape(y.shape)
    return y


@njit(cache=True, nogil=True)
def _copy_rows(x, y, offset, start, stop):
    # y[r, offset:offset + width] = x[r] for the rows r in [start, stop) of x (rows, width).
    width = x.shape[1]
    for r in range(start, stop):
        source, target = x[r], y[r, offset:offset + width]
        for i in range(width):
            target[i] = source[i]


# concatenate: results of fewer values than this are NumPy's (one thread), whose single copy per
# input cost less than a call per input and thread here: DenseNet-121's joins at batch 8, 14x14
# (1.6 M values, 24 inputs) 0.42 ms by NumPy against 0.57, at 7x7 0.09 against 0.18; at 28x28
# (3.2 M) 0.84 against 0.68, at 56x56 (6.4 M) 1.58 against 1.13 (torch.cat 0.96).
CONCATENATE_THREADED = 1 << 21


def concatenate(xs, axis):
    """As the reference (np.concatenate), on the kernel threads for a big result: NumPy copies on
    one, and a DenseNet-121 training step spent 52 ms joining its layers' inputs (torch.cat: 29).
    Seen as (outer, width_k) rows, with outer the product of the axes before `axis`, each input's
    rows go into the output's rows side by side; the items are the inputs' rows, input after input,
    so that a thread's range touches few inputs."""
    dtype = np.result_type(*xs)
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    if math.prod(shape) < CONCATENATE_THREADED:
        return np.concatenate(xs, axis=axis)
    xs = [np.ascontiguousarray(x, dtype=dtype) for x in xs]
    y = np.empty(shape, dtype=dtype)
    outer = math.prod(shape[:axis])
    rows = [x.reshape(outer, -1) if outer else x.reshape(0, 0) for x in xs]
    y_rows = y.reshape(outer, -1) if outer else y.reshape(0, 0)
    offsets = np.cumsum([0] + [r.shape[1] for r in rows])  # each input's first column in y_rows
    items = sum(r.shape[0] for r in rows)
    parallel_pieces(lambda k, start, stop: _copy_rows(rows[k], y_rows, offsets[k], start, stop),
                    [r.shape[0] for r in rows], max(1, y.size // max(1, items)))
    return y


@njit(cache=True, nogil=True)
def _relu_backward(gy, y, gx, start, stop):
    # gy, y, gx flat; the elements in [start, stop), as slices from index 0 (see _relu_forward).
    # dy/dx = 1 where y > 0, else 0.
    gy_chunk, y_chunk, gx_chunk = gy[start:stop], y[start:stop], gx[start:stop]
    zero = gy.dtype.type(0)
    for i in range(gy_chunk.size):
        gx_chunk[i] = gy_chunk[i] if y_chunk[i] > zero else zero


def relu_backward(gy, y):
    """gx = gy where y > 0, else 0."""
    gy_flat, y_flat = np.ascontiguousarray(gy).reshape(-1), np.ascontiguousarray(y).reshape(-1)
    gx_flat = np.empty_like(gy_flat)
    parallel_range(lambda start, stop: _relu_backward(gy_flat, y_flat, gx_flat, start, stop), gy_flat.size, 2)
    return gx_flat.reshape(gy.shape)
