"""Batch normalisation and local response normalisation for the Numba backend (see
tinycnn.kernels.cpu for the whole picture).

    batch norm     one channel c per parallel item (its statistics need all of it); the statistics
                   are accumulated in float64, so they differ from the reference by round-off only;
                   evaluation mode's apply (constant statistics) one (n, c) row per item, its
                   backward one channel per item
    LRN            one (n, c) row per item (it reads the neighbouring channels), the window summed
                   in the reference's order
"""
import math

import numpy as np
from numba import njit

from tinycnn.kernels.parallel import parallel_pieces, parallel_range

# The batch-norm kernels run a block of channels per chunk (a channel's statistics need all of it),
# sample by sample: in each sample the block's channels lie side by side, and the next sample's
# lie C * L values further on. A block of at least CHANNEL_RUN values a sample keeps those runs
# long enough to stream. ResNet-18's BatchNorm-ReLU at 8x8, 64 channels, batch 1024, forward and
# backward, 2 threads: 3.9 and 5.7 ms in parallel_range's blocks of one channel (64 values a
# sample, 16 KiB apart; 1.5 times the time per sample of batch 256), 2.6 and 4.0 with runs of
# 256 values, 1.7 and 2.7 with 1024 or 2048, 2.6 and 4.7 with 4096 (two blocks: one per thread,
# and one thread started late); at 4x4, 128 channels, 1.8 and 3.0 -> 1.2 and 1.6 (1024). Layers
# whose planes are long runs already (DenseNet-121's at 56x56 or 14x14, batch 8) do not change.
CHANNEL_RUN = 1024


def _block_channels(L):
    """The fewest channels of planes of L values that make a block of CHANNEL_RUN values a sample."""
    return -(-CHANNEL_RUN // max(1, L))


def _as_ncl(x):
    """(N, C, ...) -> contiguous (N, C, L): batch norm and LRN see every trailing axis as one."""
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))  # not -1: N may be 0


# The per-channel sums below are compiled with fastmath={"reassoc"}: the compiler may add in any
# order, so it splits each sum over the lanes of SIMD registers instead of waiting for one float64
# add after another (4x faster on a 56x56 layer). The sums stay in float64, so the order changes
# them by round-off only, and it is fixed by the compiled code, not by the threads: runs repeat bit
# for bit. The loops that write arrays keep IEEE order (no fastmath), as the reference computes.
#
# Every loop runs sample by sample over a block of channels [start, stop), so x[n, start:stop] is
# read in memory order: at 1x1 or 2x2 maps (a ResNet's last stages on 32x32 images) one channel's
# values lie a whole sample apart, and a loop over one channel at a time read a cache line for
# each value. The loops index x[n, c, l] directly rather than through a row view x[n, c]: making a
# view per (n, c) cost more than its few values at those maps (BatchNorm-ReLU's backward, one
# thread: 32 x 512 x 1 x 1 0.34 -> 0.14 ms, 32 x 128 x 4 x 4 0.11 -> 0.06, and 8 x 2048 x 7 x 7
# 0.89 -> 0.69; the same bits).

@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _channel_sums(x, start, stop, total):
    # x (N, C, L); total (stop - start,) float64: total[k] += the values of channel start + k.
    for n in range(x.shape[0]):
        for k in range(stop - start):
            partial = 0.0
            for l in range(x.shape[2]):
                partial += x[n, start + k, l]
            total[k] += partial


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _channel_centred_squares(x, start, stop, m, squares):
    # x (N, C, L); m, squares (stop - start,) float64: squares[k] += sum of (x - m[k])^2 over
    # channel start + k.
    for n in range(x.shape[0]):
        for k in range(stop - start):
            partial = 0.0
            for l in range(x.shape[2]):
                d = x[n, start + k, l] - m[k]
                partial += d * d
            squares[k] += partial


@njit(cache=True, nogil=True)
def _store_statistics(m, squares, count, eps, gamma, start, mean, var, inv_std, like):
    # The batch's statistics of the channels from `start` on, from their float64 means m and sums
    # of squared deviations: mean, var (biased) and inv_std stored in their dtype; returns
    # gamma * inv_std per channel in like's dtype, the gain the forward multiplies by.
    gain = np.empty(m.shape[0], dtype=like.dtype)
    for k in range(m.shape[0]):
        c = start + k
        mean[c] = m[k]
        var[c] = squares[k] / count
        inv_std[c] = 1 / np.sqrt(var[c] + eps)
        gain[k] = gamma[c] * inv_std[c]
    return gain


