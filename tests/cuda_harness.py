"""Run kernels/gpu.py on a machine without a GPU: its CUDA kernel bodies compiled as C++.

kernels/gpu.py keeps every kernel as data (gpu.ElementwiseSource, gpu.ReductionSource) and asks
its module global `cupy` for ElementwiseKernel and ReductionKernel only when a kernel first runs.
`numpy_as_cupy` is NumPy under CuPy's name, with those two classes replaced by ones that

  - wrap the kernel body in a C++ function that loops CuPy's element index `i` over the output
    (a reduction: the map over each output's items, then the post-map), with every `raw` argument
    an array indexed by hand, every other argument the value at `i` of its broadcast array, and
    `T` a template parameter instantiated for float and double (any CUDA-only name a body uses
    must be mapped in CUDA_PRELUDE);
  - compile it once with the system C++ compiler (g++ or $CXX) into a shared library kept in a
    temporary directory under the hash of its source, so a session compiles each kernel once and
    a later session not at all;
  - call it through ctypes on NumPy arrays, with CuPy's rules for its arguments: `T` bound by the
    arrays (all must agree), outputs allocated when not given, `size=` for all-raw kernels;
  - check what a GPU would not: an index outside a raw array is an IndexError naming the kernel,
    array and index (CUDA would read or write memory the array does not own), and an element of
    a raw output touched by two values of `i` a RuntimeError (two GPU threads would race on it,
    and the kernels use no atomics).

`gpu_module_on_cpu()` puts that stand-in into kernels/gpu.py for the duration of a `with` block, so
its Python code (shapes, layouts, arguments) and its CUDA code run together and can be compared
with the reference. The maths run in IEEE float or double on the host, not bit for bit as on a GPU
(nvcc fuses multiply-adds; -ffp-contract=off here does not), so comparisons use tolerances where
the GPU's would; index maths, bounds and loop orders are exactly the CUDA code's.
"""
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import types
from typing import NamedTuple

import numpy as np

# What CUDA device code gets from its own headers and the host gets from the C++ library; every
# name a kernel body uses beyond plain C++ must be mapped here (a missing one is a compile error).
CUDA_PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <type_traits>
using std::isnan;  // CUDA: isnan(float), isnan(double)
using std::max;    // CUDA: max(long long, long long) and the float overloads
using std::min;
using std::pow;    // CUDA: pow(float, float) stays in float, as std::pow's float overload
using std::sqrt;
// INFINITY is <cmath>'s macro in both.

