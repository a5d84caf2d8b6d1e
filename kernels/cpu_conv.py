"""conv2d forward and backward for the Numba backend (see tinycnn.kernels.cpu for the whole picture).

A layer's samples are cut into chunks (its shape alone decides them, never the thread count), and
each chunk is carried through its columns (tinycnn.kernels.cpu_columns), the matrix products
(OpenBLAS on one thread, or tinycnn.kernels.cpu_matmul._small_product) and back on one thread,
while its columns are still in that core's cache. The weight gradient is summed over the chunks in
chunk order, so its bits do not depend on the threads. Each chunk is one nogil Numba call
(tinycnn.kernels.cpu_conv_chunks) where NumPy's OpenBLAS can be called from Numba code
(tinycnn.kernels.cpu_blas); the Python chunks here, with np.matmul, serve where it cannot, and
spell out the same steps.
"""
import functools

import numpy as np
from numba import njit

from tinycnn.kernels import cpu_blas
from tinycnn.kernels.cpu_columns import _col2im, _from_padded_nhwc, _im2col, _im2row, _row2im, _to_padded_nhwc
from tinycnn.kernels.cpu_conv_chunks import (_channel_major_backward_chunk, _channel_major_forward_chunk,
                                             _per_sample_forward_chunk, _pixel_major_backward_chunk,
                                             _pixel_major_forward_chunk, _rows_to_samples, _samples_to_rows)
from tinycnn.kernels.cpu_conv_dense import dense_conv2d_forward, plane_map
from tinycnn.kernels.cpu_conv_taps import live_fraction, taps_conv2d_backward, taps_conv2d_forward
from tinycnn.kernels.cpu_conv_weights import gather_taps
from tinycnn.kernels.cpu_matmul import PRODUCT_CHUNKS, PRODUCT_SERIAL, _small_product
from tinycnn.kernels.cpu_norm import _batch_norm_relu_rows, inference_normalisation
from tinycnn.kernels.cpu_winograd import winograd_conv2d_forward
from tinycnn.kernels.cpu_winograd_backward import winograd_conv2d_weight_gradient
from tinycnn.kernels.parallel import parallel_range, run_chunks, split
from tinycnn.kernels.reference import conv_output_size