@njit(cache=True, nogil=True)
def _batch_norm_forward_training(x, gamma, beta, eps, y, mean, var, inv_std, residual, relu, start, stop):
    # x, y (N, C, L); gamma, beta, mean, var, inv_std (C,); the channels c in [start, stop). Then
    # y += residual (x's shape; an empty array for none) and y = max(y, 0) when relu, in the same
    # pass: batch_norm_relu_forward_training.
    N, C, L = x.shape
    count = N * L
    total, squares = np.zeros(stop - start), np.zeros(stop - start)  # float64
    _channel_sums(x, start, stop, total)
    m = total / count  # (stop - start,) float64
    _channel_centred_squares(x, start, stop, m, squares)
    gain = _store_statistics(m, squares, count, eps, gamma, start, mean, var, inv_std, x)
    # y = gamma * (x - mean) * inv_std + beta, centred first: folding the mean into one
    # multiply-add (x * gain + shift) cancelled two large float32 terms where the mean is large
    # beside the spread, off by 2e-5 for values 1.6928 and 1.6935. The mean and gain in x's dtype,
    # so that the loop runs in it (in float64 it ran at half the vector width, 3-13% slower:
    # 0.54 -> 0.47 ms for 8 x 1024 x 14 x 14; one call, 2 threads).
    zero = y.dtype.type(0)
    for n in range(N):
        for k in range(stop - start):
            c = start + k
            mk, gk, shift = mean[c], gain[k], beta[c]
            if residual.size:  # add_in_place's and relu_forward's arithmetic after BatchNorm's
                for l in range(L):
                    v = (x[n, c, l] - mk) * gk + shift + residual[n, c, l]
                    y[n, c, l] = zero if relu and v < zero else v
            elif relu:
                for l in range(L):
                    v = (x[n, c, l] - mk) * gk + shift
                    y[n, c, l] = zero if v < zero else v
            else:
                for l in range(L):
                    y[n, c, l] = (x[n, c, l] - mk) * gk + shift


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _vector_sums(x, start, stop, total, m, squares):
    # x (N, C): one value per sample and channel (maps of one pixel). total[k] += the values of
    # channel start + k; then, if m is not empty, squares[k] += their (x - m[k])^2 instead. The
    # loops run over slices from index 0 along the channels, which lie side by side: LLVM
    # vectorises them (over range(start, stop) it would not; see _batch_norm_forward_vectors).
    for n in range(x.shape[0]):
        row = x[n, start:stop]
        if m.size:
            for k in range(row.shape[0]):
                d = row[k] - m[k]
                squares[k] += d * d
        else:
            for k in range(row.shape[0]):
                total[k] += row[k]


@njit(cache=True, nogil=True)
def _batch_norm_forward_vectors(x, gamma, beta, eps, y, mean, var, inv_std, residual, relu, start, stop):
    # _batch_norm_forward_training on maps of one pixel, x, y and residual as (N, C): the same
    # arithmetic, in the same order, so the same bits; but the inner loops run along the channels,
    # where the general kernel's ran along one pixel, one channel at a time (32 x 512 x 1 x 1, one
    # thread: 0.075 ms there, see tests/test_normalization.py for the bits).
    N = x.shape[0]
    total, squares = np.zeros(stop - start), np.zeros(stop - start)  # float64
    _vector_sums(x, start, stop, total, np.empty(0), squares)
    m = total / N
    _vector_sums(x, start, stop, total, m, squares)
    gain = _store_statistics(m, squares, N, eps, gamma, start, mean, var, inv_std, x)
    zero = y.dtype.type(0)
    means, shifts = mean[start:stop], beta[start:stop]
    for n in range(N):
        row, out = x[n, start:stop], y[n, start:stop]
        if residual.size:
            added = residual[n, start:stop]
            for k in range(row.shape[0]):
                v = (row[k] - means[k]) * gain[k] + shifts[k] + added[k]
                out[k] = zero if relu and v < zero else v
        elif relu:
            for k in range(row.shape[0]):
                v = (row[k] - means[k]) * gain[k] + shifts[k]
                out[k] = zero if v < zero else v
        else:
            for k in range(row.shape[0]):
                out[k] = (row[k] - means[k]) * gain[k] + shifts[k]


