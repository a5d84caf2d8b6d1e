"""Element-wise activations and the (log-)softmax over one axis.

relu and leaky_relu take torch's `inplace`: relu's result overwrites the input's array unless a
recorded backward still needs that memory (then it is a new array); leaky_relu's only when no graph
is recorded (see _inplace.py).
"""
from tinycnn import backend, kernels
from tinycnn.autograd import Function
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating
from tinycnn.functional._inplace import check_writeable, writes_in_place

__all__ = ["leaky_relu", "log_softmax", "relu", "sigmoid", "softmax", "tanh"]


class ReLU(Function):
    explanation = Explanation(
        forward="y = max(x, 0), element by element",
        backward="""
1. Each y_i depends on x_i alone, so dL/dx_i = dL/dy_i * dy_i/dx_i = gy_i * dy_i/dx_i.
2. dy_i/dx_i = 1 where x_i > 0 (y = x there) and 0 where x_i < 0 (y = 0 there).
3. At x_i = 0 the derivative does not exist; take 0, as PyTorch does.
4. y_i > 0 exactly where x_i > 0, so gx = gy * [y > 0] needs only the output.""",
        saved="y, the output: its sign is the mask [x > 0] of step 4.",
        kernels=("relu_forward", "relu_backward"))
    examples = {"relu": Example(shape=(2, 3, 4, 4))}

    def __init__(self, inplace=False):
        self.inplace = inplace  # write y into x's array; relu() asks for it only where no backward needs x

    def forward(self, x):
        check_floating("relu", input=x)
        if self.inplace:
            check_writeable("relu", x)
        y = kernels.relu_forward(x, out=x if self.inplace else None)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # y = max(x, 0): dy/dx = 1 where x > 0, else 0 (also at x = 0, as PyTorch). y > 0 exactly
        # where x > 0, so the output is all that needs keeping.
        (y,) = self.saved_arrays
        return kernels.relu_backward(gy, y)


def relu(input, inplace=False):
    """max(x, 0), as torch.nn.functional.relu.

    inplace=True: the result is written into input's array and the Tensor returned shares it, in
    training too, unless a recorded backward keeps that memory (BatchNorm's output, which no
    backward keeps, is overwritten; a conv's saved input is not) or input is a leaf that requires a
    gradient while a graph is recorded: then it is a new array and input is left as it was (see
    functional/_inplace.py).
    """
    return ReLU(writes_in_place(inplace, input))(input)


class LeakyReLU(Function):
    explanation = Explanation(
        forward="y = x where x > 0, negative_slope * x elsewhere, element by element",
        backward="""
1. Each y_i depends on x_i alone: gx_i = gy_i * dy_i/dx_i.
2. dy_i/dx_i = 1 where x_i > 0 and negative_slope where x_i < 0 (at 0, the slope).
3. So gx = gy where x > 0, negative_slope * gy elsewhere.""",
        saved="x, the input: with a negative slope (which may be negative) the output's sign does not\n"
              "always say which side of 0 x was on, so the input itself is kept.")
    examples = {"leaky_relu": Example(shape=(2, 3, 4, 4), options={"negative_slope": 0.1})}

    def __init__(self, negative_slope, inplace=False):
        self.negative_slope = negative_slope
        self.inplace = inplace  # overwrite x; leaky_relu() asks for it only when no graph is recorded

    def forward(self, x):
        check_floating("leaky_relu", input=x)
        xp = backend.get_array_module(x)
        slope = x.dtype.type(self.negative_slope)
        if self.inplace:
            check_writeable("leaky_relu", x)
            # Where not x > 0 (NaN included, as in xp.where below): the same products, in x's array.
            x[~(x > 0)] *= slope
            return x
        self.save_for_backward(x)
        return xp.where(x > 0, x, x * slope)

    def backward(self, gy):
        # y = x for x > 0, slope * x otherwise: dy/dx is 1 or the slope.
        (x,) = self.saved_arrays
        xp = backend.get_array_module(x)
        return xp.where(x > 0, gy, gy * gy.dtype.type(self.negative_slope))


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """x where x > 0, negative_slope * x elsewhere, as torch.nn.functional.leaky_relu; `inplace`
    honoured only when no graph is recorded and no recorded backward keeps the input's memory."""
    return LeakyReLU(negative_slope, writes_in_place(inplace, input, while_recording=False))(input)


class Sigmoid(Function):
    explanation = Explanation(
        forward="y = sigma(x) = 1 / (1 + exp(-x)), computed as (1 + tanh(x / 2)) / 2, element by element",
        backward="""
1. Each y_i depends on x_i alone: gx_i = gy_i * dy_i/dx_i.
2. d/dx (1 + e^-x)^-1 = e^-x / (1 + e^-x)^2 = [1 / (1 + e^-x)] * [e^-x / (1 + e^-x)].
3. The first factor is y; the second is 1 - 1 / (1 + e^-x) = 1 - y.
4. So gx = gy * y * (1 - y): the output is all backward needs.""",
        saved="y, the output (step 4).")
    examples = {"sigmoid": Example(shape=(2, 3, 4, 4))}

    def forward(self, x):
        check_floating("sigmoid", input=x)
        xp = backend.get_array_module(x)
        # sigma(x) = 1 / (1 + e^-x) = (1 + tanh(x/2)) / 2; the tanh form never overflows.
        y = (xp.tanh(x * x.dtype.type(0.5)) + 1) * x.dtype.type(0.5)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # d sigma/dx = sigma (1 - sigma), from the output alone.
        (y,) = self.saved_arrays
        return gy * y * (1 - y)