# conv2d: chunks of samples, each carried through im2col, the matrix products and col2im on one
# thread while its columns are still in that core's cache, instead of whole-batch passes over
# memory. A chunk's columns are at most about COLUMN_CHUNK elements (1 MiB of float32, half this
# machine's per-core L2); a layer whose products are big gets at least PRODUCT_CHUNKS chunks, so
# that both cores share the products even where the columns are small (a ResNet's last stage),
# but no more, as a product of few columns runs slower per column; and a layer split at all is
# split into an even number of equal chunks, so that two threads finish together.
# Each chunk reads the whole weight once (and its backward writes a whole share of the weight
# gradient), so where the weight is bigger than COLUMN_CHUNK a chunk may take as many columns as
# the weight has values: ResNet-50's 3x3 512->512 layer at 7x7 has 0.9 MB of columns per sample
# but a 9.4 MB weight, and one sample per chunk read the weight once per sample.
COLUMN_CHUNK = 1 << 18
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
# at OW 32 and 56 channel-major measured 5-15% faster, and 3x on a 1x1 layer. Nor where the weight
# has more than PIXEL_MAJOR_WEIGHT values: pixel-major reorders the weight in every forward and
# twice in every backward (0.8 ms for a 512x512x3x3 one). ResNet-50's 3x3 512->512 layers (7x7
# output) ran 0.81-0.87x forward and 0.44-0.84x backward channel-major (min times; 0.91-0.93 in CPU
# time); the 256->256 ones (0.6 M values) 0.88-0.94x / 0.93-0.98x, but ResNet-18's at 8x8, batch
# 32, 1.0x / 1.03-1.09x, so they stay pixel-major. A weight of more than COLUMN_CHUNK values is
# reordered for pixel-major only where the layer has at least PIXEL_MAJOR_PIXELS output pixels
# (N*OH*OW) to share that cost: Inception v3's 1x3 and 3x1 384->384 layers at 8x8, batch 4 (256
# pixels), ran 0.75-0.81x forward and 0.82-0.85x backward channel-major.
PIXEL_MAJOR_CHANNELS = 4
PIXEL_MAJOR_WIDTH = 16
PIXEL_MAJOR_WEIGHT = 1 << 20
PIXEL_MAJOR_PIXELS = 1024
# A 1x1 layer at stride 1 multiplies each sample's x in place (see _ConvPlan.per_sample) only
# where a sample has at least PER_SAMPLE_PIXELS pixels: each of those products reads the whole
# weight for its few columns. ResNet-18's last stage on 32x32 images (3x3 512->512 layers cut to
# 1x1 at a 1x1 output, batch 32) read its 1 MB weight 32 times so: forward 0.88 -> 0.81 ms and
# backward 2.37 -> 1.95 as one product over the batch (pixel-major).
PER_SAMPLE_PIXELS = 16
# A sample whose columns alone overflow COLUMN_CHUNK (a 3x3 64->64 layer at 56x56: 1.8 M values,
# 7 MB) is a chunk on its own, and its columns are made and multiplied a block of output rows at a
# time, each block about COLUMN_CHUNK values (8 rows there), so the product reads them from L2
# rather than memory. Only where the weight is small too (at most COLUMN_CHUNK / 4 values), as
# each block reads it again: ResNet-50's first layer and 3x3 64->64 at 56x56 (forward 0.85-0.93x,
# backward 0.80-0.87x), DenseNet's 3x3 128->32; its 3x3 128->128 at 28x28 (0.6 MB weight) ran
# 8-24% slower forward in blocks. A weight of up to COLUMN_CHUNK values gets blocks of 4 times its
# size, and only where one sample's columns are over 16 blocks: VGG-16's 3x3 128->128 and 64->128
# at 112x112 (14.5 M and 7.2 M values a sample) ran 0.84-0.91x forward and backward so, but
# Inception v3's 80->192 at 73x73 (3.8 M) and 96->96 at 35x35 1.04-1.06x forward.
# Channel-major layers compute each chunk's share of dW as (K, OC/G) = col gy^T rather than
# (OC/G, K) = gy col^T: OpenBLAS ran it 7-22% faster so (3x3 64->64 at 56x56: 0.85 instead of
# 1.06 ms a sample), and the sum is turned back once per call. Only for a weight gradient of at
# most COLUMN_CHUNK values: the plain transpose of a bigger one is slow (a 4608x512 one took 16 ms,
# its power-of-two rows fighting over the same cache sets), and its products gained only 2-7%.
# At stride 1, dx is itself a convolution: gy, padded by D*(K-1) - P, correlated with the weight
# flipped in both kernel axes and with its two channel axes swapped, (C, OC, KH, KW). Where a layer
# has fewer output than input channels, the columns of gy (OC*KH*KW rows) are smaller than the
# column gradient W^T gy (C*KH*KW rows) that col2im would add up, and the product's inner axis is
# OC*KH*KW instead of OC: DenseNet's 3x3 128->32 layers write a 4x smaller matrix and skip col2im.
# A weight gradient of at most this many values (OC/G * C/G*KH*KW: LeNet's first layers) is
# computed by _small_product rather than OpenBLAS, whose products with so small a result did not
# run any faster on two threads than on one (0.95x for 20x25 over 9,216 pixels; bigger ones 1.7-1.9x).
SMALL_PRODUCT = 4096
# Winograd's F(2x2, 3x3) (tinycnn.kernels.cpu_winograd) for 3x3 layers at stride 1, dilation 1,
# ungrouped, whose three taps all see the input along both axes: 2.25 times fewer multiplications
# than im2col's product, and its transformed input (16 values per 2x2 outputs and channel) smaller
# than the columns (36). Only with at least WINOGRAD_CHANNELS input channels and outputs of at
# least WINOGRAD_SIZE rows and columns. Forward, 2 threads, min of 5-7 alternating rounds on a
# machine shared with other jobs (benchmarks/winograd.py; absolute times moved 2-3x from run to
# run, the ratios much less), Winograd / im2col:
#   VGG-16, batch 4: 64->64 at 224x224 0.49-0.52, 64->128 at 112 0.63, 128->128 0.54-0.64,
#   128->256 at 56 0.56-0.76, 256->256 0.51-0.57, 256->512 at 28 0.45-0.75, 512->512 0.60-0.65,
#   512->512 at 14 0.72-0.77;
#   ResNet-50, batch 8: 64->64 at 56 0.48, 128->128 at 28 0.62, 256->256 at 14 0.59;
#   DenseNet-121, batch 8: 128->32 at 56 0.39, at 28 0.41, at 14 0.70.
# Left to im2col: VGG-16's 3->64 (1.19-1.34; 8->64 at 112 0.96-0.97, 16->16 0.57) and 7x7
# outputs, whose 4x4 tiles compute 64 outputs for 49 and whose tile rows carry a spare tile (see
# cpu_winograd._input_transform): ResNet-50's 512->512 1.08-1.12, DenseNet-121's 128->32 1.05-1.08
# (at 8x8, batch 8: 64->64 0.97, 128->32 0.85, 128->128 0.81, 256->256 0.86, 512->512 0.87; at
# 10x10 256->256 0.75, 512->512 0.78).
# The backward's dx, where it is the convolution of gy above, takes Winograd through
# conv2d_forward; and where Winograd suits that convolution, dx is computed so for layers with as
# many output channels as input too (WINOGRAD_INPUT_GRADIENT), rather than by W^T gy and col2im.
# Whole backward (dx, dW, db; measured while dW was still im2col's, before the Winograd weight
# gradient below), before / after: ResNet-50's 64->64 at 56 0.72,
# 128->128 at 28 0.72, 256->256 at 14 0.79 (dx by Winograd against col2im, in the same rounds:
# 0.80, 0.83, 0.89); DenseNet-121's 128->32 at 56, 28, 14 0.76, 0.78, 0.87.
# float32 error against the float64 reference, He-initialised weights and post-ReLU inputs (batch
# 2, ResNet-50's and DenseNet-121's 3x3 layers): RMS 2.3-4.3e-7 of the output's RMS (im2col
# 2.2-2.5e-7, PyTorch 1.6-1.8e-7), largest 3.5-5.6e-7 of the largest output (im2col 2.1-5.1e-7).
WINOGRAD_CHANNELS = 16
WINOGRAD_SIZE = 8
# and at least WINOGRAD_TILES tiles in the batch (each tile row's spare one counted): with fewer, the
# 16 products are too thin. Inception v3's 3x3 448->384 and 384->384 at 8x8, batch 4 (80 tiles):
# forward 3.23 against 2.72 ms by im2col, backward 10.2 against 6.6 (quiet machine, 2 threads);
# ResNet-18's 64->64 at 8x8, batch 32 (640 tiles): forward 0.66 against 0.89.
WINOGRAD_TILES = 128
# The weight gradient takes Winograd's transforms too (tinycnn.kernels.cpu_winograd_backward) where
# the forward does and the output is at least WINOGRAD_WEIGHT_GRADIENT_SIZE square. Weight gradient,
# Winograd against im2col, the two alternating in one process (median of 7 rounds): 3x3 64->64 at
# 8x8, batch 32 (ResNet-18 on 32x32 images), 1.29 against 1.41 ms; 256->256 at 8x8, batch 8, 3.29
# against 3.46; 128->128 at 12x12, batch 8, 1.79 against 2.62 (14 until the helpers' hand-off
# in kernels/parallel.py was mended, when 8x8 gained nothing).
WINOGRAD_WEIGHT_GRADIENT_SIZE = 8
# From WINOGRAD_4X4_SIZE square on, the forward and the weight gradient take F(4x4, 3x3)
# (tinycnn.kernels.cpu_winograd4x4): 2.25 multiply-adds per output rather than 4, and 4-8 times the
# float32 round-off (3x3 128->128 at 28x28, batch 2, post-ReLU inputs, He-initialised weights:
# output RMS error 1.9e-6 of the output's RMS, largest 6.7e-6 of the largest output, against
# 3.1e-7 and 4.7e-7). Below 16, a 4x4 tile sticks out of the output (14 = 3.5 tiles) and the
# products over the few tiles run slowly. ms by F(4x4, 3x3) / F(2x2, 3x3) / PyTorch, 2 threads,
# quiet machine, batch 8 unless said:
#   forward: DenseNet-121's 128->32 at 56 5.8 / 6.4 / 6.3, at 28 1.6 / 1.9 / 1.8, at 14
#   0.75 / 0.74 / 0.48; its input gradient's 32->128 at 56 5.4 / 6.3 / 6.4, at 28 1.3 / 2.0 / 1.8;
#   ResNet-50's 64->64 at 56 4.9 / 5.8 / 6.0, 128->128 at 28 4.2 / 5.8 / 6.3, 256->256 at 14
#   6.4 / 5.4 / 5.7; ResNet-18's (batch 32) 64->64 at 32 5.4 / 7.4 / 7.9; VGG-16's (batch 4)
#   64->64 at 224 35 / 45 / 53, 256->256 at 56 25 / 34 / 44.
#   weight gradient: DenseNet-121's 128->32 at 56 6.3 / 8.9 / 6.7, at 28 2.2 / 2.5 / 1.8, at 14
#   1.17 / 0.96 / 0.53; ResNet-50's 64->64 at 56 5.4 / 8.1 / 6.5, 128->128 at 28 4.3 / 5.5 / 6.5,
#   256->256 at 14 6.7 / 5.5 / 6.1; ResNet-18's 64->64 at 32 7.4 / 10.7 / 9.0, 128->128 at 16
#   6.1 / 8.7 / 7.5, 256->256 at 8 9.1 / 7.6 / 7.8.
WINOGRAD_4X4_SIZE = 16
WINOGRAD_INPUT_GRADIENT = True
WINOGRAD = True  # False: im2col everywhere (benchmarks/winograd.py's A/B)
# One product per kernel tap (tinycnn.kernels.cpu_conv_taps), over only the outputs where the tap
# reads the input, for ungrouped layers with at least TAPS_CHANNELS input and output channels (the
# taps' products have C as their inner axis) whose im2col products would spend much of their
# multiply-adds on padding: the backward where at most TAPS_BACKWARD_LIVE of them read the input,
# the forward only where at most TAPS_FORWARD_LIVE do. Such layers have small outputs: ResNet-18's
# on 32x32 images. Taps / im2col, median of 7-9 alternating rounds, 2 threads, batch 32
# (`python -m benchmarks.conv_taps`), forward and backward (dx and dW):
#   3x3 128->128 at 4x4 (69% live): 1.05-1.55, 0.78-0.81
#   3x3 128->256 at 4x4, stride 2 (69% live): 1.20-1.87, 0.87-1.03
#   3x3 256->256 at 2x2 (44% live): 1.16-1.73, 0.58-0.84
#   3x3 256->512 at 2x2, stride 2 (44% live): 1.11-1.15, 0.44-0.57
#   3x3 512->512 at 1x1 (11% live; im2col cuts it to 1x1 too): 0.82-1.04, 0.66-0.67
#   3x3 64->64 at 8x8 (84% live, against Winograd's forward and dx): 1.04-1.09, 1.98-2.10
# The forward's one product over all taps runs faster than a product per tap where few of its
# multiply-adds are lost; the backward's tap products skip im2col's col2im and its columns.
TAPS_BACKWARD_LIVE = 0.75
TAPS_FORWARD_LIVE = 0.25
TAPS_CHANNELS = 32
TAPS = True  # False: no layer takes the tap products
# The forward as one product with the layer's whole linear map M (tinycnn.kernels.cpu_conv_dense),
# for ungrouped layers of at least TAPS_CHANNELS input and output channels and at least DENSE_BATCH
# samples (M is built anew every call, as many values as one sample's multiply-adds), where at
# least DENSE_LIVE of M's values are weights and more of them than of im2col's multiply-adds (its
# kernel cut to the live taps) read the input. Such layers have planes of a few pixels: ResNet-18's
# 3x3 256->256 at 2x2 on 32x32 images, where M is all weights and im2col 44% live. Forward, median
# of 9-11 alternating rounds, 2 threads, dense against im2col (torch): batch 32 0.87 against 1.73 ms
# (0.81), batch 16 0.53 against 0.78 (0.41); 32->32 channels, batch 32, 0.055 against 0.069 (0.086);
# but batch 8 0.63 against 0.47 (torch 0.30), batch 1 0.47 against 0.20. Left to the others: 3x3
# 128->128 at 4x4 (M 39% weights: 3.3 ms against 1.3), 3x3/2 256->512 at 2x2 (its kernel cut to
# 2x2 leaves im2col all live: 0.70 against 0.65), 3x3 512->512 at 1x1 (cut to 1x1 likewise: 0.86
# against 0.64 by the tap products).
DENSE_LIVE = 0.5
DENSE_BATCH = 16
DENSE = True  # False: no layer takes the dense product


