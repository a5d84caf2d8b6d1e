"""The Numba CPU kernels: the same functions, arguments and results as tinycnn.kernels.reference.

Each public function is a thin wrapper that makes its inputs C-contiguous (so one compiled version
per dtype serves every call), allocates the output, and calls an `@njit(cache=True, nogil=True)`
loop nest on a range of its outermost index. Compiled machine code is cached in
kernels/__pycache__, so only the first process pays the compile.

tinycnn.kernels.parallel runs those ranges on several threads at once (see there why not Numba's
`prange`). Each range owns what it writes, so no two threads write to the same element and no
atomics or locks are needed:

    im2col, pooling forward        one (n, c) image plane per item
    col2im, avg_pool2d_backward    one input row (n, c, h) per item: it gathers, in tap order,
                                   every column entry that saw one of its pixels
    max_pool2d_backward            one (n, c) plane per item (its outputs only point into it)
    batch norm                     one channel c per item (its statistics need all of it)
    LRN                            one (n, c) row per item (it reads the neighbouring channels)
    conv2d                         a chunk of samples per item (im2col, product and col2im of a
                                   few samples, while their columns are in the core's cache)

Where the reference sums taps in a fixed order (col2im, pooling, LRN's window) the loops here add
in that same order, so those results are equal to the reference to the last bit; batch norm
accumulates its statistics in float64 and so differs from the reference by round-off only.

Index maths as in the reference: tap (i, j) of the window at output (oh, ow) reads input pixel
h = oh*SH - PH + i*DH, w = ow*SW - PW + j*DW.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.parallel import parallel_range, run_chunks, split
from tinycnn.kernels.reference import avg_pool_divisor, check_argmax_in_plane, conv_output_size


@njit(cache=True, inline="always")
def _valid_range(k, L, O, S, P, D):
    """The outputs o in [lo, hi) whose tap k lands inside the input: 0 <= o*S - P + k*D < L."""
    # ceil((P - k*D) / S) with Python's floor division, capped at O: a tap that only ever sees the
    # left padding (k*D < P - (O-1)*S) has no valid output, and im2col zero-fills [0, lo).
    lo = min(O, max(0, -((k * D - P) // S)))
    hi = min(O, (L - 1 + P - k * D) // S + 1)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _im2col(x, col, SH, SW, PH, PW, DH, DW, start, stop):
    # Stride 1, the common case, gets its own copy of the loops with SW a constant, so that the
    # compiler turns each row's copy into vector loads and stores (3x faster on 56-pixel rows).
    if SW == 1:
        _im2col_planes(x, col, SH, 1, PH, PW, DH, DW, start, stop)
    else:
        _im2col_planes(x, col, SH, SW, PH, PW, DH, DW, start, stop)


@njit(inline="always")
def _im2col_planes(x, col, SH, SW, PH, PW, DH, DW, start, stop):
    # Fills the planes cn = c * N + n in [start, stop) of col, the channel-major array
    # (C, KH, KW, N, OH, OW). Plain element indexing throughout: a slice such as col[c, i, j, n, oh]
    # would be a new array object per row, whose reference counting costs more than copying the row.
    N, C, H, W = x.shape
    KH, KW, _, OH, OW = col.shape[1:]
    for cn in range(start, stop):
        c, n = cn // N, cn % N
        for i in range(KH):
            for j in range(KW):
                ow_lo, ow_hi = _valid_range(j, W, OW, SW, PW, DW)
                for oh in range(OH):
                    h = oh * SH - PH + i * DH
                    if h < 0 or h >= H:
                        ow_lo_h, ow_hi_h = 0, 0  # the whole row falls in the padding
                    else:
                        ow_lo_h, ow_hi_h = ow_lo, ow_hi
                    # Unsigned indices: Numba then skips the negative-index check, which kept
                    # these loops from vectorising (2-3x slower).
                    for ow in range(ow_lo_h):
                        col[c, i, j, n, oh, np.uint64(ow)] = 0
                    for ow in range(ow_lo_h, ow_hi_h):
                        col[c, i, j, n, oh, np.uint64(ow)] = x[n, c, h, np.uint64(ow * SW - PW + j * DW)]
                    for ow in range(max(ow_lo_h, ow_hi_h), OW):
                        col[c, i, j, n, oh, np.uint64(ow)] = 0


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """(N, C, H, W) -> (N, C, KH, KW, OH, OW): every window of x laid out as a column.

    The values are the reference's; the memory is channel-major, (C, KH, KW, N, OH, OW), and the
    array returned a transposed view of it. conv2d then sees col as one (C*KH*KW, N*OH*OW) matrix
    without a copy, and multiplies it by the weight in one product for the whole batch, which on
    2 cores measured up to several times faster than N products of (C*KH*KW, OH*OW), most of all
    where OH*OW is small (the last stages of a ResNet); see benchmarks/RESULTS.md.
    """
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH)
    OW = conv_output_size(W, KW, SW, PW, DW)
    col = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    parallel_range(lambda start, stop: _im2col(x, col, SH, SW, PH, PW, DH, DW, start, stop),
                   C * N, KH * KW * OH * OW)
    return col.transpose(3, 0, 1, 2, 4, 5)  # (N, C, KH, KW, OH, OW), a view


@njit(cache=True)
def _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW):
    """For col2im's gather: source_row[h, i], the output row oh whose tap i lands on input row h
    (oh*SH = h + PH - i*DH), or -1 if none; and ow_range[j] = (lo, hi), the outputs ow whose tap j
    lands inside the input. Made once per call, so the loops below do no integer division."""
    source_row = np.full((H, KH), -1, dtype=np.int64)
    for h in range(H):
        for i in range(KH):
            oh_times_SH = h + PH - i * DH
            if oh_times_SH >= 0 and oh_times_SH % SH == 0 and oh_times_SH // SH < OH:
                source_row[h, i] = oh_times_SH // SH
    ow_range = np.empty((KW, 2), dtype=np.int64)
    for j in range(KW):
        ow_range[j, 0], ow_range[j, 1] = _valid_range(j, W, OW, SW, PW, DW)
    return source_row, ow_range


@njit(cache=True, nogil=True)
def _col2im(col, x, SH, SW, PH, PW, DH, DW, start, stop):
    # As _im2col: a copy of the loops for stride 1, where they vectorise.
    if SW == 1:
        _col2im_rows(col, x, SH, 1, PH, PW, DH, DW, start, stop)
    else:
        _col2im_rows(col, x, SH, SW, PH, PW, DH, DW, start, stop)


@njit(inline="always")
def _col2im_rows(col, x, SH, SW, PH, PW, DH, DW, start, stop):
    # Fills the input rows nch = (n * C + c) * H + h in [start, stop) of x; col is channel-major,
    # (C, KH, KW, N, OH, OW).
    N, C, H, W = x.shape
    KH, KW, _, OH, OW = col.shape[1:]
    source_row, ow_range = _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW)
    for nch in range(start, stop):
        n, c, h = nch // (C * H), (nch // H) % C, nch % H
        for w in range(W):
            x[n, c, h, w] = 0
        for i in range(KH):
            oh = source_row[h, i]
            if oh < 0:
                continue
            for j in range(KW):
                for ow in range(ow_range[j, 0], ow_range[j, 1]):
                    x[n, c, h, np.uint64(ow * SW - PW + j * DW)] += col[c, i, j, n, oh, np.uint64(ow)]


def col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    """(N, C, KH, KW, OH, OW) -> (N, C, H, W): the adjoint of im2col, summing overlapping taps.
    Fastest when col's memory is channel-major, as im2col returns it and conv2d's backward
    produces it; any other layout is copied to it first."""
    N, C = col.shape[:2]
    col_channel_major = np.ascontiguousarray(col.transpose(1, 2, 3, 0, 4, 5))  # (C, KH, KW, N, OH, OW)
    x = np.empty((N, C, H, W), dtype=col.dtype)
    KH, KW = col.shape[2:4]
    parallel_range(lambda start, stop: _col2im(col_channel_major, x, SH, SW, PH, PW, DH, DW, start, stop),
                   N * C * H, KH * KW * W)
    return x


# conv2d: chunks of samples, each carried through im2col, the matrix products and col2im on one
# thread while its columns are still in that core's cache, instead of whole-batch passes over
# memory. A chunk's columns are at most about COLUMN_CHUNK elements (1 MiB of float32, half this
# machine's per-core L2); a layer whose products are big gets at least PRODUCT_CHUNKS chunks, so
# that both cores share the products even where the columns are small (a ResNet's last stage),
# but no more, as a product of few columns runs slower per column; and a layer split at all is
# split into an even number of equal chunks, so that two threads finish together.
COLUMN_CHUNK = 1 << 18
PRODUCT_CHUNKS = 2
PRODUCT_SERIAL = 1 << 21  # multiply-adds below which a layer's products stay in one piece
# The backward pass computes each chunk's columns again rather than keeping the forward's: the
# copies run at vector speed, on data in cache, while kept columns cost fresh memory every step
# (ResNet-18 ran 5% faster without them, LeNet the same; a 3x3 64->64 layer at 56x56, 11 instead
# of 15 ms forward).
# Two layouts of a chunk's columns. Channel-major, (C*KH*KW, count*OH*OW) as im2col's: its copies
# run along output rows, OW pixels at a time, and the product of one sample is already its NCHW
# output. Pixel-major, (count*OH*OW, KH*KW*C): the chunk is first transposed to padded NHWC, where
# one window row is KW*C contiguous values, a longer copy where rows are short and C is not tiny
# (LeNet's 20->50 layer, OW 8: im2col 360 -> 135 us per 8 samples, col2im 300 -> 200 us, and its
# weight-gradient product 1.4x faster in this orientation). Pixel-major is used for ungrouped
# layers with at least PIXEL_MAJOR_CHANNELS input channels (d2l's LeNet-5, 6 channels into its
# second layer: steps 4-5% faster than channel-major) and outputs narrower than PIXEL_MAJOR_WIDTH;
# at OW 32 and 56 channel-major measured 5-15% faster, and 3x on a 1x1 layer.
PIXEL_MAJOR_CHANNELS = 4
PIXEL_MAJOR_WIDTH = 16
# A weight gradient of at most this many values (OC/G * C/G*KH*KW: LeNet's first layers) is
# computed by _small_product rather than OpenBLAS, whose products with so small a result did not
# run any faster on two threads than on one (0.95x for 20x25 over 9,216 pixels; bigger ones 1.7-1.9x).
SMALL_PRODUCT = 4096


def _conv_chunks(N, column_length, multiply_adds):
    """(start, stop) sample ranges for a conv layer; they depend on its shape only."""
    count = -(-N // max(1, COLUMN_CHUNK // max(1, column_length)))  # chunks that fit COLUMN_CHUNK
    if multiply_adds >= PRODUCT_SERIAL:
        count = max(count, PRODUCT_CHUNKS)
    if count > 1:
        count += count % 2
    return split(N, -(-N // min(count, N)))


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


def _pixels_as_rows(pixels, count):
    """The (OC, count, OH*OW) view of a pixel-major (count*OH*OW, OC) array."""
    return pixels.reshape(count, -1, pixels.shape[1]).transpose(2, 0, 1)


@njit(cache=True, nogil=True)
def _to_padded_nhwc(x, start, padded, PH, PW):
    # padded[n, h, w, c] = x[start + n, c, h - PH, w - PW], 0 in the border.
    count, HP, WP, C = padded.shape
    H, W = x.shape[2:]
    for n in range(count):
        for h in range(HP):
            for w in range(WP):
                inside = PH <= h < PH + H and PW <= w < PW + W
                for c in range(C):
                    padded[n, h, w, c] = x[start + n, c, h - PH, w - PW] if inside else 0


@njit(cache=True, nogil=True)
def _from_padded_nhwc(padded, PH, PW, x, start):
    # x[start + n, c, h, w] = padded[n, h + PH, w + PW, c]: the inverse of _to_padded_nhwc.
    count, HP, WP, C = padded.shape
    H, W = x.shape[2:]
    for n in range(count):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    x[start + n, c, h, w] = padded[n, h + PH, w + PW, c]


@njit(cache=True, nogil=True)
def _im2row(padded, col, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column):
    # col[(n, oh, ow), (i, j, c)] = padded[n, oh*SH + first_row + i*DH, ow*SW + first_column + j*DW, c]:
    # pixel-major columns (count*OH*OW, KH*KW*C); the window starts first_row, first_column into the
    # padded plane. Without dilation along W, one window row is KW*C values in a row.
    count, HP, WP, C = padded.shape
    source = padded.reshape(-1)
    target = col.reshape(-1)
    d = 0
    for n in range(count):
        for oh in range(OH):
            for ow in range(OW):
                for i in range(KH):
                    s = ((n * HP + oh * SH + first_row + i * DH) * WP + ow * SW + first_column) * C
                    for j in range(KW):
                        for c in range(C):
                            target[np.uint64(d + c)] = source[np.uint64(s + j * DW * C + c)]
                        d += C


@njit(cache=True, nogil=True)
def _row2im(col, padded, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column):
    # The adjoint of _im2row: padded (zeroed here) gets every column entry added at its pixel.
    # One thread owns the chunk, so this scatter has no races; its sums run in (oh, ow, i, j)
    # order, not col2im's tap order, so they may differ from the reference by round-off.
    count, HP, WP, C = padded.shape
    target = padded.reshape(-1)
    source = col.reshape(-1)
    target[:] = 0
    d = 0
    for n in range(count):
        for oh in range(OH):
            for ow in range(OW):
                for i in range(KH):
                    s = ((n * HP + oh * SH + first_row + i * DH) * WP + ow * SW + first_column) * C
                    for j in range(KW):
                        for c in range(C):
                            target[np.uint64(s + j * DW * C + c)] += source[np.uint64(d + c)]
                        d += C


def matmul(a, b):
    """a @ b for 2-D a (M, K) and b (K, N). OpenBLAS runs on one thread (see tinycnn._threading),
    so a big product is split into PRODUCT_CHUNKS products, one per thread: by rows of a where a
    has many, else by columns of b. Measured on LeNet's fully connected layer: (64, 800) x
    (800, 500) took 0.47 ms whole, 0.33 ms for half its 64 rows (each half still reads all of b),
    0.26 ms for half its columns; its weight gradient (500, 64) x (64, 800) ran 0.36 ms whole, 0.30
    split by rows and 0.40 split by columns (written into strided halves of the result)."""
    M, K = a.shape
    N = b.shape[1]
    if M * K * N < PRODUCT_SERIAL or max(M, N) < 2:
        return a @ b
    out = np.empty((M, N), dtype=np.result_type(a.dtype, b.dtype))
    by_rows = M >= 128 or N < 2
    if by_rows:
        def run(start, stop):
            np.matmul(a[start:stop], b, out=out[start:stop])
    else:
        def run(start, stop):
            np.matmul(a, b[:, start:stop], out=out[:, start:stop])
    size = M if by_rows else N
    run_chunks(run, split(size, -(-size // PRODUCT_CHUNKS)))
    return out


def _live_taps(L, O, K, S, P, D):
    """The kernel taps [first, stop) along one axis that land inside the input for some output.
    The others only ever see padding: their columns are zeros, and their weights get no gradient."""
    live = [k for k in range(K) if min(O, (L - 1 + P - k * D) // S + 1) > max(0, -((k * D - P) // S))]
    if not live:  # every window is padding only: keep one tap, whose columns im2col zero-fills
        return 0, 1
    return live[0], live[-1] + 1


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _small_product(a, b, out):
    # out[m, n] = sum over l of a[m, l] * b[n, l], for a small out and a long l. Blocks of 4x2
    # outputs share their loads; reassociation lets the sums run as vectors along l.
    M, L = a.shape
    N = b.shape[0]
    for m0 in range(0, M, 4):
        for n0 in range(0, N, 2):
            if m0 + 4 <= M and n0 + 2 <= N:
                s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = a.dtype.type(0)
                for l in range(L):
                    b0, b1 = b[n0, l], b[n0 + 1, l]
                    a0, a1, a2, a3 = a[m0, l], a[m0 + 1, l], a[m0 + 2, l], a[m0 + 3, l]
                    s00 += a0 * b0
                    s01 += a0 * b1
                    s10 += a1 * b0
                    s11 += a1 * b1
                    s20 += a2 * b0
                    s21 += a2 * b1
                    s30 += a3 * b0
                    s31 += a3 * b1
                out[m0, n0], out[m0, n0 + 1], out[m0 + 1, n0], out[m0 + 1, n0 + 1] = s00, s01, s10, s11
                out[m0 + 2, n0], out[m0 + 2, n0 + 1], out[m0 + 3, n0], out[m0 + 3, n0 + 1] = s20, s21, s30, s31
            else:  # the edge of out
                for m in range(m0, min(m0 + 4, M)):
                    for n in range(n0, min(n0 + 2, N)):
                        total = a.dtype.type(0)
                        for l in range(L):
                            total += a[m, l] * b[n, l]
                        out[m, n] = total


class _ConvGeometry:
    """A conv2d call's shapes, chunks and column layout, shared by its forward and backward.

    Kernel taps that see only padding are cut off the kernel first: a 3x3 layer on a 1x1 input
    (the last stage of a ResNet on 32x32 images) becomes a 1x1 layer, 9 times less work. KH, KW
    and the weight here are those of the cut kernel, which starts at tap (first_i, first_j); the
    padding PH, PW is moved by as much, so every live tap reads the same pixels as before."""

    def __init__(self, x, W, SH, SW, PH, PW, DH, DW, groups):
        self.N, self.C, self.H, self.W = x.shape
        self.OC, _, KH, KW = W.shape
        self.OH = conv_output_size(self.H, KH, SH, PH, DH)
        self.OW = conv_output_size(self.W, KW, SW, PW, DW)
        self.full_kernel = KH, KW
        self.first_i, stop_i = _live_taps(self.H, self.OH, KH, SH, PH, DH)
        self.first_j, stop_j = _live_taps(self.W, self.OW, KW, SW, PW, DW)
        self.KH, self.KW = stop_i - self.first_i, stop_j - self.first_j
        W = W[:, :, self.first_i:stop_i, self.first_j:stop_j]
        # The original padding (the pixel-major layout pads by it) and the cut kernel's.
        self.padding = PH, PW
        self.SH, self.SW, self.DH, self.DW = SH, SW, DH, DW
        self.PH, self.PW = PH - self.first_i * DH, PW - self.first_j * DW
        self.G = groups
        self.L = self.OH * self.OW
        self.pointwise = (self.KH, self.KW, SH, SW, self.PH, self.PW) == (1, 1, 1, 1, 0, 0)
        self.K = self.C // groups * self.KH * self.KW  # the length of one column, per group
        self.pixel_major = groups == 1 and self.C >= PIXEL_MAJOR_CHANNELS and self.OW < PIXEL_MAJOR_WIDTH
        column_length = self.C * self.KH * self.KW * self.L
        self.chunks = _conv_chunks(self.N, column_length, self.N * self.OC * self.K * self.L)
        self.chunk_index = {start: k for k, (start, _) in enumerate(self.chunks)}
        if self.pixel_major:  # the weight as (OC, KH*KW*C), the columns' order
            self.weight = np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(self.OC, self.K)
        else:
            self.weight = np.ascontiguousarray(W).reshape(groups, self.OC // groups, self.K)

    def full_weight_gradient(self, gW):
        """The cut kernel's weight gradient (OC, C/G, KH, KW) placed in the whole kernel's, zero at
        the dead taps."""
        if (self.KH, self.KW) == self.full_kernel:
            return gW
        full = np.zeros(gW.shape[:2] + self.full_kernel, dtype=gW.dtype)
        full[:, :, self.first_i:self.first_i + self.KH, self.first_j:self.first_j + self.KW] = gW
        return full

    def columns(self, x, start, stop):
        """The columns of samples [start, stop) in this layer's layout."""
        count = stop - start
        if self.pixel_major:
            PH, PW = self.padding
            padded = np.empty((count, self.H + 2 * PH, self.W + 2 * PW, self.C), dtype=x.dtype)
            _to_padded_nhwc(x, start, padded, PH, PW)
            col = np.empty((count * self.L, self.K), dtype=x.dtype)
            _im2row(padded, col, self.OH, self.OW, self.KH, self.KW, self.SH, self.SW, self.DH, self.DW,
                    self.first_i * self.DH, self.first_j * self.DW)
        elif count == 1 and self.pointwise:  # a 1x1 window at stride 1 sees x itself: no copy
            col = x[start].reshape(self.C, 1, 1, 1, self.OH, self.OW)
        else:
            col = np.empty((self.C, self.KH, self.KW, count, self.OH, self.OW), dtype=x.dtype)
            _im2col(x[start:stop], col, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW, 0, self.C * count)
        return col

    def columns_to_input(self, gcol, gx, start, stop):
        """gx[start:stop] = the adjoint of `columns` applied to gcol."""
        count = stop - start
        if self.pixel_major:
            PH, PW = self.padding
            padded = np.empty((count, self.H + 2 * PH, self.W + 2 * PW, self.C), dtype=gx.dtype)
            _row2im(gcol, padded, self.OH, self.OW, self.KH, self.KW, self.SH, self.SW, self.DH, self.DW,
                    self.first_i * self.DH, self.first_j * self.DW)
            _from_padded_nhwc(padded, PH, PW, gx, start)
        else:
            _col2im(gcol.reshape(self.C, self.KH, self.KW, count, self.OH, self.OW), gx[start:stop],
                    self.SH, self.SW, self.PH, self.PW, self.DH, self.DW, 0, count * self.C * self.H)


def conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups):
    """As the reference: y (N, OC, OH, OW) = W * x + b, im2col and one product per group, done a
    chunk of samples at a time on every thread."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    layer = _ConvGeometry(x, W, SH, SW, PH, PW, DH, DW, groups)
    N, OC, OH, OW, L, G, K = layer.N, layer.OC, layer.OH, layer.OW, layer.L, layer.G, layer.K
    b = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    y_rows = y.reshape(N, OC, L)

    def run(start, stop):
        count = stop - start
        col = layer.columns(x, start, stop)
        if layer.pixel_major:
            _rows_to_samples(_pixels_as_rows(col @ layer.weight.T, count), b, y_rows, start)  # (count*L, OC)
        elif count == 1:  # the product of one sample is already its NCHW output: write it in place
            np.matmul(layer.weight, col.reshape(G, K, L), out=y_rows[start].reshape(G, OC // G, L))
            if b.shape[0]:
                y_rows[start] += b[:, None]
        else:
            product = np.matmul(layer.weight, col.reshape(G, K, count * L))  # (G, OC/G, count*L)
            _rows_to_samples(product.reshape(OC, count, L), b, y_rows, start)

    run_chunks(run, layer.chunks)
    return y


def conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad=(True, True, True)):
    """As the reference, a chunk of samples at a time: each chunk's share of gW (and gb) is kept
    apart and the shares are added in chunk order, so the sum does not depend on the threads."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    layer = _ConvGeometry(x, W, SH, SW, PH, PW, DH, DW, groups)
    N, OC, L, G, K = layer.N, layer.OC, layer.L, layer.G, layer.K
    gy_rows = gy.reshape(N, OC, L)
    chunks = layer.chunks
    gx = np.empty_like(x) if needs_grad[0] else None
    # Each chunk's share of dW. (As (K, OC) products they ran 10-40% faster, but turning the sum
    # back into (OC, K) cost more: a (2304, 256) transpose took 2.5 ms here.)
    gW_shares = np.empty((len(chunks), G, OC // G, K), dtype=x.dtype) if needs_grad[1] else None
    gb_shares = np.empty((len(chunks), OC), dtype=x.dtype)

    def run(start, stop):
        count = stop - start
        k = layer.chunk_index[start]
        col = layer.columns(x, start, stop) if needs_grad[1] else None
        if layer.pixel_major:
            # y = col W^T: dW = gy^T col, dcol = gy W (gy as (count*L, OC)).
            gy_pixels = np.empty((count * L, OC), dtype=x.dtype)
            _samples_to_rows(gy_rows, start, _pixels_as_rows(gy_pixels, count), gb_shares[k])
            if needs_grad[1]:
                np.matmul(gy_pixels.T, col, out=gW_shares[k, 0])
            if needs_grad[0]:
                layer.columns_to_input(gy_pixels @ layer.weight, gx, start, stop)
        else:
            # y = W col per group: dW = gy col^T, dcol = W^T gy (gy as (G, OC/G, count*L)).
            if count == 1:  # one sample's gy is already in this layout
                rows_g = gy_rows[start].reshape(G, OC // G, L)
                gb_shares[k] = gy_rows[start].sum(axis=1)
            else:
                rows = np.empty((OC, count, L), dtype=x.dtype)
                _samples_to_rows(gy_rows, start, rows, gb_shares[k])
                rows_g = rows.reshape(G, OC // G, count * L)
            if needs_grad[1]:
                col_g = col.reshape(G, K, count * L)
                if K * (OC // G) <= SMALL_PRODUCT:
                    for g in range(G):
                        _small_product(rows_g[g], col_g[g], gW_shares[k, g])
                else:
                    np.matmul(rows_g, col_g.swapaxes(1, 2), out=gW_shares[k])
            if needs_grad[0]:
                layer.columns_to_input(np.matmul(layer.weight.swapaxes(1, 2), rows_g), gx, start, stop)

    run_chunks(run, chunks)
    gW = gb = None
    if needs_grad[1]:
        gW = gW_shares.sum(axis=0)  # (G, OC/G, K)
        if layer.pixel_major:  # (OC, KH*KW*C) -> (OC, C, KH, KW)
            gW = gW.reshape(OC, layer.KH, layer.KW, layer.C).transpose(0, 3, 1, 2)
        gW = layer.full_weight_gradient(np.ascontiguousarray(gW).reshape(OC, layer.C // G, layer.KH, layer.KW))
    if needs_grad[2]:
        gb = gb_shares.sum(axis=0)
    return gx, gW, gb


@njit(inline="always")
def _max_pool_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop):
    # x (N*C, H, W), y and argmax (N*C, OH, OW); the image planes in [start, stop). Inlined into
    # the kernels below, so that where the window size is a constant the compiler unrolls the
    # window loops (2.6x faster for 2x2 windows than with KH and KW known only at run time).
    H, W = x.shape[1:]
    OH, OW = y.shape[1:]
    # The windows wholly inside the plane: rows [oh_lo, oh_hi), columns [ow_lo, ow_hi).
    oh_lo, oh_hi = _inside_range(H, OH, KH, SH, PH, DH)
    ow_lo, ow_hi = _inside_range(W, OW, KW, SW, PW, DW)
    for nc in range(start, stop):
        for oh in range(OH):
            h0 = oh * SH - PH  # the window's first row and column
            inside_row = oh_lo <= oh < oh_hi
            for ow in range(OW):
                w0 = ow * SW - PW
                if inside_row and ow_lo <= ow < ow_hi:
                    # The first maximum wins; a NaN, once met, wins for good (np.argmax's rules):
                    # `not value <= best` is value > best or value NaN, and `best == best` fails
                    # once best is a NaN. No early exit, so the loops unroll.
                    best = x[nc, h0, w0]
                    best_index = h0 * W + w0
                    for i in range(KH):
                        h = h0 + i * DH
                        for j in range(KW):
                            w = w0 + j * DW
                            value = x[nc, h, w]
                            if not value <= best and best == best:
                                best = value
                                best_index = h * W + w
                else:
                    best, best_index = _window_max_at_border(x, nc, h0, w0, KH, KW, DH, DW)
                y[nc, oh, ow] = best
                argmax[nc, oh, ow] = best_index


@njit(cache=True, inline="always")
def _inside_range(L, O, K, S, P, D):
    """The outputs o whose whole window, o*S - P + [0, (K-1)*D], lies in [0, L)."""
    lo = min(O, -(-P // S))
    hi = max(lo, min(O, (L - 1 + P - (K - 1) * D) // S + 1))
    return lo, hi


@njit(cache=True, nogil=True)
def _max_pool2d_forward(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, nogil=True)
def _max_pool2d_forward_2x2(x, y, argmax, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, 2, 2, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, nogil=True)
def _max_pool2d_forward_3x3(x, y, argmax, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, 3, 3, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, inline="always")
def _window_max_at_border(x, nc, h0, w0, KH, KW, DH, DW):
    """The maximum of a window that reaches into the padding, and its flat index: taps outside
    the plane count as -inf (so a window of padding only gives -inf at its first tap, as the
    reference)."""
    H, W = x.shape[1:]
    best = -np.inf
    best_index = 0
    for i in range(KH):
        h = h0 + i * DH
        for j in range(KW):
            w = w0 + j * DW
            value = x[nc, h, w] if 0 <= h < H and 0 <= w < W else -np.inf
            if (i == 0 and j == 0) or value > best or (value != value and best == best):
                best = value
                best_index = h * W + w
    return best, best_index


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    """Returns (y, argmax): y (N, C, OH, OW) and, for each output, the flat index h*W + w of the
    input pixel that won (the first one on ties), as PyTorch's return_indices."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, DW, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    planes, y_planes, argmax_planes = x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW)
    if (KH, KW) == (2, 2):  # LeNet's, VGG's: the most common windows, with the loops unrolled
        def run(start, stop):
            _max_pool2d_forward_2x2(planes, y_planes, argmax_planes, SH, SW, PH, PW, DH, DW, start, stop)
    elif (KH, KW) == (3, 3):  # AlexNet's, ResNet's, Inception's
        def run(start, stop):
            _max_pool2d_forward_3x3(planes, y_planes, argmax_planes, SH, SW, PH, PW, DH, DW, start, stop)
    else:
        def run(start, stop):
            _max_pool2d_forward(planes, y_planes, argmax_planes, KH, KW, SH, SW, PH, PW, DH, DW, start, stop)
    parallel_range(run, N * C, OH * OW * KH * KW)
    return y, argmax


@njit(cache=True, nogil=True)
def _max_pool2d_backward(gy, argmax, gx, start, stop):
    # gy, argmax (N*C, OH*OW); gx (N*C, H*W); the planes nc in [start, stop).
    HW = gx.shape[1]
    for nc in range(start, stop):
        gx[nc, :] = 0
        for k in range(gy.shape[1]):
            index = argmax[nc, k]
            if 0 <= index < HW:
                gx[nc, index] += gy[nc, k]


def max_pool2d_backward(gy, argmax, H, W):
    """Route each output gradient to the input pixel that won its window (summing if one pixel
    won several overlapping windows)."""
    check_argmax_in_plane(argmax, H, W)  # the loop below does not check its writes
    N, C = gy.shape[:2]
    gy = np.ascontiguousarray(gy).reshape(N * C, -1)  # (N*C, OH*OW)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64).reshape(N * C, -1)
    gx = np.empty((N * C, H * W), dtype=gy.dtype)
    parallel_range(lambda start, stop: _max_pool2d_backward(gy, argmax, gx, start, stop), N * C, H * W + gy.shape[1])
    return gx.reshape(N, C, H, W)


@njit(inline="always")
def _avg_pool_planes(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop):
    # The image planes nc = n * C + c in [start, stop). Inlined into the kernels below, which fix
    # the common window sizes as constants so that the window loops unroll (as for max pooling).
    N, C, H, W = x.shape
    OH, OW = y.shape[2:]
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        for oh in range(OH):
            for ow in range(OW):
                total = x.dtype.type(0)
                for i in range(KH):
                    h = oh * SH - PH + i
                    if 0 <= h < H:
                        for j in range(KW):
                            w = ow * SW - PW + j
                            if 0 <= w < W:
                                total += x[n, c, h, w]
                # The division is done in float64 and rounded once, as in the reference.
                y[n, c, oh, ow] = np.float64(total) / divisor[oh, ow]


@njit(cache=True, nogil=True)
def _avg_pool2d_forward(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop):
    if (KH, KW) == (2, 2):  # LeNet-5's and DenseNet's transitions
        _avg_pool_planes(x, y, divisor, 2, 2, SH, SW, PH, PW, start, stop)
    elif (KH, KW) == (3, 3):  # Inception's pooling branches
        _avg_pool_planes(x, y, divisor, 3, 3, SH, SW, PH, PW, start, stop)
    else:
        _avg_pool_planes(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop)


def avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, 1, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, 1, ceil_mode)
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, np)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    divisor = divisor.astype(np.float64)
    parallel_range(lambda start, stop: _avg_pool2d_forward(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop),
                   N * C, OH * OW * KH * KW)
    return y


@njit(cache=True, nogil=True)
def _avg_pool2d_backward(share, gx, KH, KW, SH, SW, PH, PW, start, stop):
    # col2im's gather, with every tap of window (oh, ow) holding share[oh, ow]; the input rows
    # nch = (n * C + c) * H + h in [start, stop).
    N, C, H, W = gx.shape
    OH, OW = share.shape[2:]
    source_row, ow_range = _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, 1, 1)
    for nch in range(start, stop):
        n, c, h = nch // (C * H), (nch // H) % C, nch % H
        for w in range(W):
            gx[n, c, h, w] = 0
        for i in range(KH):
            oh = source_row[h, i]
            if oh < 0:
                continue
            for j in range(KW):
                for ow in range(ow_range[j, 0], ow_range[j, 1]):
                    gx[n, c, h, np.uint64(ow * SW - PW + j)] += share[n, c, oh, np.uint64(ow)]


def avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """Each input pixel gets gy / divisor from every window that covers it."""
    N, C, OH, OW = gy.shape
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, np)
    share = np.ascontiguousarray((gy / divisor).astype(gy.dtype))  # (N, C, OH, OW)
    gx = np.empty((N, C, H, W), dtype=gy.dtype)
    parallel_range(lambda start, stop: _avg_pool2d_backward(share, gx, KH, KW, SH, SW, PH, PW, start, stop),
                   N * C * H, KH * KW * W)
    return gx


def _as_ncl(x):
    """(N, C, ...) -> contiguous (N, C, L): batch norm and LRN see every trailing axis as one."""
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[0], x.shape[1], -1)


@njit(cache=True, nogil=True)
def _batch_norm_forward_training(x, gamma, beta, eps, y, mean, var, inv_std, start, stop):
    # x, y (N, C, L); gamma, beta, mean, var, inv_std (C,); the channels c in [start, stop).
    N, C, L = x.shape
    count = N * L
    for c in range(start, stop):
        total = 0.0
        for n in range(N):
            for l in range(L):
                total += x[n, c, l]
        m = total / count
        squares = 0.0
        for n in range(N):
            for l in range(L):
                d = x[n, c, l] - m
                squares += d * d
        mean[c] = m
        var[c] = squares / count
        inv_std[c] = 1 / np.sqrt(var[c] + eps)
        # y = gamma * (x - mean) * inv_std + beta, centred first: folding the mean into one
        # multiply-add (x * gain + shift) cancelled two large float32 terms where the mean is large
        # beside the spread, off by 2e-5 for values 1.6928 and 1.6935.
        gain = gamma[c] * inv_std[c]
        for n in range(N):
            for l in range(L):
                y[n, c, l] = (x[n, c, l] - m) * gain + beta[c]


def batch_norm_forward_training(x, gamma, beta, eps):
    """Normalise x (N, C, ...) per channel with its own batch statistics, then scale and shift.

    Returns (y, mean, var, inv_std), the last three (C,); var is the biased variance.
    gamma or beta may be None (no scale, no shift).
    """
    x3 = _as_ncl(x)  # (N, C, L)
    C = x3.shape[1]
    gamma = np.ones(C, x.dtype) if gamma is None else np.ascontiguousarray(gamma, dtype=x.dtype)
    beta = np.zeros(C, x.dtype) if beta is None else np.ascontiguousarray(beta, dtype=x.dtype)
    y = np.empty_like(x3)
    mean, var, inv_std = (np.empty(C, dtype=x.dtype) for _ in range(3))
    eps = float(eps)
    parallel_range(lambda start, stop: _batch_norm_forward_training(x3, gamma, beta, eps, y, mean, var, inv_std,
                                                                    start, stop),
                   C, 3 * x3.shape[0] * x3.shape[2])
    return y.reshape(x.shape), mean, var, inv_std


@njit(cache=True, nogil=True)
def _batch_norm_backward(gy, x, gain, mean, inv_std, gx, ggamma, gbeta, start, stop):
    # gy, x, gx (N, C, L); gain = gamma * inv_std, mean, inv_std, ggamma, gbeta (C,); the channels
    # c in [start, stop).
    N, C, L = x.shape
    count = N * L
    for c in range(start, stop):
        sum_gy = 0.0
        sum_gy_x_hat = 0.0
        for n in range(N):
            for l in range(L):
                sum_gy += gy[n, c, l]
                sum_gy_x_hat += gy[n, c, l] * ((x[n, c, l] - mean[c]) * inv_std[c])
        gbeta[c] = sum_gy
        ggamma[c] = sum_gy_x_hat
        # gx = gain * (gy - sum(gy)/n - x_hat * sum(gy x_hat)/n)
        mean_gy = sum_gy / count
        mean_gy_x_hat = sum_gy_x_hat / count
        for n in range(N):
            for l in range(L):
                x_hat = (x[n, c, l] - mean[c]) * inv_std[c]
                gx[n, c, l] = gain[c] * (gy[n, c, l] - mean_gy - x_hat * mean_gy_x_hat)


def batch_norm_backward(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_training: (gx, ggamma, gbeta), the last two (C,).
    gamma None counts as 1."""
    x3, gy3 = _as_ncl(x), _as_ncl(gy).astype(x.dtype, copy=False)  # (N, C, L)
    C = x3.shape[1]
    inv_std = np.ascontiguousarray(inv_std, dtype=x.dtype)
    gain = inv_std if gamma is None else np.ascontiguousarray(gamma * inv_std, dtype=x.dtype)
    gx = np.empty_like(x3)
    ggamma, gbeta = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
    mean = np.ascontiguousarray(mean, dtype=x.dtype)
    parallel_range(lambda start, stop: _batch_norm_backward(gy3, x3, gain, mean, inv_std, gx, ggamma, gbeta,
                                                            start, stop),
                   C, 2 * x3.shape[0] * x3.shape[2])
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
