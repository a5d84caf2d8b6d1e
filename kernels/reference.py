"""The readable NumPy reference of every kernel: the teaching version and the test oracle.

Each function works on NumPy or CuPy arrays alike (through `xp`) and is written for clarity, not
speed; tinycnn.kernels.cpu (Numba) and tinycnn.kernels.gpu (CuPy) compute the same results with
the same names and index maths. Shapes use upper-case letters: N batch, C channels, H x W input,
KH x KW kernel, SH/SW stride, PH/PW zero padding on both sides, DH/DW dilation, OH x OW output.

The column layout of im2col is (N, C, KH, KW, OH, OW): col[n, c, i, j, oh, ow] is the input pixel
that kernel tap (i, j) sees when the window sits at output position (oh, ow),
x[n, c, oh*SH - PH + i*DH, ow*SW - PW + j*DW], or 0 where that falls in the padding.
"""
from tinycnn.backend import get_array_module


def conv_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Output length along one axis, as PyTorch computes it for convolution and pooling.

    With ceil_mode a last, partial window is kept, unless it would start in the right padding.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """(N, C, H, W) -> (N, C, KH, KW, OH, OW): every window of x laid out as a column."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH)
    OW = conv_output_size(W, KW, SW, PW, DW)
    x_padded = xp.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))
    col = xp.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            # Tap (i, j) of every window: rows i*DH, i*DH + SH, ..., one per output row.
            col[:, :, i, j] = x_padded[:, :, i * DH:i * DH + SH * (OH - 1) + 1:SH,
                                       j * DW:j * DW + SW * (OW - 1) + 1:SW]
    return col


def col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    """(N, C, KH, KW, OH, OW) -> (N, C, H, W): the adjoint of im2col, summing overlapping taps."""
    xp = get_array_module(col)
    N, C, KH, KW, OH, OW = col.shape
    x_padded = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=col.dtype)
    for i in range(KH):
        for j in range(KW):
            x_padded[:, :, i * DH:i * DH + SH * (OH - 1) + 1:SH,
                     j * DW:j * DW + SW * (OW - 1) + 1:SW] += col[:, :, i, j]
    return x_padded[:, :, PH:PH + H, PW:PW + W]


def matmul(a, b):
    """The matrix product a @ b of 2-D a (M, K) and b (K, N)."""
    return a @ b


def conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups, im2col=im2col):
    """x (N, C, H, W), W (OC, C / groups, KH, KW), b (OC,) or None -> y (N, OC, OH, OW):
    cross-correlation with zero padding, as every framework computes it.

    Convolution is a matrix product once every window of x is laid out as a column: with col from
    im2col, y[n, o, oh, ow] = sum over (c, i, j) of W[o, c, i, j] * col[n, c, i, j, oh, ow] + b[o],
    the weight viewed as (OC, C*KH*KW) times col viewed as (C*KH*KW, N*OH*OW): one product for the
    whole batch, which BLAS runs faster than N small ones. With groups G the channels split into G
    independent slices, one product per group (channel c = g * C/G + c', output o = g * OC/G + o').
    `im2col` may be another backend's (the CuPy kernels use this function with theirs).
    """
    xp = get_array_module(x)
    N, C = x.shape[:2]
    OC, _, KH, KW = W.shape
    G = groups
    K = C // G * KH * KW  # the length of one column (per group)
    col = im2col(x, KH, KW, SH, SW, PH, PW, DH, DW)  # (N, C, KH, KW, OH, OW)
    OH, OW = col.shape[4:]
    col_g = col.transpose(1, 2, 3, 0, 4, 5).reshape(G, K, N * OH * OW)  # the samples side by side
    y = W.reshape(G, OC // G, K) @ col_g  # (G, OC/G, N*OH*OW)
    y = xp.ascontiguousarray(y.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3))  # (N, OC, OH, OW)
    if b is not None:
        y += b.reshape(1, OC, 1, 1)
    return y


def conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad=(True, True, True),
                    im2col=im2col, col2im=col2im):
    """Gradients (gx, gW, gb) of conv2d_forward for the output gradient gy (N, OC, OH, OW); each is
    None where needs_grad (for x, W, b) says it is not wanted. The columns of x are computed
    again rather than kept from the forward pass, which saves their memory (KH*KW times x's)."""
    # Per group, y = W col + b with W (OC', K) and col (K, L), K = C'*KH*KW, L = N*OH*OW:
    #   dW = gy col^T (the sum over the batch and positions is the product's inner axis);
    #   dcol = W^T gy, and im2col copied each x into several columns, so its adjoint col2im sums
    #   dcol back into dx;  db = gy summed over N, OH, OW.
    N, C, H, W_ = x.shape
    OC, _, KH, KW = W.shape
    OH, OW = gy.shape[2:]
    G = groups
    K = C // G * KH * KW
    gy_g = gy.transpose(1, 0, 2, 3).reshape(G, OC // G, N * OH * OW)  # (G, OC/G, N*OH*OW), a copy
    gx = gW = gb = None
    if needs_grad[0]:
        gcol = W.reshape(G, OC // G, K).swapaxes(1, 2) @ gy_g  # (G, K, N*OH*OW)
        gcol = gcol.reshape(C, KH, KW, N, OH, OW).transpose(3, 0, 1, 2, 4, 5)  # (N, C, KH, KW, OH, OW)
        gx = col2im(gcol, H, W_, SH, SW, PH, PW, DH, DW)
    if needs_grad[1]:
        col = im2col(x, KH, KW, SH, SW, PH, PW, DH, DW)
        col_g = col.transpose(1, 2, 3, 0, 4, 5).reshape(G, K, N * OH * OW)
        gW = (gy_g @ col_g.swapaxes(1, 2)).reshape(W.shape)  # (G, OC/G, K) -> (OC, C/G, KH, KW)
    if needs_grad[2]:
        gb = gy.sum(axis=(0, 2, 3))
    return gx, gW, gb


def _pool_windows(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode, fill):
    """Pad x with `fill` far enough for every (ceil_mode) window; return windows and output size."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, DW, ceil_mode)
    # A ceil_mode window may reach past the right padding: extend it with `fill` as well.
    bottom = max(PH, (OH - 1) * SH + DH * (KH - 1) + 1 - H - PH)
    right = max(PW, (OW - 1) * SW + DW * (KW - 1) + 1 - W - PW)
    x_padded = xp.pad(x, ((0, 0), (0, 0), (PH, bottom), (PW, right)), constant_values=fill)
    windows = xp.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            windows[:, :, i, j] = x_padded[:, :, i * DH:i * DH + SH * (OH - 1) + 1:SH,
                                           j * DW:j * DW + SW * (OW - 1) + 1:SW]
    return windows, OH, OW


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    """Returns (y, argmax): y (N, C, OH, OW) and, for each output, the flat index h*W + w of the
    input pixel that won (the first one on ties), as PyTorch's return_indices."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    windows, OH, OW = _pool_windows(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode, -xp.inf)
    windows = windows.reshape(N, C, KH * KW, OH, OW)
    tap = windows.argmax(axis=2)  # (N, C, OH, OW): which of the KH*KW taps won
    y = xp.take_along_axis(windows, tap[:, :, None], axis=2)[:, :, 0]
    oh = xp.arange(OH).reshape(OH, 1)
    ow = xp.arange(OW).reshape(1, OW)
    h = oh * SH - PH + (tap // KW) * DH
    w = ow * SW - PW + (tap % KW) * DW
    return y, (h * W + w).astype(xp.int64)


def check_argmax_in_plane(argmax, H, W):
    """Raise ValueError unless every index points into the H x W plane. A window that holds only
    padding (possible with dilation; max_pool2d rejects it) has no winner inside the input, and a
    backward that followed its index would write outside the gradient."""
    if argmax.size and (int(argmax.min()) < 0 or int(argmax.max()) >= H * W):
        raise ValueError(f"max_pool2d_backward: expected argmax indices in [0, {H * W}) for a {H}x{W} "
                         f"input, got [{int(argmax.min())}, {int(argmax.max())}] (a window of padding only?)")


def max_pool2d_backward(gy, argmax, H, W):
    """Route each output gradient to the input pixel that won its window (summing if one pixel
    won several overlapping windows)."""
    check_argmax_in_plane(argmax, H, W)
    xp = get_array_module(gy)
    N, C, OH, OW = gy.shape
    gx = xp.zeros((N * C, H * W), dtype=gy.dtype)
    rows = xp.arange(N * C).reshape(N * C, 1)
    flat_gy = gy.reshape(N * C, OH * OW)  # not -1: N may be 0
    flat_argmax = argmax.reshape(N * C, OH * OW)
    xp.add.at(gx, (xp.broadcast_to(rows, flat_argmax.shape), flat_argmax), flat_gy)
    return gx.reshape(N, C, H, W)


def avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, xp):
    """(OH, OW) array of the number each window's sum is divided by, as PyTorch counts it:
    with count_include_pad, the window clipped to the padded input; else only real pixels."""
    h_start = xp.arange(OH) * SH - PH
    w_start = xp.arange(OW) * SW - PW
    h_end = xp.minimum(h_start + KH, H + PH)
    w_end = xp.minimum(w_start + KW, W + PW)
    if not count_include_pad:
        h_start, w_start = xp.maximum(h_start, 0), xp.maximum(w_start, 0)
        h_end, w_end = xp.minimum(h_end, H), xp.minimum(w_end, W)
    return (h_end - h_start).reshape(OH, 1) * (w_end - w_start).reshape(1, OW)


def avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    xp = get_array_module(x)
    N, C, H, W = x.shape
    windows, OH, OW = _pool_windows(x, KH, KW, SH, SW, PH, PW, 1, 1, ceil_mode, 0)
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, xp)
    return (windows.sum(axis=(2, 3)) / divisor).astype(x.dtype)


def avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """Each input pixel gets gy / divisor from every window that covers it (col2im of the
    gradient spread evenly over each window)."""
    xp = get_array_module(gy)
    N, C, OH, OW = gy.shape
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, xp)
    share = (gy / divisor).astype(gy.dtype)
    bottom = max(PH, (OH - 1) * SH + KH - H - PH)
    right = max(PW, (OW - 1) * SW + KW - W - PW)
    gx_padded = xp.zeros((N, C, PH + H + bottom, PW + W + right), dtype=gy.dtype)
    for i in range(KH):
        for j in range(KW):
            gx_padded[:, :, i:i + SH * (OH - 1) + 1:SH, j:j + SW * (OW - 1) + 1:SW] += share
    return gx_padded[:, :, PH:PH + H, PW:PW + W]


def _channel_shape(x):
    """(1, C, 1, ...): the shape that broadcasts a per-channel (C,) array against x (N, C, ...)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm_forward_training(x, gamma, beta, eps):
    """Normalise x (N, C, ...) per channel with its own batch statistics, then scale and shift.

    Returns (y, mean, var, inv_std), the last three (C,); var is the biased variance (divided by
    n = N * H * W), the one used to normalise. gamma or beta may be None (no scale, no shift).
    """
    xp = get_array_module(x)
    axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channel axis 1
    shape = _channel_shape(x)
    mean = x.mean(axis=axes)
    centered = x - mean.reshape(shape)
    var = (centered * centered).mean(axis=axes)
    inv_std = 1 / xp.sqrt(var + eps)
    y = centered * inv_std.reshape(shape)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y.astype(x.dtype), mean, var, inv_std


def batch_norm_backward(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_training: (gx, ggamma, gbeta), the last two (C,).

    y = gamma * x_hat + beta with x_hat = (x - mean) * inv_std. The batch mean and variance depend
    on every x of the channel, which gives, with sums over the n = N * H * W items of a channel,
    gx = gamma * inv_std * (gy - sum(gy) / n - x_hat * sum(gy * x_hat) / n).
    gamma None counts as 1; ggamma and gbeta are returned all the same.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    shape = _channel_shape(x)
    n = x.size // x.shape[1]
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    gbeta = gy.sum(axis=axes)
    ggamma = (gy * x_hat).sum(axis=axes)
    gain = inv_std if gamma is None else gamma * inv_std
    gx = gain.reshape(shape) * (gy - gbeta.reshape(shape) / n - x_hat * ggamma.reshape(shape) / n)
    return gx.astype(x.dtype), ggamma.astype(x.dtype), gbeta.astype(x.dtype)


def batch_norm_relu_forward_training(x, gamma, beta, eps, residual, relu):
    """Training's BatchNorm -> (+ residual) -> ReLU as one call: (y, mean, var, inv_std) of
    batch_norm_forward_training, with y = relu(normalised x + residual), the residual (x's shape:
    a ResNet block's shortcut) added only when not None and the ReLU applied only when relu.
    Here the steps in turn; the Numba backend writes y in one pass."""
    y, mean, var, inv_std = batch_norm_forward_training(x, gamma, beta, eps)
    if residual is not None:
        y = add_in_place(y, residual)
    if relu:
        y = relu_forward(y, out=y)
    return y, mean, var, inv_std


def batch_norm_relu_backward(gy, y, x, gamma, mean, inv_std, relu, needs_residual_grad):
    """Gradients of batch_norm_relu_forward_training: (gx, ggamma, gbeta, gresidual).

    Back through the ReLU first: g = gy where y > 0, else 0 (relu_backward; g = gy without the
    ReLU). The residual was added as it is, so its gradient is g itself (None unless
    needs_residual_grad), and batch_norm_backward of g gives the rest."""
    g = relu_backward(gy, y) if relu else gy
    gx, ggamma, gbeta = batch_norm_backward(g, x, gamma, mean, inv_std)
    return gx, ggamma, gbeta, (g if needs_residual_grad else None)


def _channel_window_sum(a, before, after):
    """s[:, c] = a[:, c - before] + ... + a[:, c + after], with zeros beyond the channel range."""
    xp = get_array_module(a)
    C = a.shape[1]
    padded = xp.pad(a, ((0, 0), (before, after)) + ((0, 0),) * (a.ndim - 2))
    s = xp.zeros_like(a)
    for i in range(before + after + 1):
        s += padded[:, i:i + C]
    return s


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalisation across channels of x (N, C, ...). Returns (y, scale):

        scale_c = k + alpha * sum of x_c'^2 over c' in [c - size//2, c + (size - 1)//2]
        y_c = x_c * scale_c ** -beta

    `alpha` is the coefficient of each square: PyTorch's divided form passes alpha / size.
    """
    scale = k + alpha * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    y = x * scale ** -beta
    return y.astype(x.dtype), scale


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """Gradient of lrn_forward.

    dy_c/dx_j = [c == j] scale_c^-beta - 2 alpha beta x_j x_c scale_c^(-beta-1) for every c whose
    window holds j, that is c in [j - (size - 1)//2, j + size//2] (the window mirrored, which
    matters for even sizes); and x_c scale_c^(-beta-1) = y_c / scale_c.
    """
    back = _channel_window_sum(gy * y / scale, (size - 1) // 2, size // 2)
    gx = gy * scale ** -beta - 2 * alpha * beta * x * back
    return gx.astype(x.dtype)


def batch_norm_forward_inference(x, gamma, beta, mean, inv_std):
    """Normalise x (N, C, ...) per channel with given statistics (evaluation mode's running ones),
    then scale and shift: y = (x - mean) * inv_std * gamma + beta, with mean and inv_std (C,)
    constants. gamma or beta may be None (no scale, no shift).

    Centred first, as batch_norm_forward_training: folding the mean into one multiply-add,
    x * gain + (beta - gain * mean), cancels two large terms where the mean is large beside the
    spread.
    """
    shape = _channel_shape(x)
    y = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y.astype(x.dtype)


def conv2d_batch_norm_relu_inference(x, W, b, SH, SW, PH, PW, DH, DW, groups, gamma, beta, mean, inv_std, residual,
                                     relu):
    """Inference's conv -> BatchNorm with given statistics -> (+ residual) -> ReLU as one call:
    relu(batch_norm_forward_inference(conv2d_forward(x, W, b, ...), gamma, beta, mean, inv_std)
    + residual), the residual (y's shape; a ResNet block's shortcut) added only when it is not None
    and the ReLU applied only when relu is True.

    Here the three steps run one after the other. The Numba backend normalises each chunk of the
    convolution's output right after its product wrote it, while it is still in the core's cache,
    with the same arithmetic in the same order, so its result is that of its own three kernels run
    in turn, bit for bit.
    """
    y = conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups)
    y = batch_norm_forward_inference(y, gamma, beta, mean, inv_std)
    if residual is not None:
        y = add_in_place(y, residual)
    return relu_forward(y, out=y) if relu else y


def concat_batch_norm_relu_inference(xs, gamma, beta, mean, inv_std, relu):
    """Inference's concat -> BatchNorm with given statistics -> ReLU (when relu) as one call:
    relu(batch_norm_forward_inference(concatenate(xs, axis=1), gamma, beta, mean, inv_std)), xs a
    sequence of (N, C_k, ...) arrays (a DenseNet layer's input maps). Here the steps in turn; the
    Numba backend writes each normalised value straight from its input, the same arithmetic."""
    xp = get_array_module(*xs)
    y = batch_norm_forward_inference(xp.concatenate(xs, axis=1), gamma, beta, mean, inv_std)
    return relu_forward(y, out=y) if relu else y


def batch_norm_backward_inference(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_inference: (gx, ggamma, gbeta), the last two (C,).

    The statistics are constants here, so y is affine in x: gx = gy * gamma * inv_std, and, with
    sums over every axis but the channel's, ggamma = sum(gy * x_hat), gbeta = sum(gy), x_hat =
    (x - mean) * inv_std. gamma None counts as 1; ggamma and gbeta are returned all the same.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    shape = _channel_shape(x)
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    gain = inv_std if gamma is None else gamma * inv_std
    gx = gy * gain.reshape(shape)
    return gx.astype(x.dtype), (gy * x_hat).sum(axis=axes).astype(x.dtype), gy.sum(axis=axes).astype(x.dtype)


def relu_forward(x, out=None):
    """y = max(x, 0), element by element (NaN stays NaN, as in np.maximum).

    With `out` (x's shape and dtype) y is written there and out is returned; out may be x itself,
    since each y_i needs only x_i: that is ReLU in place.
    """
    xp = get_array_module(x)
    return xp.maximum(x, x.dtype.type(0), out=out)


def concatenate(xs, axis):
    """The arrays xs joined along `axis`, all other axes equal: y[..., start_k:start_k + size_k, ...]
    = xs[k], start_k the sum of the earlier sizes along the axis (dtypes promoted as NumPy's)."""
    return get_array_module(*xs).concatenate(xs, axis=axis)


def add_in_place(y, x):
    """y += x, with x broadcast to y's shape (torch's `out += identity`, a residual add in
    inference); returns y. NumPy reads an x that overlaps y before writing y."""
    xp = get_array_module(y)
    return xp.add(y, x, out=y)


def relu_backward(gy, y):
    """gx = gy where y > 0, else 0.

    dy/dx is 1 where x > 0 and 0 where x < 0 (0 at x = 0 too, as PyTorch), and y > 0 exactly where
    x > 0, so the output y is all the backward needs.
    """
    xp = get_array_module(gy)
    return xp.where(y > 0, gy, gy.dtype.type(0))


def sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    """One step of SGD (torch.optim.SGD's rule) on one parameter, in place; returns (param, buffer).

        g = -grad if maximize else grad
        g = g + weight_decay * param                        (when weight_decay != 0)
        buffer = g at the first step,                       (when momentum != 0)
                 else momentum * buffer + (1 - dampening) * g
        g = g + momentum * buffer if nesterov else buffer   (when momentum != 0)
        param = param - lr * g

    buffer is the momentum buffer (param's shape), None without momentum. The scalars are rounded
    to param's dtype, and each operation is rounded in it, in this order: torch's values."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if first_step:
            buffer[...] = g  # the first buffer is the gradient itself, not (1 - dampening) times it, as torch's
        else:
            buffer *= momentum
            if dampening == 0:
                buffer += g  # the usual case: no scaled copy of the gradient
            else:
                buffer += (1 - dampening) * g
        g = g + momentum * buffer if nesterov else buffer
    param -= lr * g
    return param, buffer
