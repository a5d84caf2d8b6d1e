"""The kernel dispatch of tinycnn.kernels: one written-out function per primitive with the backends'
signature, routed to the backend that implementation() names, and config values checked.

The CuPy backend's signatures are read from kernels/gpu.py's source, so they are checked on a
machine without CuPy too.
"""
import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinycnn
import tinycnn.kernels as kernels
from tinycnn import config
from tinycnn.kernels import cpu, reference

# Keyword arguments of the reference that are hooks for the other backends, not the contract.
BACKEND_HOOKS = {"im2col", "col2im"}


def _contract(function):
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values() if p.name not in BACKEND_HOOKS]


def _gpu_signatures():
    """{name: [(parameter, default)]} of the top-level functions in kernels/gpu.py, from its source."""
    tree = ast.parse(Path(kernels.__file__).with_name("gpu.py").read_text())
    signatures = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names = [a.arg for a in node.args.args]
            defaults = [ast.literal_eval(d) for d in node.args.defaults]
            padded = [inspect.Parameter.empty] * (len(names) - len(defaults)) + defaults
            signatures[node.name] = list(zip(names, padded))
    return signatures


@pytest.mark.parametrize("name", kernels.PRIMITIVES)
def test_every_primitive_is_a_written_out_function_with_the_backends_signature(name):
    dispatcher = getattr(kernels, name)
    assert inspect.isfunction(dispatcher) and dispatcher.__module__ == "tinycnn.kernels"
    assert dispatcher.__name__ == name
    assert f"def {name}(" in inspect.getsource(dispatcher)  # "go to definition" finds it
    doc = " ".join(dispatcher.__doc__.split())  # says which backend runs and how to choose another
    assert "Numba (tinycnn.kernels.cpu)" in doc and 'set_kernels("numpy")' in doc
    assert f"tinycnn.kernels.reference.{name}," in doc
    assert _contract(dispatcher) == _contract(getattr(reference, name)) == _contract(getattr(cpu, name))
    assert _gpu_signatures()[name] == _contract(dispatcher)


def _call_through_a_spy(monkeypatch, name, array):
    """Call tinycnn.kernels.<name> with `array` first and stand-ins after it, with the function of
    the module implementation() names replaced by a spy; return what the spy received."""
    module = kernels.implementation(name, array)
    received = []
    monkeypatch.setattr(module, name, lambda *args: received.append(args) or "spy's result")
    rest = [object() for _ in inspect.signature(getattr(kernels, name)).parameters][1:]
    assert getattr(kernels, name)(array, *rest) == "spy's result"
    return module, received, rest


@pytest.mark.parametrize("choice, expected", [("auto", cpu), ("numba", cpu), ("numpy", reference)])
@pytest.mark.parametrize("name", kernels.PRIMITIVES)
def test_implementation_names_the_module_whose_function_runs(monkeypatch, name, choice, expected):
    array = np.zeros((1, 1, 1, 1))
    with config.using(kernels=choice):
        module, received, rest = _call_through_a_spy(monkeypatch, name, array)
    assert module is expected
    assert len(received) == 1
    assert received[0][0] is array and list(received[0][1:]) == rest  # every argument, in order


def test_implementation_rejects_a_name_that_is_no_primitive():
    with pytest.raises(ValueError, match="expected one of the primitives .* got 'conv2d'"):
        kernels.implementation("conv2d", np.zeros(1))


def test_numba_refuses_a_gpu_array(monkeypatch):
    # No CuPy here: the dispatch module's is_gpu_array is made to see a GPU array.
    monkeypatch.setattr(kernels, "is_gpu_array", lambda array: True)
    with config.using(kernels="numba"), pytest.raises(TypeError, match="conv2d_forward: kernels='numba' runs on "
                                                                       "NumPy arrays, got a CuPy array"):
        kernels.conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)), None, 1, 1, 0, 0, 1, 1, 1)


def test_numba_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "_numba_kernels", None)
    # `from tinycnn.kernels import cpu` then raises ImportError, as it would without Numba.
    monkeypatch.delattr(kernels, "cpu", raising=False)
    monkeypatch.setitem(sys.modules, "tinycnn.kernels.cpu", None)
    x = np.zeros((1, 1, 2, 2))
    for choice in ("numba", "auto"):
        with config.using(kernels=choice), pytest.raises(ImportError, match="lrn_forward: the Numba kernels could not "
                                                                            "be imported .*set_kernels\\('numpy'\\)"):
            kernels.lrn_forward(x, 3, 1e-4, 0.75, 1.0)
    with config.using(kernels="numpy"):  # the reference needs no Numba
        assert kernels.lrn_forward(x, 3, 1e-4, 0.75, 1.0)[0].shape == x.shape


@pytest.mark.parametrize("value", ["cuda", "Numba ", 1, None])
def test_a_bad_kernels_choice_is_refused(value):
    with pytest.raises(ValueError, match="tinycnn.config.kernels: expected one of"):
        config.set_kernels(value)
    with pytest.raises(ValueError, match="tinycnn.config.kernels: expected one of"):
        with config.using(kernels=value):
            pass
    assert config.kernels in ("auto", "numba", "numpy")


def test_a_choice_assigned_directly_is_checked_at_the_call(monkeypatch):
    monkeypatch.setattr(config, "kernels", "gpu")
    with pytest.raises(ValueError, match="tinycnn.kernels.matmul: tinycnn.config.kernels must be 'auto', 'numba' "
                                         "or 'numpy', got 'gpu'"):
        kernels.matmul(np.ones((2, 2)), np.ones((2, 2)))


def test_switches_take_booleans_only():
    with pytest.raises(TypeError, match="tinycnn.config.check_nan: expected True or False, got 'yes'"):
        with config.using(check_nan="yes"):
            pass
    with pytest.raises(AttributeError, match="no setting 'check_nans'"):
        with config.using(check_nans=True):
            pass


def _import_with_kernels(value):
    env = {name: v for name, v in os.environ.items() if not name.startswith("TINYCNN_")}
    env["TINYCNN_KERNELS"] = value
    return subprocess.run([sys.executable, "-c", "import tinycnn; print(tinycnn.config.kernels)"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_environment_variable_is_checked_and_named_in_the_error():
    result = _import_with_kernels("cupy")
    assert result.returncode != 0
    assert "TINYCNN_KERNELS must be one of ('auto', 'numpy', 'numba'), got 'cupy'" in result.stderr
    result = _import_with_kernels(" NumPy ")
    assert result.returncode == 0 and result.stdout.strip() == "numpy"


def test_kernels_numba_runs_the_numba_kernel_itself():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    with config.using(kernels="numba"):
        assert kernels.implementation("max_pool2d_forward", x) is cpu
        y, argmax = tinycnn.kernels.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
    expected, expected_argmax = reference.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)
