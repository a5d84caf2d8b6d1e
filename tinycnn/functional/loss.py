"""Losses: cross-entropy (fused with log-softmax), negative log-likelihood and mean squared error.

Classification losses take scores (N, K) with integer labels (N,), or per-pixel scores
(N, K, d1, ...) with labels (N, d1, ...). Class weights, when given, are constants (no gradient),
as in PyTorch.
"""
from tinycnn import backend
from tinycnn.autograd import Function
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating

__all__ = ["cross_entropy", "mse_loss", "nll_loss"]

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _rows_and_labels(op, x, t, weight):
    """Validate the labels and lay the scores out as one row per labelled item.

    Returns x as (M, K) and t as (M,), M = N * d1 * ..., with the class axis moved last.
    """
    if x.ndim < 2:
        raise ValueError(f"{op}: expected input of shape (N, K) or (N, K, d1, ...), got {tuple(x.shape)}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: expected integer class labels, got dtype {t.dtype}")
    expected = x.shape[:1] + x.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(f"{op}: input of shape {tuple(x.shape)} needs labels of shape {expected}, "
                         f"got {tuple(t.shape)}")
    K = x.shape[1]
    if weight is not None and tuple(weight.shape) != (K,):
        raise ValueError(f"{op}: expected a class weight of shape ({K},), got {tuple(weight.shape)}")
    bad = (t < 0) | (t >= K)
    if bool(bad.any()):
        value = int(t[bad].reshape(-1)[0])
        raise ValueError(f"{op}: label {value} is out of range for {K} classes (expected 0 <= label < {K})")
    if x.ndim == 2:
        return x, t  # (N, K): one row per item already (moveaxis would cost microseconds a step)
    xp = backend.get_array_module(x)
    rows = xp.moveaxis(x, 1, -1).reshape(-1, K)  # (N, K, d1, ...) -> (N, d1, ..., K) -> (M, K)
    return rows, t.reshape(-1)


def _rows_to_input_layout(g_rows, shape):
    """Gradient rows (M, K) back in the layout of the input of shape (N, K, d1, ...): the
    inverse of _rows_and_labels."""
    if len(shape) == 2:
        return g_rows  # (N, K) already
    N, K, spatial = shape[0], shape[1], shape[2:]
    # (M, K) -> (N, d1, ..., K) -> (N, K, d1, ...)
    return backend.get_array_module(g_rows).moveaxis(g_rows.reshape((N,) + spatial + (K,)), -1, 1)


def _reduce(loss, divisor, reduction, shape):
    """Reduce per-item losses (M,): 'mean' divides the sum by `divisor`."""
    if reduction == "none":
        return loss.reshape(shape)
    total = loss.sum()
    # asarray: NumPy's sum of a whole array is a scalar, and a Tensor holds a 0-d array.
    return backend.get_array_module(loss).asarray(total / divisor if reduction == "mean" else total)


def _unreduce(gy, divisor, reduction, M):
    """The gradient of each per-item loss, the adjoint of _reduce."""
    xp = backend.get_array_module(gy)
    if reduction == "none":
        return gy.reshape(M)
    g = gy / divisor if reduction == "mean" else gy
    return xp.broadcast_to(g, (M,))


class CrossEntropy(Function):
    """Softmax cross-entropy with optional class weights w and label smoothing eps.

    With p = softmax(scores) over K classes, each item's loss is l = -sum_k c_k log p_k, where the
    target weights are c_k = (1 - eps) w_t [k == t] + (eps / K) w_k (w = 1 without weights).
    'mean' divides sum(l) by sum of w_t over the items, exactly as PyTorch does.
    """

    explanation = Explanation(
        forward="""
per item (a row z of K scores, label t): log p = log_softmax(z) = z - log sum_k exp(z_k)
l = -sum_k c_k log p_k, target weights c_k = (1 - eps) w_t [k == t] + (eps / K) w_k
    (w: class weights, 1 without; eps: label smoothing)
loss = sum(l) / D with D = sum of w_t over the items ('mean'), sum(l) ('sum'), or l per item ('none')""",
        backward="""
1. d log p_k / dz_j = [k == j] - p_j (the derivative of log_softmax, p = softmax(z)).
2. dl/dz_j = -sum_k c_k ([k == j] - p_j) = p_j sum_k c_k - c_j.
3. Without weights or smoothing c is one-hot at t and sum_k c_k = 1: dl/dz = p - onehot(t).
4. The reduction scales each item's gradient by gy / D ('mean'), gy ('sum') or its own gy ('none').
5. So gz = (gy / D) (p sum_k c_k - c) for 'mean'; the labels and the class weights get no gradient.""",
        saved="log p and c, (M, K) each for M labelled items (new memory; p = exp(log p) in step 5),\n"
              "and D, the divisor of 'mean'.")
    examples = {"cross_entropy": Example(
        shape=(4, 5), inputs=lambda shape, rng: [rng.integers(0, shape[1], shape[:1] + shape[2:])],
        options={"label_smoothing": 0.1})}

    def __init__(self, reduction, label_smoothing):
        self.reduction, self.label_smoothing = reduction, label_smoothing

    def forward(self, x, t, weight):
        check_floating("cross_entropy", input=x, weight=weight)
        rows, labels = _rows_and_labels("cross_entropy", x, t, weight)
        xp = backend.get_array_module(x)
        M, K = rows.shape
        w = xp.ones(K, dtype=x.dtype) if weight is None else weight.astype(x.dtype)
        shifted = rows - rows.max(axis=1, keepdims=True)  # max-subtracted: exp() cannot overflow
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (M, K)
        eps = self.label_smoothing
        c = xp.broadcast_to(w * (eps / K), (M, K)).copy()  # (M, K): the smoothed, weighted target
        c[xp.arange(M), labels] += (1 - eps) * w[labels]
        loss = -(c * log_p).sum(axis=1)  # (M,)
        self.divisor = w[labels].sum()
        self.save_for_backward(log_p, c)
        self.shape = x.shape
        return _reduce(loss, self.divisor, self.reduction, t.shape).astype(x.dtype)

    def backward(self, gy):
        # l = -sum_k c_k log p_k and d log p_k / dz_j = [k == j] - p_j, so dl/dz_j = p_j sum_k c_k - c_j.
        log_p, c = self.saved_arrays
        xp = backend.get_array_module(gy)
        M, K = c.shape
        gl = _unreduce(gy, self.divisor, self.reduction, M)[:, None]  # (M, 1)
        g_rows = gl * (xp.exp(log_p) * c.sum(axis=1, keepdims=True) - c)  # (M, K)
        return _rows_to_input_layout(g_rows, self.shape).astype(log_p.dtype), None, None