def batch_norm_forward_training(x, gamma, beta, eps):
    """Normalise x (N, C, ...) per channel with its own batch statistics, then scale and shift.

    Returns (y, mean, var, inv_std), the last three (C,); var is the biased variance.
    gamma or beta may be None (no scale, no shift).
    """
    return batch_norm_relu_forward_training(x, gamma, beta, eps, None, False)


def batch_norm_relu_forward_training(x, gamma, beta, eps, residual, relu):
    """As the reference: batch_norm_forward_training, then y += residual (when not None) and y =
    max(y, 0) (when relu), in the pass that writes y: where the three ran one after the other, the
    add and the ReLU each read and wrote y again (a ResNet block's bn -> add -> relu, a DenseNet
    layer's norm -> relu)."""
    x3 = _as_ncl(x)  # (N, C, L)
    C = x3.shape[1]
    gamma = np.ones(C, x.dtype) if gamma is None else np.ascontiguousarray(gamma, dtype=x.dtype)
    beta = np.zeros(C, x.dtype) if beta is None else np.ascontiguousarray(beta, dtype=x.dtype)
    y = np.empty_like(x3)
    mean, var, inv_std = (np.empty(C, dtype=x.dtype) for _ in range(3))
    if x3.shape[0] * x3.shape[2] == 0:
        # An empty batch: y is empty, and the statistics of no values are NaN, as the reference's
        # mean of nothing (the loops below would divide by a count of 0).
        mean[:], var[:], inv_std[:] = np.nan, np.nan, np.nan
        return y.reshape(x.shape), mean, var, inv_std
    eps = float(eps)
    residual = (np.empty((0, 0, 0), x.dtype) if residual is None
                else _as_ncl(np.broadcast_to(residual, x.shape)).astype(x.dtype, copy=False))
    relu = bool(relu)
    if x3.shape[2] == 1:  # maps of one pixel: the loops along the channels (see _batch_norm_forward_vectors)
        N = x3.shape[0]
        x2, y2 = x3.reshape(N, C), y.reshape(N, C)
        residual2 = residual.reshape(N, C) if residual.size else np.empty((0, 0), x.dtype)
        parallel_range(lambda start, stop: _batch_norm_forward_vectors(x2, gamma, beta, eps, y2, mean, var, inv_std,
                                                                       residual2, relu, start, stop), C, 3 * N)
        return y.reshape(x.shape), mean, var, inv_std
    parallel_range(lambda start, stop: _batch_norm_forward_training(x3, gamma, beta, eps, y, mean, var, inv_std,
                                                                    residual, relu, start, stop),
                   C, 3 * x3.shape[0] * x3.shape[2], _block_channels(x3.shape[2]))
    return y.reshape(x.shape), mean, var, inv_std


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _channel_gradient_sums(gy, y, masked, x, mean, inv_std, start, stop, sum_gy, sum_gy_x_hat):
    # gy, x (N, C, L); mean, inv_std (C,); sum_gy, sum_gy_x_hat (stop - start,) float64: += sum(g)
    # and sum(g * x_hat) over channel c = start + k, x_hat = (x - mean[c]) * inv_std[c], where g is
    # gy, or, when masked, gy where y (a ReLU's output, x's shape) > 0 and 0 elsewhere (fastmath
    # and the loop order: see _channel_sums).
    zero = gy.dtype.type(0)
    L = x.shape[2]
    for n in range(x.shape[0]):
        for k in range(stop - start):
            c = start + k
            m, s = mean[c], inv_std[c]
            partial_gy, partial_gy_x_hat = 0.0, 0.0
            if masked:
                for l in range(L):
                    g = gy[n, c, l] if y[n, c, l] > zero else zero
                    partial_gy += g
                    partial_gy_x_hat += g * ((x[n, c, l] - m) * s)
            else:
                for l in range(L):
                    partial_gy += gy[n, c, l]
                    partial_gy_x_hat += gy[n, c, l] * ((x[n, c, l] - m) * s)
            sum_gy[k] += partial_gy
            sum_gy_x_hat[k] += partial_gy_x_hat