def _taps_suit(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups, backward):
    """Whether conv2d_backward (backward) or conv2d_forward takes the tap products for this layer
    (see TAPS_BACKWARD_LIVE)."""
    N, C, H, W = x_shape
    OC, _, KH, KW = W_shape
    if not TAPS or groups != 1 or min(C, OC) < TAPS_CHANNELS or N == 0:
        return False
    OH, OW = conv_output_size(H, KH, SH, PH, DH), conv_output_size(W, KW, SW, PW, DW)
    if OH < 1 or OW < 1:
        return False
    live = live_fraction(H, OH, KH, SH, PH, DH) * live_fraction(W, OW, KW, SW, PW, DW)
    return live <= (TAPS_BACKWARD_LIVE if backward else TAPS_FORWARD_LIVE)


def _taps_chunks(x_shape, W_shape, SH, SW, PH, PW, DH, DW):
    """The sample chunks of a layer that takes the tap products: as conv2d's other paths, counting
    the live part of its columns."""
    N, C, H, W = x_shape
    OC, _, KH, KW = W_shape
    OH, OW = conv_output_size(H, KH, SH, PH, DH), conv_output_size(W, KW, SW, PW, DW)
    live = live_fraction(H, OH, KH, SH, PH, DH) * live_fraction(W, OW, KW, SW, PW, DW)
    column_length = int(C * KH * KW * OH * OW * live)
    return _conv_chunks(N, column_length, OC * C * KH * KW, N * OC * column_length)