def cross_entropy(input, target, weight=None, reduction="mean", label_smoothing=0.0):
    """Cross-entropy between the softmax of `input` (N, K[, d1, ...]) and integer labels, as
    torch.nn.functional.cross_entropy (class indices; ignore_index is not supported)."""
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
    return CrossEntropy(reduction, label_smoothing)(input, target, weight)


class NLLLoss(Function):
    """Negative log-likelihood of log-probabilities: l = -w_t input[t] per item; 'mean' divides
    the sum by the sum of w_t, as PyTorch."""

    explanation = Explanation(
        forward="""
per item (a row x of K log-probabilities, label t): l = -w_t x_t   (w: class weights, 1 without)
loss = sum(l) / D with D = sum of w_t over the items ('mean'), sum(l) ('sum'), or l per item ('none')""",
        backward="""
1. l depends on one element of its row only: dl/dx_k = -w_t where k == t, 0 for every other class.
2. The reduction scales it by gy / D ('mean'), gy ('sum') or the item's own gy ('none').
3. So gx[m, t_m] = -w_t gy / D for 'mean' and 0 elsewhere; the labels get no gradient.""",
        saved="the labels (a view of the target, no copy), w_t per item, and D: where step 3 writes, and what.")
    examples = {"nll_loss": Example(
        shape=(4, 5), inputs=lambda shape, rng: [rng.integers(0, shape[1], shape[:1] + shape[2:])])}

    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, t, weight):
        check_floating("nll_loss", input=x, weight=weight)
        rows, labels = _rows_and_labels("nll_loss", x, t, weight)
        xp = backend.get_array_module(x)
        M, K = rows.shape
        w = xp.ones(K, dtype=x.dtype) if weight is None else weight.astype(x.dtype)
        self.labels, self.w_t = labels, w[labels]  # (M,) each
        self.divisor = self.w_t.sum()
        self.shape, self.dtype = x.shape, x.dtype
        loss = -self.w_t * rows[xp.arange(M), labels]
        return _reduce(loss, self.divisor, self.reduction, t.shape).astype(x.dtype)

    def backward(self, gy):
        # dl/dinput[k] = -w_t where k == t, 0 for every other class.
        xp = backend.get_array_module(gy)
        M, K = self.labels.shape[0], self.shape[1]
        g_rows = xp.zeros((M, K), dtype=self.dtype)
        g_rows[xp.arange(M), self.labels] = -self.w_t * _unreduce(gy, self.divisor, self.reduction, M)
        return _rows_to_input_layout(g_rows, self.shape), None, None


def nll_loss(input, target, weight=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities `input` (e.g. from log_softmax), as
    torch.nn.functional.nll_loss (ignore_index is not supported)."""
    _check_reduction("nll_loss", reduction)
    return NLLLoss(reduction)(input, target, weight)


class MSELoss(Function):
    explanation = Explanation(
        forward="loss = mean over all n elements of (x - t)^2 ('mean'; 'sum' adds them, 'none' keeps each)",
        backward="""
1. d (x_i - t_i)^2 / dx_i = 2 (x_i - t_i), and d/dt_i = -2 (x_i - t_i).
2. 'mean' divides by n: gx = gy * 2 (x - t) / n.
3. The target gets the opposite gradient, gt = -gx (it is a Tensor like any other).""",
        saved="d = x - t, new memory of x's shape: both gradients are multiples of it.")
    examples = {"mse_loss": Example(shape=(2, 3, 4), inputs=lambda shape, rng: [shape])}

    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, t):
        check_floating("mse_loss", input=x, target=t)
        if tuple(x.shape) != tuple(t.shape):
            raise ValueError(f"mse_loss: input and target must have the same shape, got {tuple(x.shape)} "
                             f"and {tuple(t.shape)}")
        self.diff = x - t
        loss = self.diff * self.diff
        if self.reduction == "none":
            return loss
        xp = backend.get_array_module(loss)
        return xp.asarray(loss.mean() if self.reduction == "mean" else loss.sum(), dtype=loss.dtype)

    def backward(self, gy):
        # l = (x - t)^2 per element: dl/dx = 2 (x - t) = -dl/dt; 'mean' divides by the count.
        # max(..., 1): an empty input's mean has an empty gradient (and no division by zero).
        scale = 2.0 / max(self.diff.size, 1) if self.reduction == "mean" else 2.0
        gx = (gy * self.diff * scale).astype(self.diff.dtype)
        return (gx if self.needs_input_grad[0] else None), (-gx if self.needs_input_grad[1] else None)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error, as torch.nn.functional.mse_loss (shapes must match: no broadcasting)."""
    _check_reduction("mse_loss", reduction)
    return MSELoss(reduction)(input, target)
