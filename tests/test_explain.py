"""tinycnn.explain and `tinycnn explain`: every public op of tinycnn.functional is explained, its
live check agrees, the code locations are the real `def` lines, the saved-bytes figure matches a
count made here from each op's code, and the command line's options and errors behave."""
import functools
import inspect
import io
import os
import re

import numpy as np
import pytest

import tinycnn
import tinycnn.functional as F
from tinycnn import cli, config, kernels
from tinycnn.explain import UnknownOpError, find
from tinycnn.functional.activation import ReLU
from tinycnn.kernels import reference

# Enumerated from the module, not from tinycnn.explain: a new public op without an explanation and
# an example fails here.
PUBLIC_OPS = sorted(name for name, value in vars(F).items() if inspect.isfunction(value) and not name.startswith("_"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tinycnn.__file__)))
F64 = 8  # bytes per float64 or int64 element


def size(*shape):
    return int(np.prod(shape))


def pooled(size_, kernel, stride, padding):
    return (size_ + 2 * padding - kernel) // stride + 1


# Bytes each op's Function keeps after forward on its example, counted from what its forward
# stores (see the forward methods in tinycnn/functional/*.py), as a function of the main shape.
EXPECTED_SAVED_BYTES = {
    "adaptive_avg_pool2d": lambda s: F64 * (3 * s[2] + 2 * s[3]),  # A_H (3, H), A_W (2, W)
    "add": lambda s: 0,
    "avg_pool2d": lambda s: 0,
    "batch_norm": lambda s: F64 * (size(*s) + 3 * s[1]),  # x, gamma, mean, inv_std
    "batch_norm_relu": lambda s: F64 * (2 * size(*s) + 3 * s[1]),  # x, gamma, y, mean, inv_std
    "cat": lambda s: 0,
    "concat": lambda s: 0,
    "conv2d": lambda s: F64 * (size(*s) + 4 * s[1] * 3 * 3),  # x, W (4, C, 3, 3)
    "cross_entropy": lambda s: F64 * (2 * size(*s) + 1),  # log_p, c (M, K) and the divisor
    "dropout": lambda s: F64 * size(*s),  # mask
    "flatten": lambda s: 0,
    "global_avg_pool2d": lambda s: 0,
    "leaky_relu": lambda s: F64 * size(*s),  # x
    "linear": lambda s: F64 * (size(*s) + 3 * s[-1]),  # x, W (3, in)
    "local_response_norm": lambda s: F64 * 3 * size(*s),  # x, y, scale
    "log_softmax": lambda s: F64 * size(*s),  # y
    "max_pool2d": lambda s: F64 * s[0] * s[1] * pooled(s[2], 3, 2, 1) * pooled(s[3], 3, 2, 1),  # argmax
    "mse_loss": lambda s: F64 * size(*s),  # x - t
    "nll_loss": lambda s: F64 * (2 * s[0] * size(*s[2:]) + 1),  # labels, w_t (M,) and the divisor
    "pad": lambda s: 0,
    "relu": lambda s: F64 * size(*s),  # y
    "sigmoid": lambda s: F64 * size(*s),  # y
    "softmax": lambda s: F64 * size(*s),  # y
    "tanh": lambda s: F64 * size(*s),  # y
}


@functools.lru_cache(maxsize=None)
def explained(name, shape=None, seed=0):
    return tinycnn.explain(name, shape=shape, seed=seed, file=io.StringIO())


def max_error(text):
    match = re.search(r"max error \|analytic - numeric\| = (\S+) over", text)
    assert match, text
    return float(match.group(1))


def saved_bytes(text):
    match = re.search(r"^  total ([\d,]+) bytes", text, re.MULTILINE)
    assert match, text
    return int(match.group(1).replace(",", ""))


def code_locations(text):
    """{label: (path, line)} from the 'where the code is' section."""
    section = text.split("where the code is\n")[1].split("\n\n")[0]
    locations = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\s+(.+?)\s+(\S+\.py):(\d+)", line)
        assert match, line
        locations[match.group(1)] = (match.group(2), int(match.group(3)))
    return locations


def source_line(path, number):
    with open(os.path.join(ROOT, path)) as f:
        return f.read().splitlines()[number - 1].strip()