// A raw parameter, indexed by hand as CuPy's raw arrays are (flat, C order), but checked: the
// first index outside the array is recorded for the caller to report, and the access goes to a
// dummy element instead of memory the array does not own. A raw output also records which
// element index i (which GPU thread) first touched each element: another i touching it later
// would race with it on a GPU, where the threads run at once and the kernels use no atomics.
static long long _thread = 0;  // the i being run
static int _bad_param = -1;
static long long _bad_index = 0;
static int _race_param = -1;
static long long _race_index = 0, _race_first = 0, _race_second = 0;
template <typename E>
struct RawArray {
    E* data;
    long long size;
    int param;
    long long* owner;  // raw outputs only: per element, the first i that touched it, or -1
    E& operator[](long long k) const {
        if (0 <= k && k < size) {
            if (owner != nullptr) {
                if (owner[k] < 0) {
                    owner[k] = _thread;
                } else if (owner[k] != _thread && _race_param < 0) {
                    _race_param = param;
                    _race_index = k;
                    _race_first = owner[k];
                    _race_second = _thread;
                }
            }
            return data[k];
        }
        if (_bad_param < 0) {
            _bad_param = param;
            _bad_index = k;
        }
        static typename std::remove_const<E>::type dummy;
        dummy = 0;
        return dummy;
    }
};
extern "C" int out_of_bounds(long long* index) {
    const int param = _bad_param;
    *index = _bad_index;
    _bad_param = -1;
    return param;
}
extern "C" int race(long long* index, long long* first, long long* second) {
    const int param = _race_param;
    *index = _race_index;
    *first = _race_first;
    *second = _race_second;
    _race_param = -1;
    return param;
}
"""


# CuPy's type names in a parameter list, as C++ and NumPy types. T stays the template parameter.
CXX_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool"}
NUMPY_TYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64, "bool": np.bool_}
T_INSTANCES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Names CuPy's generated code declares itself (ElementwiseKernel refuses a parameter named i).
RESERVED_NAMES = {"i", "_ind"}

COMPILER = os.environ.get("CXX", "g++")
COMPILE_FLAGS = ["-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC"]
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"tinycnn-cuda-harness-{os.getuid()}")


def compiler_available():
    return shutil.which(COMPILER) is not None


class Param(NamedTuple):
    raw: bool
    type: str  # "T" or a CuPy type name
    name: str


def parse_params(text):
    """'raw T x, int64 N' -> [Param(True, 'T', 'x'), Param(False, 'int64', 'N')]."""
    params = []
    for item in text.split(","):
        words = item.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"cuda_harness: expected '[raw] TYPE NAME' in a parameter list, got {item!r}")
        type_name, name = words
        if type_name != "T" and type_name not in CXX_TYPES:
            raise ValueError(f"cuda_harness: unknown parameter type {type_name!r} in {text!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"cuda_harness: parameter name {name!r} is reserved by CuPy (in {text!r})")
        params.append(Param(raw, type_name, name))
    return params


def _cxx_type(param):
    return "T" if param.type == "T" else CXX_TYPES[param.type]


def _declarations(params, first_index, position, outputs):
    """C++ lines binding each parameter to argument slot first_index + k, as two lists: the raw
    ones as checked arrays (made once; _steps[k] holds the length, _args[_nparams + k] a raw
    output's owner array), and for the others the value (input) or a reference (output) at
    `position` (made per element; _steps[k] is 1, or 0 for a scalar)."""
    pointers, per_element = [], []
    for k, p in enumerate(params, start=first_index):
        ctype = _cxx_type(p)
        if p.raw:
            const = "" if outputs else "const "  # a kernel writing to an input does not compile
            owner = f"(long long*)_args[_nparams + {k}]" if outputs else "nullptr"
            pointers.append(f"const RawArray<{const}{ctype}> {p.name}{{({const}{ctype}*)_args[{k}], _steps[{k}], {k}, "
                            f"{owner}}};")
        elif outputs:
            per_element.append(f"{ctype}& {p.name} = (({ctype}*)_args[{k}])[({position}) * _steps[{k}]];")
        else:
            per_element.append(f"const {ctype} {p.name} = ((const {ctype}*)_args[{k}])[({position}) * _steps[{k}]];")
    return pointers, per_element


def elementwise_cxx(in_params, out_params, operation, name):
    """The C++ source running an ElementwiseKernel body for i in [0, size)."""
    inputs, outputs = parse_params(in_params), parse_params(out_params)
    input_pointers, input_values = _declarations(inputs, 0, "i", False)
    output_pointers, output_values = _declarations(outputs, len(inputs), "i", True)
    pointers, per_element = input_pointers + output_pointers, input_values + output_values
    indent = "\n        "
    return f"""{CUDA_PRELUDE}
// {name}: in ({in_params}), out ({out_params})
template <typename T>
static void run(long long _size, void** _args, const long long* _steps) {{
    const int _nparams = {len(inputs) + len(outputs)};  // _args: the parameters, then as many owner arrays
    {indent[5:].join(pointers)}
    for (long long i = 0; i < _size; ++i) {{
        _thread = i;
        {indent.join(per_element)}
        {{
{operation};
        }}
    }}
}}
extern "C" void run_float(long long size, void** args, const long long* steps) {{ run<float>(size, args, steps); }}
extern "C" void run_double(long long size, void** args, const long long* steps) {{ run<double>(size, args, steps); }}
"""


def reduction_cxx(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name):
    """The C++ source of a ReductionKernel: output o reduces items [o * count, (o + 1) * count) of
    its inputs (laid out so), in order, from `identity`; the type of `a` and `b` is the output's."""
    inputs, outputs = parse_params(in_params), parse_params(out_params)
    if any(p.raw for p in inputs + outputs):
        raise ValueError(f"cuda_harness: raw parameters in reduction {name} are not supported")
    reduce_type = _cxx_type(outputs[0])
    item_lines = _declarations(inputs, 0, "_item", False)[1]
    output_lines = _declarations(outputs, len(inputs), "_out", True)[1]
    indent = "\n            "
    return f"""{CUDA_PRELUDE}
// {name}: in ({in_params}), out ({out_params})
template <typename T>
static void run(long long _out_size, long long _count, void** _args, const long long* _steps) {{
    typedef {reduce_type} _type_reduce;
    for (long long _out = 0; _out < _out_size; ++_out) {{
        _type_reduce a = ({identity});
        for (long long _k = 0; _k < _count; ++_k) {{
            const long long _item = _out * _count + _k;
            {indent.join(item_lines)}
            const _type_reduce b = ({map_expr});
            a = ({reduce_expr});
        }}
        {indent[4:].join(output_lines)}
        {post_map_expr};
    }}
}}
extern "C" void run_float(long long o, long long c, void** args, const long long* steps) {{
    run<float>(o, c, args, steps);
}}
extern "C" void run_double(long long o, long long c, void** args, const long long* steps) {{
    run<double>(o, c, args, steps);
}}
"""


_libraries = {}  # source hash -> loaded library, for this process


def compile_library(cxx_source):
    """Compile C++ source into a shared library (once: kept in CACHE_DIR under its hash) and load it."""
    key = hashlib.sha256((cxx_source + COMPILER + " ".join(COMPILE_FLAGS)).encode()).hexdigest()[:24]
    if key in _libraries:
        return _libraries[key]
    os.makedirs(CACHE_DIR, exist_ok=True)
    library_path = os.path.join(CACHE_DIR, key + ".so")
    if not os.path.exists(library_path):
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
            source_path = os.path.join(work, "kernel.cpp")
            with open(source_path, "w") as file:
                file.write(cxx_source)
            built = os.path.join(work, "kernel.so")
            result = subprocess.run([COMPILER, *COMPILE_FLAGS, "-o", built, source_path],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"cuda_harness: {COMPILER} failed on this source:\n{cxx_source}\n{result.stderr}")
            os.replace(built, library_path)  # atomic: parallel sessions never load half a file
    library = ctypes.CDLL(library_path)
    _libraries[key] = library
    return library


def _is_array(value):
    return isinstance(value, np.ndarray) and value.ndim > 0


def _bind_t(params, values, name):
    """The dtype that T stands for: the one of every array passed for a T parameter."""
    dtypes = {np.dtype(v.dtype) for p, v in zip(params, values) if p.type == "T" and isinstance(v, np.ndarray)}
    if len(dtypes) != 1:
        raise TypeError(f"{name}: expected the arrays for T parameters to share one dtype, "
                        f"got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    if dtype not in T_INSTANCES:
        raise TypeError(f"{name}: T must be float32 or float64, got {dtype}")
    return dtype


def _dtype_of(param, t_dtype):
    return t_dtype if param.type == "T" else np.dtype(NUMPY_TYPES[param.type])


def _check_dtype(param, value, dtype, name):
    if isinstance(value, np.ndarray) and value.dtype != dtype:
        raise TypeError(f"{name}: parameter {param.name} expects {dtype}, got an array of {value.dtype}")


def _call(function, leading, buffers, steps, owners=()):
    """function(*leading, args, steps): args the buffers' addresses, then the owner arrays' (null
    where there is none)."""
    addresses = [b.ctypes.data for b in buffers] + [None if o is None else o.ctypes.data for o in owners]
    pointers = (ctypes.c_void_p * len(addresses))(*addresses)
    step_array = (ctypes.c_longlong * len(steps))(*steps)
    function(*[ctypes.c_longlong(v) for v in leading], pointers, step_array)


class ElementwiseKernel:
    """cupy.ElementwiseKernel on NumPy arrays, its body compiled as C++."""

    def __init__(self, in_params, out_params, operation, name="kernel", **options):
        self.name = name
        self.inputs, self.outputs = parse_params(in_params), parse_params(out_params)
        self.library = compile_library(elementwise_cxx(in_params, out_params, operation, name))

    def __call__(self, *args, size=None):
        params = self.inputs + self.outputs
        if len(args) not in (len(self.inputs), len(params)):
            raise TypeError(f"{self.name}: expected {len(self.inputs)} or {len(params)} arguments, got {len(args)}")
        values = list(args) + [None] * (len(params) - len(args))
        t_dtype = _bind_t(params, values, self.name)
        broadcast = [v for p, v in zip(params, values) if not p.raw and _is_array(v)]
        if size is not None:
            if broadcast:
                raise ValueError(f"{self.name}: size= is only for kernels whose array arguments are all raw")
            shape = (size,)
        elif broadcast:
            shape = np.broadcast_shapes(*[v.shape for v in broadcast])
        else:
            raise ValueError(f"{self.name}: no non-raw array fixes the size; pass size=")
        buffers, steps, write_back = [], [], []
        owners = [None] * len(params)  # per raw output: which i first touched each element
        for k, (p, value) in enumerate(zip(params, values)):
            dtype = _dtype_of(p, t_dtype)
            if value is None:  # an output not given: allocated as CuPy does
                if p.raw:
                    raise ValueError(f"{self.name}: raw output {p.name} must be given")
                value = values[k] = np.empty(shape, dtype=dtype)
            _check_dtype(p, value, dtype, self.name)
            is_output = k >= len(self.inputs)
            if p.raw:
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{self.name}: raw parameter {p.name} needs an array")
                if is_output and not value.flags.c_contiguous:
                    raise ValueError(f"{self.name}: raw output {p.name} must be C-contiguous")
                buffer = value if is_output else np.ascontiguousarray(value)
                step = buffer.size  # a raw parameter's "step" is its length, for the bounds check
                if is_output:
                    owners[k] = np.full(buffer.size, -1, dtype=np.int64)
            elif _is_array(value):
                if is_output and value.shape != tuple(shape):
                    raise ValueError(f"{self.name}: output {p.name} has shape {value.shape}, expected {shape}")
                buffer, step = np.ascontiguousarray(np.broadcast_to(value, shape)), 1
                if is_output and buffer is not value:
                    write_back.append((value, buffer))
            else:  # a scalar: the same value for every i
                buffer, step = np.array([value], dtype=dtype), 0
            buffers.append(buffer)
            steps.append(step)
        count = int(np.prod(shape))
        if count:
            _call(getattr(self.library, "run_" + T_INSTANCES[t_dtype]), [count], buffers, steps, owners)
            index, first, second = ctypes.c_longlong(), ctypes.c_longlong(), ctypes.c_longlong()
            bad = self.library.out_of_bounds(ctypes.byref(index))
            if bad >= 0:
                raise IndexError(f"{self.name}: the kernel indexed {params[bad].name}[{index.value}], outside its "
                                 f"{buffers[bad].size} elements")
            raced = self.library.race(ctypes.byref(index), ctypes.byref(first), ctypes.byref(second))
            if raced >= 0:
                raise RuntimeError(f"{self.name}: threads i={first.value} and i={second.value} both touch "
                                   f"{params[raced].name}[{index.value}]: a race on a GPU (no atomics)")
        for value, buffer in write_back:
            value[...] = buffer
        results = values[len(self.inputs):]
        return results[0] if len(results) == 1 else tuple(results)


class ReductionKernel:
    """cupy.ReductionKernel on NumPy arrays (inputs broadcast together, `axis` reduced, keepdims
    False), its expressions compiled as C++. Items are combined in order, not as a tree."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce_kernel",
                 **options):
        self.name = name
        self.inputs, self.outputs = parse_params(in_params), parse_params(out_params)
        if len(self.outputs) != 1:
            raise ValueError(f"cuda_harness: {name}: one output supported")
        self.library = compile_library(reduction_cxx(in_params, out_params, map_expr, reduce_expr, post_map_expr,
                                                     identity, name))

    def __call__(self, *args, axis=None):
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.name}: expected {len(self.inputs)} arguments, got {len(args)}")
        t_dtype = _bind_t(self.inputs, args, self.name)
        shape = np.broadcast_shapes(*[a.shape for a in args if _is_array(a)])
        axes = tuple(range(len(shape))) if axis is None else tuple(a % len(shape) for a in np.atleast_1d(axis))
        kept = [a for a in range(len(shape)) if a not in axes]
        out_shape = tuple(shape[a] for a in kept)
        count = int(np.prod([shape[a] for a in axes]))
        buffers, steps = [], []
        for p, value in zip(self.inputs, args):
            dtype = _dtype_of(p, t_dtype)
            _check_dtype(p, value, dtype, self.name)
            if _is_array(value):  # the reduced axes last, so output o reads items [o*count, (o+1)*count)
                full = np.broadcast_to(value, shape).transpose(kept + list(axes))
                buffers.append(np.ascontiguousarray(full, dtype=dtype))
                steps.append(1)
            else:
                buffers.append(np.array([value], dtype=dtype))
                steps.append(0)
        out = np.empty(out_shape, dtype=_dtype_of(self.outputs[0], t_dtype))
        buffers.append(out)
        steps.append(1)
        if out.size:
            _call(getattr(self.library, "run_" + T_INSTANCES[t_dtype]), [out.size, count], buffers, steps)
        return out


class _NumpyAsCupy(types.ModuleType):
    """NumPy under CuPy's name, with ElementwiseKernel and ReductionKernel run as host C++."""
    ElementwiseKernel = ElementwiseKernel
    ReductionKernel = ReductionKernel

    def __getattr__(self, name):
        return getattr(np, name)


numpy_as_cupy = _NumpyAsCupy("numpy_as_cupy")


def kernel_sources(gpu):
    """Every kernel source that kernels/gpu.py defines, by name."""
    return {value.name: value for value in vars(gpu).values()
            if isinstance(value, (gpu.ElementwiseSource, gpu.ReductionSource))}


def build(source):
    """The stand-in kernel for one of gpu.py's sources (compiled now)."""
    from tinycnn.kernels import gpu
    if isinstance(source, gpu.ReductionSource):
        return ReductionKernel(*source)
    return ElementwiseKernel(*source)


@contextlib.contextmanager
def gpu_module_on_cpu():
    """kernels/gpu.py with `numpy_as_cupy` as its cupy, for the `with` block: yields the module."""
    from tinycnn.kernels import gpu
    saved = gpu.cupy, gpu._compiled
    gpu.cupy, gpu._compiled = numpy_as_cupy, {}
    try:
        yield gpu
    finally:
        gpu.cupy, gpu._compiled = saved