def sigmoid(input):
    return Sigmoid()(input)


class Tanh(Function):
    explanation = Explanation(
        forward="y = tanh(x) = (e^x - e^-x) / (e^x + e^-x), element by element",
        backward="""
1. Each y_i depends on x_i alone: gx_i = gy_i * dy_i/dx_i.
2. tanh = sinh / cosh, so by the quotient rule d tanh/dx = (cosh^2 - sinh^2) / cosh^2 = 1 - tanh^2.
3. So gx = gy * (1 - y^2): the output is all backward needs.""",
        saved="y, the output (step 3).")
    examples = {"tanh": Example(shape=(2, 3, 4, 4))}

    def forward(self, x):
        check_floating("tanh", input=x)
        y = backend.get_array_module(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # d tanh/dx = 1 - tanh^2.
        (y,) = self.saved_arrays
        return gy * (1 - y * y)


def tanh(input):
    return Tanh()(input)


def _check_dim(op, x, dim):
    if not -max(x.ndim, 1) <= dim < max(x.ndim, 1):
        raise ValueError(f"{op}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")


class Softmax(Function):
    explanation = Explanation(
        forward="y_i = exp(x_i) / sum_j exp(x_j) along `dim` (x - max x is used: the same ratios, no overflow)",
        backward="""
1. Every y_i depends on every x_j of its slice along dim: gx_j = sum_i gy_i dy_i/dx_j.
2. Write y_i = e_i / S with S = sum_k e_k, e_k = exp(x_k). de_i/dx_j = [i == j] e_i and dS/dx_j = e_j.
3. Quotient rule: dy_i/dx_j = ([i == j] e_i S - e_i e_j) / S^2 = y_i ([i == j] - y_j).
4. So gx_j = sum_i gy_i y_i ([i == j] - y_j) = y_j gy_j - y_j sum_i gy_i y_i
           = y_j (gy_j - sum_i gy_i y_i), with the sum along dim.""",
        saved="y, the output (step 4 uses only y and gy).")
    examples = {"softmax": Example(shape=(2, 5, 3), options={"dim": 1})}

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        check_floating("softmax", input=x)
        _check_dim("softmax", x, self.dim)
        xp = backend.get_array_module(x)
        # Subtracting the maximum leaves the ratios unchanged and keeps exp() from overflowing.
        e = xp.exp(x - x.max(axis=self.dim, keepdims=True))
        y = e / e.sum(axis=self.dim, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # dy_i/dx_j = y_i (delta_ij - y_j), so gx_j = y_j (gy_j - sum_i gy_i y_i).
        (y,) = self.saved_arrays
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


def softmax(input, dim):
    """exp(x) / sum(exp(x)) along `dim` (required: there is no implicit choice as in old PyTorch)."""
    return Softmax(dim)(input)


class LogSoftmax(Function):
    explanation = Explanation(
        forward="y_i = x_i - log sum_j exp(x_j) along `dim` (computed with x - max x, so every exp is at most 1)",
        backward="""
1. Every y_i depends on every x_j of its slice along dim: gx_j = sum_i gy_i dy_i/dx_j.
2. d/dx_j log sum_k exp(x_k) = exp(x_j) / sum_k exp(x_k) = softmax_j.
3. So dy_i/dx_j = [i == j] - softmax_j.
4. gx_j = gy_j - softmax_j sum_i gy_i, with softmax_j = exp(y_j).""",
        saved="y, the output: softmax = exp(y) is recomputed from it in step 4.")
    examples = {"log_softmax": Example(shape=(2, 5, 3), options={"dim": 1})}

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        check_floating("log_softmax", input=x)
        _check_dim("log_softmax", x, self.dim)
        xp = backend.get_array_module(x)
        # log softmax(x) = x - m - log sum exp(x - m) with m = max x: every exp is at most 1.
        shifted = x - x.max(axis=self.dim, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=self.dim, keepdims=True))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # dy_i/dx_j = delta_ij - softmax_j, so gx_j = gy_j - softmax_j sum_i gy_i.
        (y,) = self.saved_arrays
        xp = backend.get_array_module(y)
        return gy - xp.exp(y) * gy.sum(axis=self.dim, keepdims=True)


def log_softmax(input, dim):
    """log(softmax(x)) along `dim`, computed stably (never the log of a rounded-to-zero softmax)."""
    return LogSoftmax(dim)(input)