def test_the_public_ops_are_the_24_known_and_each_has_an_expected_count():
    assert len(PUBLIC_OPS) >= 24 and {"conv2d", "cat", "concat", "max_pool2d", "cross_entropy"} <= set(PUBLIC_OPS)
    assert sorted(EXPECTED_SAVED_BYTES) == PUBLIC_OPS


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_explain_every_op(name):
    text = explained(name)
    function, cls, example = find(name)
    # The declared text is printed, from the Function's own fields.
    for part in (cls.explanation.forward, cls.explanation.backward, cls.explanation.saved):
        assert "\n".join("  " + line if line else line for line in part.splitlines()) in text
    assert max_error(text) < 1e-6
    assert "they agree within gradcheck's tolerance" in text
    assert saved_bytes(text) == EXPECTED_SAVED_BYTES[name](example.shape)


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_code_locations_are_the_def_lines(name):
    function, cls, _ = find(name)
    locations = code_locations(explained(name))
    assert source_line(*locations[f"tinycnn.functional.{name}"]).startswith(f"def {name}(")
    assert source_line(*locations[f"{cls.__name__}.forward"]).startswith("def forward(")
    assert source_line(*locations[f"{cls.__name__}.backward"]).startswith("def backward(")
    kernel_rows = {label.split()[-1]: where for label, where in locations.items()
                   if label.startswith("reference kernel")}
    assert sorted(kernel_rows) == sorted(cls.explanation.kernels)
    for kernel, (path, line) in kernel_rows.items():
        assert path == os.path.join("kernels", "reference.py")
        assert source_line(path, line).startswith(f"def {kernel}(")


@pytest.mark.parametrize("name", [n for n in PUBLIC_OPS if find(n)[1].explanation.kernels])
def test_declared_kernels_cover_every_primitive_the_op_calls(name, monkeypatch):
    called = set()

    def recording(kernel):
        original = getattr(reference, kernel)

        def record(*args, **kwargs):
            called.add(kernel)
            return original(*args, **kwargs)
        return record

    for kernel in kernels.PRIMITIVES:
        monkeypatch.setattr(reference, kernel, recording(kernel))
    with config.using(kernels="numpy"):  # the dispatcher looks the reference function up at each call
        text = tinycnn.explain(name, file=io.StringIO())
    assert max_error(text) < 1e-6
    assert called and called <= set(find(name)[1].explanation.kernels)


def test_shape_and_seed():
    text = explained("conv2d", shape=(1, 2, 5, 5))
    assert "conv2d(input (1, 2, 5, 5), weight (4, 2, 3, 3), bias (4,), stride=2, padding=1)" in text
    assert saved_bytes(text) == F64 * (50 + 72)
    assert max_error(text) < 1e-6
    same = tinycnn.explain("conv2d", shape=[1, 2, 5, 5], file=io.StringIO())
    assert same == text
    other_seed = explained("conv2d", shape=(1, 2, 5, 5), seed=1)
    assert other_seed != text and max_error(other_seed) < 1e-6
    text = explained("max_pool2d", shape=(1, 2, 9, 7), seed=3)
    assert saved_bytes(text) == EXPECTED_SAVED_BYTES["max_pool2d"]((1, 2, 9, 7)) == F64 * 2 * 5 * 4


def test_explain_prints_and_returns_the_same_text(capsys):
    text = tinycnn.explain("relu")
    assert capsys.readouterr().out == text + "\n"


def test_explain_builds_its_graph_inside_no_grad():
    with tinycnn.no_grad():
        text = tinycnn.explain("sigmoid", file=io.StringIO())
    assert text == explained("sigmoid") and max_error(text) < 1e-6


def test_explain_leaves_tinycnn_random_stream_alone():
    tinycnn.manual_seed(5)
    before = tinycnn.get_rng_state()
    tinycnn.explain("dropout", file=io.StringIO())
    after = tinycnn.get_rng_state()
    assert repr(before) == repr(after)


def test_cli_matches_the_api(capsys):
    assert cli.main(["explain", "max_pool2d", "--shape", "1,2,9,7", "--seed", "3"]) == 0
    assert capsys.readouterr().out == explained("max_pool2d", shape=(1, 2, 9, 7), seed=3) + "\n"


def test_unknown_op_lists_the_closest_names(capsys):
    assert cli.main(["explain", "conv2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinycnn: error: ")
    assert "'conv2'" in err and "conv2d" in err
    with pytest.raises(UnknownOpError, match="max_pool2d"):
        tinycnn.explain("maxpool2d")


def test_bad_shapes_are_one_line_errors(capsys):
    assert cli.main(["explain", "conv2d", "--shape", "2,3"]) == 1  # the example is 4-D
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4-D" in err and "2,3" in err
    assert cli.main(["explain", "conv2d", "--shape", "2,3,1,1", "--seed", "0"]) == 0  # padding 1 fits
    capsys.readouterr()
    assert cli.main(["explain", "batch_norm", "--shape", "1,3,1,1"]) == 1  # the op's own check
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinycnn: error: explain batch_norm --shape 1,3,1,1: batch_norm:")
    assert cli.main(["explain", "relu", "--shape", "2,x"]) == 2  # malformed
    assert cli.main(["explain", "relu", "--shape", "200,30,40,40"]) == 1  # too many elements to perturb
    assert "smaller --shape" in capsys.readouterr().err


def test_a_wrong_backward_shows_in_the_live_check(monkeypatch):
    # The bug a learner would make: the mask taken from the wrong side of 0.
    monkeypatch.setattr(ReLU, "backward", lambda self, gy: gy * (self.saved_arrays[0] <= 0))
    text = tinycnn.explain("relu", file=io.StringIO())
    assert max_error(text) > 0.1
    assert "THEY DISAGREE" in text
