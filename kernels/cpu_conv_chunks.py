"""conv2d's chunks (tinycnn.kernels.cpu_conv) as single nogil Numba calls, for the Numba backend:
the columns, the products (NumPy's OpenBLAS called by address, see tinycnn.kernels.cpu_blas), the
copies to and from NCHW, the bias and inference's fused BatchNorm-ReLU, one after the other
without going back to Python.

Why. cpu_conv's Python chunk runs each of those steps as its own call, and between two calls the
thread needs the GIL again; when the other thread holds it, it sleeps, about 50 microseconds on
this project's virtual machine. A layer cut into row blocks makes two calls a block: ResNet-50's
7x7 stem, 8 blocks a sample, took 12.9-14.6 ms for 8 samples on two threads, and 11.7-12.5 as nogil
calls.

Each function here does what cpu_conv's Python chunk does for its layout, in the same order and
with the same sgemm calls, so the bits are the same (tests/test_conv_chunks.py), but for the bias
gradient of a one-sample chunk, a plain sum here and NumPy's pairwise one there.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.cpu_blas import _product
from tinycnn.kernels.cpu_columns import _col2im, _from_padded_nhwc, _im2col, _im2row, _row2im, _to_padded_nhwc
from tinycnn.kernels.cpu_matmul import _small_product
from tinycnn.kernels.cpu_norm import _batch_norm_relu_rows


@njit(cache=True, nogil=True)
def _rows_to_samples(rows, b, y, start):
    # y[start + n, o, l] = rows[o, n, l] (+ b[o]): a product's result back to NCHW. rows is the
    # channel-major product (OC, n, OH*OW) itself, or a transposed view of the pixel-major one.
    OC, count, L = rows.shape
    for n in range(count):
        for o in range(OC):
            shift = b[o] if b.shape[0] else 0
            for l in range(L):
                y[start + n, o, l] = rows[o, n, l] + shift


@njit(cache=True, nogil=True, fastmath={"reassoc"})  # lets the bias sums vectorise
def _samples_to_rows(gy, start, rows, bias_sums):
    # rows[o, n, l] = gy[start + n, o, l], in the products' layout (rows as for _rows_to_samples);
    # bias_sums[o] adds up gy[., o, .].
    OC, count, L = rows.shape
    for o in range(OC):
        bias_sums[o] = 0
    for n in range(count):
        for o in range(OC):
            total = 0.0
            for l in range(L):
                value = gy[start + n, o, l]
                rows[o, n, l] = value
                total += value
            bias_sums[o] += total


@njit(cache=True, nogil=True)
def _add_bias(y_rows, b, n, first, stop):
    # y_rows[n, o, first:stop] += b[o], as NumPy's y += b[:, None] adds it (nothing where b is empty)
    if b.shape[0]:
        for o in range(y_rows.shape[1]):
            row = y_rows[n, o, first:stop]
            for l in range(row.shape[0]):
                row[l] += b[o]


@njit(cache=True, nogil=True)
def _normalise_rows(y, first_sample, stop_sample, first_row, stop_row, normalise, gamma, beta, mean, inv_std, residual,
                    relu):
    if normalise:
        _batch_norm_relu_rows(y, first_sample, stop_sample, first_row, stop_row, gamma, beta, mean, inv_std,
                              residual, relu)


@njit(cache=True, nogil=True)
def _channel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, OW, start, stop, first_row, stop_row):
    # The columns (C*KH*KW, count * rows * OW) of samples [start, stop) and output rows
    # [first_row, stop_row), as cpu_conv._ConvPlan.columns makes them; of a 1x1 window at stride 1
    # on one sample, x itself (a view; such a layer is never cut into blocks of rows). OW is given:
    # the kernel may be cut to its live taps, with the padding moved, and PW is then the left
    # padding only. The columns are C-contiguous either way, and typed so: _small_product's loops
    # vectorise only on such arrays (LeNet's first layer, backward at batch 16: 0.70 against 1.49 ms).
    N, C, H, W = x.shape
    count, rows = stop - start, stop_row - first_row
    if count == 1 and KH == 1 and KW == 1 and SH == 1 and SW == 1 and PH == 0 and PW == 0:
        if rows * OW != H * W:
            raise ValueError("conv2d: a 1x1 layer's sample is read whole, never in blocks of rows")
        return x[start].reshape(C, H * W)
    col = np.empty((C, KH, KW, count, rows, OW), dtype=x.dtype)
    _im2col(x[start:stop], col, SH, SW, PH, PW, DH, DW, 0, C * count, first_row)
    return col.reshape(C * KH * KW, count * rows * OW)


@njit(cache=True, nogil=True)
def _pixel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, first_row, first_column, OH, OW, start, stop):
    # The pixel-major columns (count*OH*OW, KH*KW*C) of samples [start, stop), as
    # cpu_conv._ConvPlan.columns makes them: the samples as NHWC padded by PH, PW, windows starting
    # first_row, first_column into the padded planes.
    N, C, H, W = x.shape
    count = stop - start
    padded = np.empty((count, H + 2 * PH, W + 2 * PW, C), dtype=x.dtype)
    _to_padded_nhwc(x, start, padded, PH, PW)
    col = np.empty((count * OH * OW, KH * KW * C), dtype=x.dtype)
    _im2row(padded, col, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column)
    return col


@njit(cache=True, nogil=True)
def _per_sample_forward_chunk(gemm, x, weight, b, y, start, stop,
                              normalise, gamma, beta, mean, inv_std, residual, relu):
    # A 1x1 layer at stride 1, samples [start, stop): y[n] = W x[n] per group, read and written in
    # place (cpu_conv._ConvPlan.per_sample). x (N, C, L), weight (G, OC/G, C/G), y (N, OC, OH, OW).
    G, group_outputs, K = weight.shape
    N, OC, OH, OW = y.shape
    y_rows = y.reshape(N, OC, OH * OW)
    for n in range(start, stop):
        for g in range(G):
            _product(gemm, weight[g], False, x[n, g * K:(g + 1) * K], False,
                     y_rows[n, g * group_outputs:(g + 1) * group_outputs])
        _add_bias(y_rows, b, n, 0, OH * OW)
        _normalise_rows(y, n, n + 1, 0, OH, normalise, gamma, beta, mean, inv_std, residual, relu)


@njit(cache=True, nogil=True)
def _channel_major_forward_chunk(gemm, x, weight, b, y, KH, KW, SH, SW, PH, PW, DH, DW, row_blocks, start, stop,
                                 normalise, gamma, beta, mean, inv_std, residual, relu):
    # Samples [start, stop) in the channel-major layout, as cpu_conv's Python chunk: one sample's
    # product is its NCHW output already, written in place a block of output rows at a time
    # (row_blocks, (blocks, 2)); several samples make one product per group, copied back to NCHW.
    # x (N, C, H, W), weight (G, OC/G, K), y (N, OC, OH, OW).
    G, group_outputs, K = weight.shape
    N, OC, OH, OW = y.shape
    y_rows = y.reshape(N, OC, OH * OW)
    count = stop - start
    if count == 1:
        for block in range(row_blocks.shape[0]):
            first, last = row_blocks[block, 0], row_blocks[block, 1]
            col = _channel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, OW, start, stop, first, last)
            for g in range(G):
                _product(gemm, weight[g], False, col[g * K:(g + 1) * K], False,
                         y_rows[start, g * group_outputs:(g + 1) * group_outputs, first * OW:last * OW])
            _add_bias(y_rows, b, start, first * OW, last * OW)
            _normalise_rows(y, start, stop, first, last, normalise, gamma, beta, mean, inv_std, residual, relu)
    else:
        col = _channel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, OW, start, stop, 0, OH)
        product = np.empty((OC, count * OH * OW), dtype=x.dtype)  # (G, OC/G, count*L)
        for g in range(G):
            _product(gemm, weight[g], False, col[g * K:(g + 1) * K], False,
                     product[g * group_outputs:(g + 1) * group_outputs])
        _rows_to_samples(product.reshape(OC, count, OH * OW), b, y_rows, start)
        _normalise_rows(y, start, stop, 0, OH, normalise, gamma, beta, mean, inv_std, residual, relu)


@njit(cache=True, nogil=True)
def _pixel_major_forward_chunk(gemm, x, weight, b, y, KH, KW, SH, SW, PH, PW, DH, DW, first_row, first_column,
                               start, stop, normalise, gamma, beta, mean, inv_std, residual, relu):
    # Samples [start, stop) in the pixel-major layout, as cpu_conv's Python chunk: the product
    # col W^T (count*L, OC) of the columns (see _pixel_major_columns), back to NCHW.
    # x (N, C, H, W), weight (OC, KH*KW*C), y (N, OC, OH, OW).
    N, OC, OH, OW = y.shape
    count = stop - start
    col = _pixel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, first_row, first_column, OH, OW, start, stop)
    pixels = np.empty((count * OH * OW, OC), dtype=x.dtype)
    _product(gemm, col, False, weight, True, pixels)
    _rows_to_samples(pixels.reshape(count, OH * OW, OC).transpose(2, 0, 1), b, y.reshape(N, OC, OH * OW), start)
    _normalise_rows(y, start, stop, 0, OH, normalise, gamma, beta, mean, inv_std, residual, relu)


@njit(cache=True, nogil=True)
def _channel_major_backward_chunk(gemm, x, gy, weight, gW_share, gb_share, gx, G, KH, KW, SH, SW, PH, PW, DH, DW,
                                  row_blocks, transposed, small, start, stop, weight_gradient, input_gradient, per_sample,
                                  bias_gradient):
    # Samples [start, stop) of conv2d_backward in the channel-major layout, as cpu_conv's Python
    # chunk. y = W col per group, so dW = gy col^T (as its transpose col gy^T where `transposed`:
    # gW_share (G, K, OC/G), else (G, OC/G, K); by _small_product where `small`), dcol = W^T gy,
    # and dx = col2im(dcol), or dx[n] = W^T gy[n] in place where `per_sample` (a 1x1 layer).
    # x, gx (N, C, H, W); gy (N, OC, OH, OW); weight (G, OC/G, K); gb_share (OC,); the arrays of the
    # gradients not asked for may be empty.
    N, C, H, W = x.shape
    OC, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    L = OH * OW
    group_outputs, K = OC // G, C // G * KH * KW
    count = stop - start
    gy_rows = gy.reshape(N, OC, L)
    if count == 1:  # one sample's gy is already in this layout
        rows = gy_rows[start]
        if bias_gradient:
            for o in range(OC):
                total = gy.dtype.type(0)
                for l in range(L):
                    total += rows[o, l]
                gb_share[o] = total
    else:
        rows3 = np.empty((OC, count, L), dtype=x.dtype)
        _samples_to_rows(gy_rows, start, rows3, gb_share)
        rows = rows3.reshape(OC, count * L)
    if weight_gradient:
        # Blocks of output rows (one sample only; see cpu_conv.COLUMN_CHUNK): their shares of dW add up.
        blocks = row_blocks.shape[0] if count == 1 else 1
        block_share = np.empty_like(gW_share) if blocks > 1 else gW_share  # (not written where one block)
        for index in range(blocks):
            first, last = (row_blocks[index, 0], row_blocks[index, 1]) if count == 1 else (0, OH)
            col = _channel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, OW, start, stop, first, last)
            share = gW_share if index == 0 else block_share
            if blocks == 1:  # (rows typed C-contiguous, see _channel_major_columns)
                _weight_gradient_products(gemm, rows, col, share, small, transposed)
            else:
                _weight_gradient_products(gemm, rows[:, first * OW:last * OW], col, share, small, transposed)
            if index > 0:
                gW_flat, block_flat = gW_share.reshape(-1), block_share.reshape(-1)
                for i in range(gW_flat.shape[0]):
                    gW_flat[i] += block_flat[i]
    if input_gradient and per_sample:  # dx[n] = W^T gy[n], written in place
        gx_rows = gx.reshape(N, C, L)
        for n in range(start, stop):
            for g in range(G):
                _product(gemm, weight[g], True, gy_rows[n, g * group_outputs:(g + 1) * group_outputs], False,
                         gx_rows[n, g * K:(g + 1) * K])
    elif input_gradient:
        dcol = np.empty((C * KH * KW, rows.shape[1]), dtype=x.dtype)  # (G, K, count*L)
        for g in range(G):
            _product(gemm, weight[g], True, rows[g * group_outputs:(g + 1) * group_outputs], False,
                     dcol[g * K:(g + 1) * K])
        _col2im(dcol.reshape(C, KH, KW, count, OH, OW), gx[start:stop], SH, SW, PH, PW, DH, DW, 0, count * C * H)


@njit(cache=True, nogil=True)
def _weight_gradient_products(gemm, rows, col, share, small, transposed):
    # share[g] = rows_g col_g^T (OC/G, K), or its transpose col_g rows_g^T (K, OC/G) where
    # `transposed`, for each group g of rows (OC, pixels) and col (G*K, pixels).
    G = share.shape[0]
    group_outputs, K = rows.shape[0] // G, col.shape[0] // G
    for g in range(G):
        rows_g, col_g = rows[g * group_outputs:(g + 1) * group_outputs], col[g * K:(g + 1) * K]
        if small:
            _small_product(rows_g, col_g, share[g])
        elif transposed:  # dW^T = col gy^T
            _product(gemm, col_g, False, rows_g, True, share[g])
        else:
            _product(gemm, rows_g, False, col_g, True, share[g])


@njit(cache=True, nogil=True)
def _pixel_major_backward_chunk(gemm, x, gy, weight, gW_share, gb_share, gx, KH, KW, SH, SW, PH, PW, DH, DW,
                                first_row, first_column, start, stop, weight_gradient, input_gradient):
    # Samples [start, stop) of conv2d_backward in the pixel-major layout, as cpu_conv's Python
    # chunk. y = col W^T, so with gy as (count*L, OC): dW = gy^T col (gW_share (OC, KH*KW*C)) and
    # dcol = gy W, added back into dx by _row2im through the padded NHWC planes.
    # x, gx (N, C, H, W); gy (N, OC, OH, OW); weight (OC, KH*KW*C); gb_share (OC,); the arrays of the
    # gradients not asked for may be empty.
    N, C, H, W = x.shape
    OC, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    L = OH * OW
    count = stop - start
    gy_pixels = np.empty((count * L, OC), dtype=x.dtype)
    _samples_to_rows(gy.reshape(N, OC, L), start, gy_pixels.reshape(count, L, OC).transpose(2, 0, 1), gb_share)
    if weight_gradient:
        col = _pixel_major_columns(x, KH, KW, SH, SW, PH, PW, DH, DW, first_row, first_column, OH, OW, start, stop)
        _product(gemm, gy_pixels, True, col, False, gW_share)
    if input_gradient:
        dcol = np.empty((count * L, KH * KW * C), dtype=x.dtype)
        _product(gemm, gy_pixels, False, weight, False, dcol)
        padded = np.empty((count, H + 2 * PH, W + 2 * PW, C), dtype=x.dtype)
        _row2im(dcol, padded, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column)
        _from_padded_nhwc(padded, PH, PW, gx, start)