def _dense_suits(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups):
    """Whether conv2d_forward takes the product with the layer's whole linear map (see DENSE_LIVE)."""
    N, C, H, W = x_shape
    OC, _, KH, KW = W_shape
    if not DENSE or groups != 1 or N < DENSE_BATCH or min(C, OC) < TAPS_CHANNELS:
        return False
    OH, OW = conv_output_size(H, KH, SH, PH, DH), conv_output_size(W, KW, SW, PW, DW)
    if OH < 1 or OW < 1:
        return False
    # im2col's live share once its kernel is cut to the taps that read the input (see _ConvPlan)
    first_i, stop_i = _live_taps(H, OH, KH, SH, PH, DH)
    first_j, stop_j = _live_taps(W, OW, KW, SW, PW, DW)
    cut_live = (live_fraction(H, OH, KH, SH, PH, DH) * KH / (stop_i - first_i)
                * live_fraction(W, OW, KW, SW, PW, DW) * KW / (stop_j - first_j))
    live = plane_map(H, W, KH, KW, SH, SW, PH, PW, DH, DW).live
    return live >= DENSE_LIVE and live > cut_live


def _winograd_suits(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups):
    """Whether conv2d_forward takes Winograd for this layer (see WINOGRAD_CHANNELS; which tile:
    _winograd_tile)."""
    N, C, H, W = x_shape
    OC, _, KH, KW = W_shape
    if not WINOGRAD or (KH, KW, SH, SW, DH, DW, groups) != (3, 3, 1, 1, 1, 1, 1) or N == 0 or OC == 0:
        return False
    OH, OW = H + 2 * PH - 2, W + 2 * PW - 2
    if OH < 1 or OW < 1 or _live_taps(H, OH, 3, 1, PH, 1) != (0, 3) or _live_taps(W, OW, 3, 1, PW, 1) != (0, 3):
        return False  # taps that see only padding: im2col cuts them off (see _ConvPlan)
    TH, TW = -(-OH // 2), -(-OW // 2)
    return C >= WINOGRAD_CHANNELS and min(OH, OW) >= WINOGRAD_SIZE and N * TH * (TW + 1) >= WINOGRAD_TILES


def _winograd_tile(OH, OW):
    """The outputs a side of the Winograd tile for a layer of OH x OW outputs that takes Winograd:
    4, F(4x4, 3x3), from WINOGRAD_4X4_SIZE square on, else 2, F(2x2, 3x3)."""
    return 4 if min(OH, OW) >= WINOGRAD_4X4_SIZE else 2


def _conv_chunks(N, column_length, weight_length, multiply_adds):
    """(start, stop) sample ranges for a conv layer; they depend on its shape only."""
    if N == 0:  # an empty batch: no chunk, and the outputs stay empty (the weight gradient zero)
        return []
    chunk_length = max(COLUMN_CHUNK, weight_length)
    count = -(-N // max(1, chunk_length // max(1, column_length)))  # chunks that fit chunk_length
    if multiply_adds >= PRODUCT_SERIAL:
        count = max(count, PRODUCT_CHUNKS)
    if count > 1:
        count += count % 2
    # As equal as can be (sizes differ by one at most): 32 samples in 6 chunks as 6, 6, 5, 5, 5, 5
    # rather than five of 6 and one of 2, which left one thread 18 samples and the other 14.
    count = min(count, N)
    return [(N * k // count, N * (k + 1) // count) for k in range(count)]


@njit(cache=True, nogil=True)
def _add_shares(shares, total, start, stop):
    # total[i] = shares[0, i] + shares[1, i] + ..., in that order, for i in [start, stop). The loops
    # run over slices from index 0, so LLVM sees no negative index and vectorises them (see
    # cpu_elementwise._relu_forward): over range(start, stop) they ran 7x slower, 0.15 ms for
    # ResNet-18's 64->64 3x3 weight gradient in 6 shares, against NumPy's sum 0.03 on one thread.
    out, first = total[start:stop], shares[0, start:stop]
    for i in range(out.shape[0]):
        out[i] = first[i]
    for k in range(1, shares.shape[0]):
        share = shares[k, start:stop]
        for i in range(out.shape[0]):
            out[i] += share[i]


def _sum_of_shares(shares):
    """shares.sum(axis=0), the chunks' weight-gradient shares added in chunk order, on every thread:
    NumPy's sum runs on one, and took 33 ms of a ResNet-50 backward at batch 8 (42 layers)."""
    if shares.shape[0] == 0:  # an empty batch has no chunks: its weight gradient is zero
        return np.zeros(shares.shape[1:], dtype=shares.dtype)
    flat = shares.reshape(shares.shape[0], -1)
    total = np.empty(flat.shape[1], dtype=shares.dtype)
    parallel_range(lambda start, stop: _add_shares(flat, total, start, stop), total.size, shares.shape[0])
    return total.reshape(shares.shape[1:])


def _pixels_as_rows(pixels, count):
    """The (OC, count, OH*OW) view of a pixel-major (count*OH*OW, OC) array."""
    return pixels.reshape(count, -1, pixels.shape[1]).transpose(2, 0, 1)


def _live_taps(L, O, K, S, P, D):
    """The kernel taps [first, stop) along one axis that land inside the input for some output.
    The others only ever see padding: their columns are zeros, and their weights get no gradient."""
    live = [k for k in range(K) if min(O, (L - 1 + P - k * D) // S + 1) > max(0, -((k * D - P) // S))]
    if not live:  # every window is padding only: keep one tap, whose columns im2col zero-fills
        return 0, 1
    return live[0], live[-1] + 1


def _conv_plan(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups):
    """The _ConvPlan of a layer, made once per shape: a network calls the same few layers over and
    over, and making it took 8-19 us of a 25-85 us LeNet layer at batch 1. The switches that
    benchmarks/winograd.py turns between calls are part of the key, so a plan never outlives them."""
    return _cached_conv_plan(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups, WINOGRAD, WINOGRAD_INPUT_GRADIENT)


@functools.lru_cache(maxsize=1024)
def _cached_conv_plan(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups, winograd, winograd_input_gradient):
    return _ConvPlan(x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups)


class _ConvPlan:
    """A conv2d layer's shapes, chunks and column layout, shared by its forward and backward; they
    depend on the shapes alone (_conv_plan keeps them), the weight in the plan's layout does not
    (weight_for_columns).

    Kernel taps that see only padding are cut off the kernel first: a 3x3 layer on a 1x1 input
    (the last stage of a ResNet on 32x32 images) becomes a 1x1 layer, 9 times less work. KH, KW
    and the weight here are those of the cut kernel, which starts at tap (first_i, first_j); the
    padding PH, PW is moved by as much, so every live tap reads the same pixels as before."""

    def __init__(self, x_shape, W_shape, SH, SW, PH, PW, DH, DW, groups):
        self.N, self.C, self.H, self.W = x_shape
        self.OC, _, KH, KW = W_shape
        self.OH = conv_output_size(self.H, KH, SH, PH, DH)
        self.OW = conv_output_size(self.W, KW, SW, PW, DW)
        self.full_kernel = KH, KW
        self.first_i, stop_i = _live_taps(self.H, self.OH, KH, SH, PH, DH)
        self.first_j, stop_j = _live_taps(self.W, self.OW, KW, SW, PW, DW)
        self.KH, self.KW = stop_i - self.first_i, stop_j - self.first_j
        # where the kernel is cut, its live taps as indices into the flattened KH*KW (see weight_for_columns)
        self.live_taps = None
        self.all_taps = np.arange(KH * KW)
        if (self.KH, self.KW) != (KH, KW):
            rows, columns = np.arange(self.first_i, stop_i), np.arange(self.first_j, stop_j)
            self.live_taps = (rows[:, None] * KW + columns).reshape(-1)
        # The original padding (the pixel-major layout pads by it) and the cut kernel's.
        self.padding = PH, PW
        self.SH, self.SW, self.DH, self.DW = SH, SW, DH, DW
        self.PH, self.PW = PH - self.first_i * DH, PW - self.first_j * DW
        self.G = groups
        self.L = self.OH * self.OW
        self.pointwise = (self.KH, self.KW, SH, SW, self.PH, self.PW) == (1, 1, 1, 1, 0, 0)
        self.K = self.C // groups * self.KH * self.KW  # the length of one column, per group
        column_length = self.C * self.KH * self.KW * self.L
        # dW's shares as (K, OC/G) (see COLUMN_CHUNK); set below for channel-major layers only
        self.transposed_weight_gradient = False
        self.chunks = _conv_chunks(self.N, column_length, self.OC * self.K, self.N * self.OC * self.K * self.L)
        # A 1x1 window at stride 1 sees x itself: one product per sample reads x[n] and writes y[n]
        # (gx[n] in the backward) in place, with no columns, no col2im and no copy back to NCHW.
        # Where a chunk holds several samples, each product reads the weight again: only for a
        # weight of at most COLUMN_CHUNK values (all of ResNet-50's and DenseNet-121's 1x1 layers
        # but the 2048<->512 ones at 7x7).
        self.per_sample = self.pointwise and self.L >= PER_SAMPLE_PIXELS and (
            self.OC * self.K <= COLUMN_CHUNK or all(stop - start == 1 for start, stop in self.chunks))
        self.pixel_major = (not self.per_sample and groups == 1 and self.C >= PIXEL_MAJOR_CHANNELS
                            and self.OW < PIXEL_MAJOR_WIDTH and self.OC * self.K <= PIXEL_MAJOR_WEIGHT
                            and (self.OC * self.K <= COLUMN_CHUNK or self.N * self.L >= PIXEL_MAJOR_PIXELS))
        self.chunk_index = {start: k for k, (start, _) in enumerate(self.chunks)}
        # dx as a convolution of gy, where that beats col2im (see the comments above SMALL_PRODUCT);
        # the padding D*(K-1) - P it needs must not be negative
        self.input_gradient_by_convolution = (
            (SH, SW) == (1, 1) and groups == 1 and not self.pointwise
            and DH * (KH - 1) >= PH and DW * (KW - 1) >= PW
            and (self.OC < self.C or (WINOGRAD_INPUT_GRADIENT and _winograd_suits(
                (self.N, self.OC, self.OH, self.OW), (self.C, self.OC, KH, KW), 1, 1,
                DH * (KH - 1) - PH, DW * (KW - 1) - PW, DH, DW, 1))))
        self.row_blocks = [(0, self.OH)]
        weight_length = self.OC * self.K
        block_length = max(COLUMN_CHUNK, 4 * weight_length)
        if weight_length <= COLUMN_CHUNK // 4:
            blocked = column_length > COLUMN_CHUNK
        else:  # a bigger weight, read again by every block: only for a sample's huge columns
            blocked = weight_length <= COLUMN_CHUNK and column_length > 16 * block_length
        if blocked and not self.pixel_major and not self.pointwise:
            blocks = -(-self.OH // max(1, block_length // (self.C * self.KH * self.KW * self.OW)))
            self.row_blocks = split(self.OH, -(-self.OH // blocks))  # equal blocks: 28 rows as 4 x 7, not 8+8+8+4
        self.row_block_array = np.array(self.row_blocks, dtype=np.int64).reshape(-1, 2)  # for the nogil chunks
        if not self.pixel_major:
            # (per group: a group's product of at most SMALL_PRODUCT values is _small_product's, in (OC/G, K))
            self.transposed_weight_gradient = (self.OC // groups * self.K > SMALL_PRODUCT
                                               and self.OC * self.K <= COLUMN_CHUNK)

    def weight_for_columns(self, W):
        """W cut to the live taps, in the columns' layout: (OC, KH*KW*C) pixel-major, else (G, OC/G, K)."""
        if self.pixel_major:  # (OC, KH, KW, C), the live taps only, gathered on every thread
            return gather_taps(W, self.all_taps if self.live_taps is None else self.live_taps, "pixel").reshape(
                self.OC, self.K)
        if self.live_taps is not None:  # (OC, C/G, KH, KW) of the live taps
            W = gather_taps(W, self.live_taps, "channel")
        return np.ascontiguousarray(W).reshape(self.G, self.OC // self.G, self.K)

    def full_weight_gradient(self, gW):
        """The cut kernel's weight gradient (OC, C/G, KH, KW) placed in the whole kernel's, zero at
        the dead taps."""
        if (self.KH, self.KW) == self.full_kernel:
            return gW
        full = np.zeros(gW.shape[:2] + self.full_kernel, dtype=gW.dtype)
        full[:, :, self.first_i:self.first_i + self.KH, self.first_j:self.first_j + self.KW] = gW
        return full

    def columns(self, x, start, stop, rows=None):
        """The columns of samples [start, stop) in this layer's layout; of one sample's output rows
        [first, last) only, for rows=(first, last) (channel-major layouts)."""
        count = stop - start
        first, last = (0, self.OH) if rows is None else rows
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
            col = np.empty((self.C, self.KH, self.KW, count, last - first, self.OW), dtype=x.dtype)
            _im2col(x[start:stop], col, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW, 0, self.C * count, first)
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
    chunk of samples at a time on every thread; or, where they are faster (see the rules above),
    Winograd's F(2x2, 3x3), the product with the layer's whole linear map, or the tap products."""
    return _conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups, None)


def conv2d_batch_norm_relu_inference(x, W, b, SH, SW, PH, PW, DH, DW, groups, gamma, beta, mean, inv_std, residual,
                                     relu):
    """As the reference: conv2d_forward, then batch_norm_forward_inference, add_in_place(y,
    residual) (when given) and relu_forward (when relu), but each chunk of the output is normalised
    (and rectified) by the thread that computed it, right after its product: the chunk is still in
    that core's cache, where two more passes over the whole output would read it from memory twice
    (ResNet-50's inference at batch 8 spent 44 ms in its BatchNorms and 15 in its ReLUs that way).
    The same arithmetic in the same order as those kernels (cpu_norm._batch_norm_relu_rows), so the
    same bits."""
    shape = (x.shape[0], W.shape[0], conv_output_size(x.shape[2], W.shape[2], SH, PH, DH),
             conv_output_size(x.shape[3], W.shape[3], SW, PW, DW))
    normalisation = inference_normalisation(shape, x.dtype, gamma, beta, mean, inv_std, residual, relu)
    return _conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups, normalisation)


def _conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups, normalisation):
    """conv2d_forward; then, unless normalisation is None, _batch_norm_relu_rows(..., *normalisation)
    on each chunk of the output as soon as it is written."""
    if _winograd_suits(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups):
        tile = _winograd_tile(x.shape[2] + 2 * PH - 2, x.shape[3] + 2 * PW - 2)
        return winograd_conv2d_forward(x, W, b, PH, PW, normalisation, tile)
    if _dense_suits(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups):
        return dense_conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, normalisation)
    if _taps_suit(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups, backward=False):
        chunks = _taps_chunks(x.shape, W.shape, SH, SW, PH, PW, DH, DW)
        return taps_conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, chunks, normalisation)
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    layer = _conv_plan(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups)
    weight = layer.weight_for_columns(W)
    N, OC, OH, OW, L, G, K = layer.N, layer.OC, layer.OH, layer.OW, layer.L, layer.G, layer.K
    b = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    y_rows = y.reshape(N, OC, L)

    def normalise(start, stop, first_row=0, stop_row=OH):
        if normalisation is not None:
            _batch_norm_relu_rows(y, start, stop, first_row, stop_row, *normalisation)

    def run(start, stop):
        count = stop - start
        if layer.per_sample:
            x_rows = x.reshape(N, layer.C, L)
            for n in range(start, stop):
                np.matmul(weight, x_rows[n].reshape(G, K, L), out=y_rows[n].reshape(G, OC // G, L))
                if b.shape[0]:
                    y_rows[n] += b[:, None]
                normalise(n, n + 1)
        elif layer.pixel_major:
            col = layer.columns(x, start, stop)
            _rows_to_samples(_pixels_as_rows(col @ weight.T, count), b, y_rows, start)  # (count*L, OC)
            normalise(start, stop)
        elif count == 1:  # the product of one sample is already its NCHW output: write it in place
            y_sample = y_rows[start].reshape(G, OC // G, L)
            for first, last in layer.row_blocks:
                col = layer.columns(x, start, stop, (first, last))
                np.matmul(weight, col.reshape(G, K, -1), out=y_sample[:, :, first * OW:last * OW])
                if b.shape[0]:
                    y_sample[:, :, first * OW:last * OW] += b.reshape(G, OC // G, 1)
                normalise(start, stop, first, last)
        else:
            col = layer.columns(x, start, stop)
            product = np.matmul(weight, col.reshape(G, K, count * L))  # (G, OC/G, count*L)
            _rows_to_samples(product.reshape(OC, count, L), b, y_rows, start)
            normalise(start, stop)

    # 0 where NumPy's BLAS cannot be called by address, or for a weight of another dtype (np.matmul promotes)
    gemm = cpu_blas.gemm_address(x.dtype) if W.dtype == x.dtype else 0
    fused = _no_normalisation(x.dtype) if normalisation is None else normalisation
    steps = (normalisation is not None,) + tuple(fused)  # the chunks' normalise, gamma, ..., relu

    def run_nogil(start, stop):  # `run` as one nogil call (see tinycnn.kernels.cpu_conv_chunks)
        if layer.per_sample:
            _per_sample_forward_chunk(gemm, x.reshape(N, layer.C, L), weight, b, y, start, stop, *steps)
        elif layer.pixel_major:
            _pixel_major_forward_chunk(gemm, x, weight, b, y, layer.KH, layer.KW, layer.SH, layer.SW, *layer.padding,
                                       layer.DH, layer.DW, layer.first_i * layer.DH, layer.first_j * layer.DW,
                                       start, stop, *steps)
        else:
            _channel_major_forward_chunk(gemm, x, weight, b, y, layer.KH, layer.KW, layer.SH, layer.SW, layer.PH,
                                         layer.PW, layer.DH, layer.DW, layer.row_block_array, start, stop, *steps)

    run_chunks(run_nogil if gemm else run, layer.chunks)
    return y


@functools.lru_cache(maxsize=None)
def _no_normalisation(dtype):
    """Arguments for the nogil chunks' normalisation where there is none (normalise False)."""
    empty = np.empty(0, dtype)
    return empty, empty, empty, empty, np.empty((0, 0, 0, 0), dtype), False


def _input_gradient_by_convolution(gy, W, PH, PW, DH, DW):
    """dx of an ungrouped stride-1 layer as a convolution of gy (see the comments above SMALL_PRODUCT)."""
    # (OC, C, KH, KW) -> (C, OC, KH, KW), each kernel turned by 180 degrees
    W_turned = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    KH, KW = W.shape[2:]
    return conv2d_forward(gy, W_turned, None, 1, 1, DH * (KH - 1) - PH, DW * (KW - 1) - PW, DH, DW, 1)


def conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad=(True, True, True)):
    """As the reference, a chunk of samples at a time: each chunk's share of gW (and gb) is kept
    apart and the shares are added in chunk order, so the sum does not depend on the threads.
    gx comes from each chunk's column gradient by col2im, or, at stride 1 where the layer has
    fewer output than input channels or where Winograd suits that convolution (see
    WINOGRAD_INPUT_GRADIENT), from one convolution of gy after the chunks. gW comes from
    Winograd's F(2x2, 3x3) instead (tinycnn.kernels.cpu_winograd_backward) where the forward takes
    it and the output is at least WINOGRAD_WEIGHT_GRADIENT_SIZE square, F(4x4, 3x3) from
    WINOGRAD_4X4_SIZE (cpu_winograd4x4_backward); or everything from the
    tap products (tinycnn.kernels.cpu_conv_taps) where they suit the layer's backward."""
    if _taps_suit(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups, backward=True):
        chunks = _taps_chunks(x.shape, W.shape, SH, SW, PH, PW, DH, DW)
        return taps_conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, chunks, needs_grad)
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    layer = _conv_plan(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups)
    N, OC, L, G, K = layer.N, layer.OC, layer.L, layer.G, layer.K
    gy_rows = gy.reshape(N, OC, L)
    chunks = layer.chunks
    gW_by_winograd = (needs_grad[1] and _winograd_suits(x.shape, W.shape, SH, SW, PH, PW, DH, DW, groups)
                      and min(layer.OH, layer.OW) >= WINOGRAD_WEIGHT_GRADIENT_SIZE)
    gW = None
    if gW_by_winograd:
        gW = winograd_conv2d_weight_gradient(gy, x, PH, PW, _winograd_tile(layer.OH, layer.OW))
        needs_grad = (needs_grad[0], False, needs_grad[2])
    if not needs_grad[1] and (not needs_grad[0] or layer.input_gradient_by_convolution):
        # The chunks would only copy gy to sum it for gb: skip them (a layer whose dx is a
        # convolution, in a network's first layer, or whose gW came from Winograd). 256->256 3x3 at
        # 14x14, batch 8: dx 6.5 -> 5.4 ms.
        gx = _input_gradient_by_convolution(gy, W, PH, PW, DH, DW) if needs_grad[0] else None
        return gx, gW, (gy.sum(axis=(0, 2, 3)) if needs_grad[2] else None)
    # gx from the chunks' columns (col2im), or afterwards as a convolution of gy (see COLUMN_CHUNK)
    gx_from_columns = needs_grad[0] and not layer.input_gradient_by_convolution
    gx = np.empty_like(x) if gx_from_columns else None
    weight = layer.weight_for_columns(W) if gx_from_columns else None  # dcol = W^T gy
    # Each chunk's share of dW. (As (K, OC) products they ran 10-40% faster, but turning the sum
    # back into (OC, K) cost more: a (2304, 256) transpose took 2.5 ms here.)
    share_shape = (G, K, OC // G) if layer.transposed_weight_gradient else (G, OC // G, K)
    gW_shares = np.empty((len(chunks),) + share_shape, dtype=x.dtype) if needs_grad[1] else None
    gb_shares = np.empty((len(chunks), OC), dtype=x.dtype)
    small = K * (OC // G) <= SMALL_PRODUCT  # each group's dW by _small_product rather than OpenBLAS

    def run(start, stop):
        count = stop - start
        k = layer.chunk_index[start]
        if layer.pixel_major:
            col = layer.columns(x, start, stop) if needs_grad[1] else None
            # y = col W^T: dW = gy^T col, dcol = gy W (gy as (count*L, OC)).
            gy_pixels = np.empty((count * L, OC), dtype=x.dtype)
            _samples_to_rows(gy_rows, start, _pixels_as_rows(gy_pixels, count), gb_shares[k])
            if needs_grad[1]:
                np.matmul(gy_pixels.T, col, out=gW_shares[k, 0])
            if gx_from_columns:
                layer.columns_to_input(gy_pixels @ weight, gx, start, stop)
        else:
            # y = W col per group: dW = gy col^T, dcol = W^T gy (gy as (G, OC/G, count*L)).
            if count == 1:  # one sample's gy is already in this layout
                rows_g = gy_rows[start].reshape(G, OC // G, L)
                if needs_grad[2]:  # (the sum is its own pass over gy here: only when asked for)
                    gb_shares[k] = gy_rows[start].sum(axis=1)
            else:
                rows = np.empty((OC, count, L), dtype=x.dtype)
                _samples_to_rows(gy_rows, start, rows, gb_shares[k])
                rows_g = rows.reshape(G, OC // G, count * L)
            if needs_grad[1]:
                # Blocks of output rows (one sample only; see COLUMN_CHUNK): their shares of dW add up.
                blocks = layer.row_blocks if count == 1 else [(0, layer.OH)]
                block_share = np.empty(share_shape, dtype=x.dtype) if len(blocks) > 1 else None
                for index, (first, last) in enumerate(blocks):
                    col_g = layer.columns(x, start, stop, (first, last)).reshape(G, K, -1)
                    rows_block = rows_g[:, :, first * layer.OW:last * layer.OW] if count == 1 else rows_g
                    share = gW_shares[k] if index == 0 else block_share
                    if small:
                        for g in range(G):
                            _small_product(rows_block[g], col_g[g], share[g])
                    elif layer.transposed_weight_gradient:  # dW^T = col gy^T
                        np.matmul(col_g, rows_block.swapaxes(1, 2), out=share)
                    else:
                        np.matmul(rows_block, col_g.swapaxes(1, 2), out=share)
                    if index > 0:
                        gW_shares[k] += block_share
            if gx_from_columns and layer.per_sample:  # dx[n] = W^T gy[n], written in place
                gx_rows = gx.reshape(N, layer.C, L)
                for n in range(start, stop):
                    np.matmul(weight.swapaxes(1, 2), gy_rows[n].reshape(G, OC // G, L),
                              out=gx_rows[n].reshape(G, K, L))
            elif gx_from_columns:
                layer.columns_to_input(np.matmul(weight.swapaxes(1, 2), rows_g), gx, start, stop)

    # 0 where NumPy's BLAS cannot be called by address, or for a weight of another dtype (np.matmul promotes)
    gemm = cpu_blas.gemm_address(x.dtype) if W.dtype == x.dtype else 0
    # Empty arrays of the right dimensions in place of the gradients not asked for: the weight and
    # a share of dW are (OC, K) pixel-major, (G, OC/G, K) or (G, K, OC/G) channel-major
    unused = np.empty((0,) * (2 if layer.pixel_major else 3), dtype=x.dtype)
    nogil_weight = weight if gx_from_columns else unused
    nogil_gx = gx if gx_from_columns else np.empty((0,) * 4, dtype=x.dtype)

    def run_nogil(start, stop):  # `run` as one nogil call (see tinycnn.kernels.cpu_conv_chunks)
        k = layer.chunk_index[start]
        if layer.pixel_major:
            _pixel_major_backward_chunk(gemm, x, gy, nogil_weight, gW_shares[k, 0] if needs_grad[1] else unused,
                                        gb_shares[k], nogil_gx, layer.KH, layer.KW, layer.SH, layer.SW,
                                        *layer.padding, layer.DH, layer.DW, layer.first_i * layer.DH,
                                        layer.first_j * layer.DW, start, stop, needs_grad[1], gx_from_columns)
        else:
            _channel_major_backward_chunk(gemm, x, gy, nogil_weight, gW_shares[k] if needs_grad[1] else unused,
                                          gb_shares[k], nogil_gx, G, layer.KH, layer.KW, layer.SH, layer.SW,
                                          layer.PH, layer.PW, layer.DH, layer.DW, layer.row_block_array,
                                          layer.transposed_weight_gradient, small, start, stop, needs_grad[1],
                                          gx_from_columns, layer.per_sample, needs_grad[2])

    run_chunks(run_nogil if gemm else run, chunks)
    if needs_grad[0] and layer.input_gradient_by_convolution:
        gx = _input_gradient_by_convolution(gy, W, PH, PW, DH, DW)
    gb = None
    if needs_grad[1]:
        gW = _sum_of_shares(gW_shares)  # (G, OC/G, K)
        if layer.transposed_weight_gradient:  # the sum was (G, K, OC/G)
            gW = gW.swapaxes(1, 2)
        if layer.pixel_major:  # (OC, KH*KW*C) -> (OC, C, KH, KW)
            gW = gW.reshape(OC, layer.KH, layer.KW, layer.C).transpose(0, 3, 1, 2)
        gW = layer.full_weight_gradient(np.ascontiguousarray(gW).reshape(OC, layer.C // G, layer.KH, layer.KW))
    if needs_grad[2]:
        gb = gb_shares.sum(axis=0)
    return gx, gW, gb