# The masked gradient written first, then read by BatchNorm's two passes, rather than the mask
# applied as gy is read, where a map has fewer pixels than this: the short masked loops ran slowly
# there (one thread, N = 32: 3 pixels 0.15 -> 0.09 ms, 4 pixels 0.31 -> 0.15, 9 pixels 0.09 ->
# 0.07; at 1 or 2 pixels the same either way; from 16 pixels on, masking as read is faster: 16
# 0.063 against 0.072, 64 0.063 against 0.087).
MASK_FIRST_PIXELS = 16


@njit(cache=True, nogil=True)
def _store_parameter_gradients(sum_gy, sum_gy_x_hat, start, ggamma, gbeta):
    # gbeta and ggamma of the channels from `start` on: the float64 sums of gy and of gy * x_hat,
    # rounded to the parameters' dtype.
    for k in range(sum_gy.shape[0]):
        gbeta[start + k] = sum_gy[k]
        ggamma[start + k] = sum_gy_x_hat[k]


@njit(cache=True, nogil=True)
def _means_in_dtype(sum_gy, sum_gy_x_hat, count, like):
    # The two means of the backward's formula, sum / count, rounded to like's dtype once per channel.
    mean_gy = np.empty(sum_gy.shape[0], dtype=like.dtype)
    mean_gy_x_hat = np.empty(sum_gy.shape[0], dtype=like.dtype)
    for k in range(sum_gy.shape[0]):
        mean_gy[k] = sum_gy[k] / count
        mean_gy_x_hat[k] = sum_gy_x_hat[k] / count
    return mean_gy, mean_gy_x_hat


@njit(cache=True, nogil=True)
def _batch_norm_backward(gy, y, x, gain, mean, inv_std, gx, ggamma, gbeta, g_out, start, stop):
    # gy, x, gx (N, C, L); gain = gamma * inv_std, mean, inv_std, ggamma, gbeta (C,); the channels
    # c in [start, stop). With y (a ReLU's output; an empty array for none) the gradient g that
    # BatchNorm receives is gy masked by y > 0, and with g_out (x's shape; an empty array for none)
    # it is written there too: batch_norm_relu_backward.
    N, C, L = x.shape
    count = N * L
    zero = gy.dtype.type(0)
    masked = y.size > 0  # apply the mask as gy is read, in both passes below
    g = gy
    if masked and g_out.size:
        # The masked gradient is wanted anyway (a residual's): written first, it is what both
        # passes read, while this block of channels is still in the core's cache, and y is not
        # read again (8 x 256 x 56 x 56: 5.9 ms masking as read, against 5.6 for relu_backward
        # and batch_norm_backward in turn).
        for n in range(N):
            for k in range(stop - start):
                c = start + k
                for l in range(L):
                    g_out[n, c, l] = gy[n, c, l] if y[n, c, l] > zero else zero
        g, masked = g_out, False
    sum_gy, sum_gy_x_hat = np.zeros(stop - start), np.zeros(stop - start)  # float64
    _channel_gradient_sums(g, y, masked, x, mean, inv_std, start, stop, sum_gy, sum_gy_x_hat)
    _store_parameter_gradients(sum_gy, sum_gy_x_hat, start, ggamma, gbeta)
    # gx = gain * (gy - sum(gy)/n - x_hat * sum(gy x_hat)/n), with the two means rounded to x's
    # dtype once per channel: the loop then runs in x's dtype (float64 means made every element
    # go through float64, at half the vector width: 3.4 -> 2.9 ms for 8 x 256 x 56 x 56, 0.76 -> 0.55
    # for 8 x 1024 x 14 x 14, one call, 2 threads).
    mean_gy, mean_gy_x_hat = _means_in_dtype(sum_gy, sum_gy_x_hat, count, x)
    for n in range(N):
        for k in range(stop - start):
            c = start + k
            m, s, w, a, b = mean[c], inv_std[c], gain[c], mean_gy[k], mean_gy_x_hat[k]
            if masked:  # relu_backward's mask, then BatchNorm's formula
                for l in range(L):
                    x_hat = (x[n, c, l] - m) * s
                    gx[n, c, l] = w * ((g[n, c, l] if y[n, c, l] > zero else zero) - a - x_hat * b)
            else:
                for l in range(L):
                    x_hat = (x[n, c, l] - m) * s
                    gx[n, c, l] = w * (g[n, c, l] - a - x_hat * b)
            if g_out.size and not y.size:  # no ReLU: the residual's gradient is gy itself
                for l in range(L):
                    g_out[n, c, l] = g[n, c, l]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _vector_gradient_sums(g, y, masked, x, mean, inv_std, start, stop, sum_gy, sum_gy_x_hat):
    # _channel_gradient_sums on maps of one pixel, g, y and x as (N, C), the loops along the
    # channels (see _vector_sums).
    zero = g.dtype.type(0)
    means, scales = mean[start:stop], inv_std[start:stop]
    for n in range(x.shape[0]):
        grads, outputs, row = g[n, start:stop], y[n, start:stop], x[n, start:stop]
        if masked:
            for k in range(row.shape[0]):
                value = grads[k] if outputs[k] > zero else zero
                sum_gy[k] += value
                sum_gy_x_hat[k] += value * ((row[k] - means[k]) * scales[k])
        else:
            for k in range(row.shape[0]):
                sum_gy[k] += grads[k]
                sum_gy_x_hat[k] += grads[k] * ((row[k] - means[k]) * scales[k])


