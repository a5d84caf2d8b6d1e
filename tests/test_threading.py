"""The process-wide settings of tinycnn._threading, checked in fresh processes: what a user gets
depends on the import order and the environment, which only a new interpreter shows.

- OpenBLAS is at one thread after the first kernel call, whether NumPy or tinycnn was imported
  first (threadpoolctl reads the count back from the library itself);
- `import tinycnn` alone changes nothing: no environment variable, no thread count, no mallopt;
- the user's OPENBLAS_NUM_THREADS and TINYCNN_NO_THREAD_SETTINGS=1 are respected;
- glibc's malloc thresholds change only on tinycnn.config.tune_allocator().
"""
import json
import os
import platform
import subprocess
import sys

import pytest

# The child prints NumPy's BLAS thread count and the environment right after the imports, then again
# after kernels big enough to run in chunks on tinycnn's threads.
CHILD = """
import json, os, threading
from threadpoolctl import threadpool_info
environ_before = sorted(os.environ)
{imports}
def numpy_blas_threads():
    return [info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas" and "numpy" in info["filepath"]]
after_import = dict(blas=numpy_blas_threads(), environ_added=sorted(set(os.environ) - set(environ_before)))
tinycnn.kernels.im2col(numpy.ones((8, 16, 32, 32)), 3, 3, 1, 1, 1, 1, 1, 1)
tinycnn.kernels.matmul(numpy.ones((256, 256)), numpy.ones((256, 256)))
print(json.dumps(dict(after_import=after_import, after_kernels=numpy_blas_threads(),
                      threads=sorted(t.name for t in threading.enumerate()),
                      kernel_threads=tinycnn.kernels.parallel.get_num_threads(),
                      report=tinycnn._threading.report())))
"""
NUMPY_FIRST = "import numpy\nimport tinycnn"
TINYCNN_FIRST = "import tinycnn\nimport numpy"


def _clean_environment(**environ):
    """This process's environment without the settings under test, plus `environ`."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("OPENBLAS_", "OMP_", "NUMBA_NUM", "TINYCNN_", "MALLOC_"))}
    env.update(environ)
    return env


def _run(source, **environ):
    result = subprocess.run([sys.executable, "-c", source], env=_clean_environment(**environ),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_child(imports, **environ):
    return _run(CHILD.format(imports=imports), **environ)


def _default_blas_threads(**environ):
    """OpenBLAS's own thread count in a process where tinycnn is not loaded."""
    return _run("import json, numpy\nfrom threadpoolctl import threadpool_info\n"
                "print(json.dumps([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']))",
                **environ)[0]


@pytest.mark.parametrize("imports", [NUMPY_FIRST, TINYCNN_FIRST], ids=["numpy first", "tinycnn first"])
def test_openblas_runs_on_one_thread_after_the_first_kernel_call_whatever_the_import_order(imports):
    child = _run_child(imports)
    assert child["after_kernels"] == [1]
    assert child["report"]["blas_limit"] == "tinycnn"
    assert [library["threads"] for library in child["report"]["blas_threads"] if "numpy" in library["path"]] == [1]
    # tinycnn's own kernel threads, one per core beyond the calling one.
    cores = len(os.sched_getaffinity(0))
    assert child["kernel_threads"] == cores
    assert any(name.startswith("tinycnn-kernel") for name in child["threads"]) == (cores > 1)


def test_import_tinycnn_alone_changes_no_thread_count_and_no_environment():
    child = _run_child(NUMPY_FIRST)
    default = _default_blas_threads()
    assert child["after_import"]["blas"] == [default]
    assert child["after_import"]["environ_added"] == []
    assert child["report"]["loaded_before_tinycnn"] == ["numpy"]


def test_the_users_openblas_thread_count_wins():
    # OpenBLAS caps the count at the cores, so ask for two: more than tinycnn's one where it can be.
    child = _run_child(NUMPY_FIRST, OPENBLAS_NUM_THREADS="2")
    users = _default_blas_threads(OPENBLAS_NUM_THREADS="2")
    assert users == min(2, os.cpu_count())
    assert child["after_kernels"] == [users]
    assert child["report"]["blas_limit"] == "user"


def test_thread_settings_can_be_turned_off():
    child = _run_child(TINYCNN_FIRST, TINYCNN_NO_THREAD_SETTINGS="1")
    assert child["after_kernels"] == [_default_blas_threads()]
    assert child["report"]["blas_limit"] == "unset"


def test_kernel_thread_count_follows_the_environment():
    assert _run_child(TINYCNN_FIRST, TINYCNN_NUM_THREADS="1")["kernel_threads"] == 1
    child = _run_child(TINYCNN_FIRST, TINYCNN_NUM_THREADS="3")
    assert child["kernel_threads"] == 3
    assert sum(name.startswith("tinycnn-kernel") for name in child["threads"]) >= 1


# The child allocates a 64 MiB array and asks glibc (mallinfo2) where it came from: the heap, which
# keeps freed blocks for reuse, or a memory map of its own, which goes back to the system on free.
MALLINFO_CHILD = """
import ctypes, json
import tinycnn, numpy
{tune}
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Mallinfo2
tinycnn.kernels.im2col(numpy.ones((8, 16, 32, 32)), 3, 3, 1, 1, 1, 1, 1, 1)  # a kernel call: still no mallopt
block = numpy.ones(64 * 2**20 // 8)
info = mallinfo2()
print(json.dumps(dict(heap=info.arena, mapped=info.hblkhd, report=tinycnn._threading.report()["malloc_thresholds"])))
"""


def _glibc_version():
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else (0, 0)


@pytest.mark.skipif(_glibc_version() < (2, 33), reason="mallopt and mallinfo2 are glibc's (2.33+)")
@pytest.mark.parametrize("tune, environ, source, on_heap", [
    (False, {}, None, False),  # import tinycnn alone: glibc's defaults
    (True, {}, "tinycnn", True),
    (True, {"TINYCNN_NO_THREAD_SETTINGS": "1"}, "unset", False),
    (True, {"MALLOC_MMAP_THRESHOLD_": str(2**20)}, "user", False),
])
def test_large_blocks_come_from_the_reusable_heap_only_after_tune_allocator(tune, environ, source, on_heap):
    child = _run(MALLINFO_CHILD.format(tune="tinycnn.config.tune_allocator()" if tune else ""), **environ)
    assert child["report"] == source
    block = 64 * 2**20
    if on_heap:
        assert child["heap"] >= block and child["mapped"] < block, child
    else:
        assert child["mapped"] >= block, child


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_kernel_thread_count_is_named_in_the_error(value):
    result = subprocess.run([sys.executable, "-c", "import tinycnn.kernels.parallel"],
                            env=_clean_environment(TINYCNN_NUM_THREADS=value), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert f"TINYCNN_NUM_THREADS must be a positive integer, got {value!r}" in result.stderr