@njit(cache=True, nogil=True)
def _batch_norm_backward_vectors(gy, y, x, gain, mean, inv_std, gx, ggamma, gbeta, g_out, start, stop):
    # _batch_norm_backward on maps of one pixel, every array (N, C): the same arithmetic in the same
    # order, so the same bits, but the loops along the channels, where the general kernel's ran
    # along one pixel, with the ReLU's mask a branch per value that the processor could not guess
    # (32 x 512 x 1 x 1, one thread: 0.18-0.22 ms there).
    N = x.shape[0]
    zero = gy.dtype.type(0)
    masked = y.size > 0
    g = gy
    if masked and g_out.size:  # the masked gradient written first, as there
        for n in range(N):
            grads, outputs, out = gy[n, start:stop], y[n, start:stop], g_out[n, start:stop]
            for k in range(out.shape[0]):
                out[k] = grads[k] if outputs[k] > zero else zero
        g, masked = g_out, False
    sum_gy, sum_gy_x_hat = np.zeros(stop - start), np.zeros(stop - start)  # float64
    _vector_gradient_sums(g, y, masked, x, mean, inv_std, start, stop, sum_gy, sum_gy_x_hat)
    _store_parameter_gradients(sum_gy, sum_gy_x_hat, start, ggamma, gbeta)
    mean_gy, mean_gy_x_hat = _means_in_dtype(sum_gy, sum_gy_x_hat, N, x)
    means, scales, gains = mean[start:stop], inv_std[start:stop], gain[start:stop]
    for n in range(N):
        grads, row, out = g[n, start:stop], x[n, start:stop], gx[n, start:stop]
        if masked:
            outputs = y[n, start:stop]
            for k in range(row.shape[0]):
                x_hat = (row[k] - means[k]) * scales[k]
                out[k] = gains[k] * ((grads[k] if outputs[k] > zero else zero) - mean_gy[k] - x_hat * mean_gy_x_hat[k])
        else:
            for k in range(row.shape[0]):
                x_hat = (row[k] - means[k]) * scales[k]
                out[k] = gains[k] * (grads[k] - mean_gy[k] - x_hat * mean_gy_x_hat[k])
        if g_out.size and not y.size:  # no ReLU: the residual's gradient is gy itself
            copy = g_out[n, start:stop]
            for k in range(row.shape[0]):
                copy[k] = grads[k]


def batch_norm_backward(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_training: (gx, ggamma, gbeta), the last two (C,).
    gamma None counts as 1."""
    return batch_norm_relu_backward(gy, None, x, gamma, mean, inv_std, False, False)[:3]


def batch_norm_relu_backward(gy, y, x, gamma, mean, inv_std, relu, needs_residual_grad):
    """As the reference: (gx, ggamma, gbeta, gresidual) of batch_norm_relu_forward_training, in
    one call per block of channels, where relu_backward wrote the masked gradient out for
    BatchNorm's backward to read twice from memory. Without a residual that needs its gradient, the
    ReLU's mask (y > 0) is applied as gy is read; with one, gresidual (the masked gradient) is
    written first and BatchNorm's two passes read it while the block is in cache (see
    _batch_norm_backward). gresidual is None unless needs_residual_grad."""
    x3, gy3 = _as_ncl(x), _as_ncl(gy).astype(x.dtype, copy=False)  # (N, C, L)
    C = x3.shape[1]
    inv_std = np.ascontiguousarray(inv_std, dtype=x.dtype)
    gain = inv_std if gamma is None else np.ascontiguousarray(gamma * inv_std, dtype=x.dtype)
    gx = np.empty_like(x3)
    ggamma, gbeta = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
    # On maps of fewer than MASK_FIRST_PIXELS pixels the ReLU's mask is applied in a pass of its
    # own, into g_out as for a residual, even where no residual wants it (see MASK_FIRST_PIXELS).
    mask_first = needs_residual_grad or (relu and 1 < x3.shape[2] < MASK_FIRST_PIXELS)  # (1: no branches there)
    g_out = np.empty_like(x3) if mask_first else np.empty((0, 0, 0), x.dtype)
    gresidual = g_out.reshape(x.shape) if needs_residual_grad else None
    if x3.shape[0] * x3.shape[2] == 0:  # an empty batch: sums over no values are 0, gx is empty
        ggamma[:], gbeta[:] = 0, 0
        return gx.reshape(x.shape), ggamma, gbeta, gresidual
    mask = _as_ncl(y) if relu else np.empty((0, 0, 0), x.dtype)
    mean = np.ascontiguousarray(mean, dtype=x.dtype)
    if x3.shape[2] == 1:  # maps of one pixel: the loops along the channels (see _batch_norm_backward_vectors)
        N = x3.shape[0]
        vectors = [a.reshape(a.shape[0], a.shape[1]) for a in (gy3, mask, x3, gx, g_out)]
        parallel_range(lambda start, stop: _batch_norm_backward_vectors(
            vectors[0], vectors[1], vectors[2], gain, mean, inv_std, vectors[3], ggamma, gbeta, vectors[4], start, stop),
            C, 2 * N)
        return gx.reshape(x.shape), ggamma, gbeta, gresidual
    parallel_range(lambda start, stop: _batch_norm_backward(gy3, mask, x3, gain, mean, inv_std, gx, ggamma, gbeta,
                                                            g_out, start, stop),
                   C, 2 * x3.shape[0] * x3.shape[2], _block_channels(x3.shape[2]))
    return gx.reshape(x.shape), ggamma, gbeta, gresidual



@njit(cache=True, nogil=True)
def _batch_norm_forward_inference(x, gamma, beta, mean, inv_std, y, start, stop):
    # x, y (N, C, L); gamma, beta, mean, inv_std (C,); the rows nc = n * C + c in [start, stop).
    # The reference's order of operations, (x - mean) * inv_std * gamma + beta, in x's dtype: the
    # row loop the fused kernels below share, so that their bits are these.
    C = x.shape[1]
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        _normalise_row(x[n, c], y[n, c], mean[c], inv_std[c], gamma[c], beta[c], False)


@njit(cache=True, nogil=True)
def _batch_norm_relu_rows(y, first_sample, stop_sample, first_row, stop_row, gamma, beta, mean, inv_std,
                          residual, relu):
    # y (N, C, H, W) normalised in place, plus residual (y's shape; an empty array for none), then
    # max(y, 0) when relu, for rows [first_row, stop_row) of samples [first_sample, stop_sample): a
    # convolution's output just written (see cpu_conv.conv2d_batch_norm_relu_inference). The
    # arithmetic and its order are those of _batch_norm_forward_inference, _add_in_place and
    # _relu_forward, so the bits are theirs too.
    zero = y.dtype.type(0)
    for n in range(first_sample, stop_sample):
        for c in range(y.shape[1]):
            m, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
            for i in range(first_row, stop_row):
                row = y[n, c, i]
                if residual.size:
                    added = residual[n, c, i]
                    for j in range(row.size):
                        v = (row[j] - m) * s * g + b + added[j]
                        row[j] = zero if relu and v < zero else v
                else:
                    _normalise_row(row, row, m, s, g, b, relu)


@njit(cache=True, nogil=True)
def _concat_batch_norm_relu_rows(x, y, offset, gamma, beta, mean, inv_std, relu, start, stop):
    # The rows nc = n * C + c in [start, stop) of one input x (N, C, L), normalised (as channel
    # offset + c of the concatenation) into y[n, offset + c], then max(y, 0) when relu: the
    # arithmetic of _batch_norm_forward_inference and _relu_forward, in their order.
    C = x.shape[1]
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        k = offset + c
        _normalise_row(x[n, c], y[n, k], mean[k], inv_std[k], gamma[k], beta[k], relu)


@njit(inline="always")
def _normalise_row(source, target, m, s, g, b, relu):
    # target = (source - m) * s * g + b, then max(target, 0) when relu (source may be target).
    zero = target.dtype.type(0)
    if relu:
        for l in range(source.size):
            v = (source[l] - m) * s * g + b
            target[l] = zero if v < zero else v
    else:
        for l in range(source.size):
            target[l] = (source[l] - m) * s * g + b


def concat_batch_norm_relu_inference(xs, gamma, beta, mean, inv_std, relu):
    """As the reference: the inputs xs (N, C_k, ...) joined along the channels, normalised with
    given statistics and rectified (when relu), in one pass that reads each input once and writes
    the result once: where concat, BatchNorm and ReLU one after the other read and wrote the whole
    concatenation three times (a DenseNet layer's BN-ReLU on all the maps before it). The items
    are the inputs' rows, input after input, so that a thread's range touches few inputs."""
    trailing = tuple(xs[0].shape[2:])
    xs = [_as_ncl(x) for x in xs]
    N, L = xs[0].shape[0], xs[0].shape[2]
    C = sum(x.shape[1] for x in xs)
    dtype = xs[0].dtype
    gamma, beta, mean, inv_std, _, relu = inference_normalisation((N, C), dtype, gamma, beta, mean, inv_std, None,
                                                                  relu)
    y = np.empty((N, C, L), dtype=dtype)
    offsets = np.cumsum([0] + [x.shape[1] for x in xs])  # each input's first channel in y
    parallel_pieces(lambda k, start, stop: _concat_batch_norm_relu_rows(xs[k], y, offsets[k], gamma, beta, mean,
                                                                        inv_std, relu, start, stop),
                    [x.shape[0] * x.shape[1] for x in xs], 2 * L)
    return y.reshape((N, C) + trailing)


def inference_normalisation(shape, dtype, gamma, beta, mean, inv_std, residual, relu):
    """The (gamma, beta, mean, inv_std, residual, relu) that _batch_norm_relu_rows takes for an
    output of `shape` (N, C, H, W): contiguous (C,) arrays of its dtype, gamma None as ones, beta
    None as zeros, and the residual broadcast to the output's shape (an empty array for None)."""
    C = shape[1]
    gamma = np.ones(C, dtype) if gamma is None else np.ascontiguousarray(gamma, dtype=dtype)
    beta = np.zeros(C, dtype) if beta is None else np.ascontiguousarray(beta, dtype=dtype)
    if residual is None:
        residual = np.empty((0, 0, 0, 0), dtype)
    else:  # a view where it has the output's shape already, as a ResNet's shortcut has
        residual = np.ascontiguousarray(np.broadcast_to(residual, shape), dtype=dtype)
    return (gamma, beta, np.ascontiguousarray(mean, dtype=dtype), np.ascontiguousarray(inv_std, dtype=dtype),
            residual, bool(relu))


def batch_norm_forward_inference(x, gamma, beta, mean, inv_std):
    """Normalise x (N, C, ...) per channel with given statistics (evaluation mode's running ones),
    then scale and shift: y = (x - mean) * inv_std * gamma + beta. gamma or beta may be None."""
    x3 = _as_ncl(x)  # (N, C, L)
    N, C, L = x3.shape
    gamma, beta, mean, inv_std, _, _ = inference_normalisation(x3.shape, x.dtype, gamma, beta, mean, inv_std,
                                                               None, False)
    y = np.empty_like(x3)
    # One (n, c) row per item, not one channel: inference batches are often small.
    parallel_range(lambda start, stop: _batch_norm_forward_inference(x3, gamma, beta, mean, inv_std, y, start, stop),
                   N * C, 2 * L)
    return y.reshape(x.shape)

@njit(cache=True, nogil=True)
def _batch_norm_backward_inference(gy, x, gain, mean, inv_std, gx, ggamma, gbeta, start, stop):
    # gy, x, gx (N, C, L); gain = gamma * inv_std, mean, inv_std, ggamma, gbeta (C,); the channels
    # c in [start, stop). Constant statistics: gx = gain * gy, no term through the mean or var.
    N, C, L = x.shape
    sum_gy, sum_gy_x_hat = np.zeros(stop - start), np.zeros(stop - start)  # float64
    _channel_gradient_sums(gy, gy, False, x, mean, inv_std, start, stop, sum_gy, sum_gy_x_hat)  # no mask
    _store_parameter_gradients(sum_gy, sum_gy_x_hat, start, ggamma, gbeta)
    for n in range(N):
        for k in range(stop - start):
            gy_row, gx_row = gy[n, start + k], gx[n, start + k]  # (L,) each, contiguous
            g = gain[start + k]
            for l in range(L):
                gx_row[l] = g * gy_row[l]


def batch_norm_backward_inference(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_inference: (gx, ggamma, gbeta), the last two (C,).
    gamma None counts as 1."""
    x3, gy3 = _as_ncl(x), _as_ncl(gy).astype(x.dtype, copy=False)  # (N, C, L)
    C = x3.shape[1]
    mean = np.ascontiguousarray(mean, dtype=x.dtype)
    inv_std = np.ascontiguousarray(inv_std, dtype=x.dtype)
    gain = inv_std if gamma is None else np.ascontiguousarray(gamma * inv_std, dtype=x.dtype)
    gx = np.empty_like(x3)
    ggamma, gbeta = np.zeros(C, dtype=x.dtype), np.zeros(C, dtype=x.dtype)  # an empty batch sums to 0
    parallel_range(lambda start, stop: _batch_norm_backward_inference(gy3, x3, gain, mean, inv_std, gx, ggamma, gbeta,
                                                                      start, stop),
                   C, 2 * x3.shape[0] * x3.shape[2], _block_channels(x3.shape[2]))
    return gx.reshape(x.shape), ggamma, gbeta

@njit(cache=True, nogil=True)
def _lrn_forward(x, before, after, alpha, beta, k, y, scale, start, stop):
    # x, y, scale (N, C, L); alpha, beta, k have x's dtype, so the arithmetic stays in it. The rows
    # nc = n * C + c in [start, stop).
    N, C, L = x.shape
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        for l in range(L):
            total = x.dtype.type(0)
            for neighbour in range(max(0, c - before), min(C, c + after + 1)):
                total += x[n, neighbour, l] * x[n, neighbour, l]
            s = k + alpha * total
            scale[n, c, l] = s
            y[n, c, l] = x[n, c, l] * s ** -beta


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalisation across channels of x (N, C, ...). Returns (y, scale), with
    scale_c = k + alpha * (sum of x_c'^2 over c' in [c - size//2, c + (size - 1)//2])."""
    x3 = _as_ncl(x)  # (N, C, L)
    y, scale = np.empty_like(x3), np.empty_like(x3)
    dtype = x.dtype.type
    N, C, L = x3.shape
    parallel_range(lambda start, stop: _lrn_forward(x3, size // 2, (size - 1) // 2, dtype(alpha), dtype(beta),
                                                    dtype(k), y, scale, start, stop),
                   N * C, L * (size + 4))
    return y.reshape(x.shape), scale.reshape(x.shape)


@njit(cache=True, nogil=True)
def _lrn_backward(x, y, scale, gy, before, after, beta, two_alpha_beta, gx, start, stop):
    # before/after: the mirrored window, c' in [c - before, c + after] sees x_c in its own window.
    # The rows nc = n * C + c in [start, stop).
    N, C, L = x.shape
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        for l in range(L):
            back = x.dtype.type(0)
            for neighbour in range(max(0, c - before), min(C, c + after + 1)):
                back += gy[n, neighbour, l] * y[n, neighbour, l] / scale[n, neighbour, l]
            gx[n, c, l] = gy[n, c, l] * scale[n, c, l] ** -beta - two_alpha_beta * x[n, c, l] * back


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """Gradient of lrn_forward: gx_j = gy_j scale_j^-beta - 2 alpha beta x_j * sum over the
    channels c whose window holds j of gy_c y_c / scale_c."""
    x3, y3, scale3, gy3 = (_as_ncl(a).astype(x.dtype, copy=False) for a in (x, y, scale, gy))
    gx = np.empty_like(x3)
    dtype = x.dtype.type
    N, C, L = x3.shape
    parallel_range(lambda start, stop: _lrn_backward(x3, y3, scale3, gy3, (size - 1) // 2, size // 2, dtype(beta),
                                                     dtype(2 * alpha * beta), gx, start, stop),
                   N * C, L * (3 * size + 4))
    return gx.reshape(x.shape)
