"""The thread-pool settings of tinycnn._threading, checked in fresh processes: they are applied on
`import tinycnn`, so only a new interpreter shows what a user gets. Each child runs kernels big
enough to be split across tinycnn's kernel threads, and reports which threads exist afterwards."""
import json
import os
import platform
import subprocess
import sys

import pytest

from tinycnn import _threading

# The child prints the settings in force after two kernels big enough to run in chunks.
CHILD = """
import json, os, sys, threading
{before}
import tinycnn
import numpy
tinycnn.kernels.im2col(numpy.ones((8, 16, 32, 32)), 3, 3, 1, 1, 1, 1, 1, 1)
with tinycnn.config.using(kernels="numba"):
    tinycnn.kernels.max_pool2d_forward(numpy.ones((8, 16, 32, 32)), 2, 2, 2, 2, 0, 0, 1, 1, False)
print(json.dumps(dict(environ={{name: os.environ.get(name) for name in tinycnn._threading.SETTINGS}},
                      threads=sorted(t.name for t in threading.enumerate()),
                      kernel_threads=tinycnn.kernels.parallel.get_num_threads(),
                      report=tinycnn._threading.report())))
"""


def _run_child(before="", **environ):
    env = {name: value for name, value in os.environ.items()
           if name not in _threading.SETTINGS and not name.startswith(("NUMBA_", "TINYCNN_", "MALLOC_"))}
    env.update(environ)
    result = subprocess.run([sys.executable, "-c", CHILD.format(before=before)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_tinycnn_sets_every_thread_setting():
    child = _run_child()
    assert child["environ"] == _threading.SETTINGS
    # The kernels' own threads, one per core beyond the calling one, and nobody else's.
    cores = len(os.sched_getaffinity(0))
    assert child["kernel_threads"] == cores
    assert any(name.startswith("tinycnn-kernel") for name in child["threads"]) == (cores > 1)
    assert all(child["report"][name][1] == "tinycnn" for name in _threading.SETTINGS)
    assert child["report"]["loaded_before_tinycnn"] == []
    if platform.libc_ver()[0] == "glibc":
        assert child["report"]["malloc_thresholds"] == "tinycnn"


# The child allocates a 64 MiB array and asks glibc (mallinfo2) where it came from: the heap, which
# keeps freed blocks for reuse, or a memory map of its own, which goes back to the system on free.
MALLINFO_CHILD = """
import ctypes, json
import tinycnn, numpy
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Mallinfo2
block = numpy.ones(64 * 2**20 // 8)
info = mallinfo2()
print(json.dumps(dict(heap=info.arena, mapped=info.hblkhd, report=tinycnn._threading.report()["malloc_thresholds"])))
"""


def _glibc_version():
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else (0, 0)


@pytest.mark.skipif(_glibc_version() < (2, 33),
                    reason="mallopt and mallinfo2 are glibc's (2.33+)")
@pytest.mark.parametrize("environ, source, on_heap", [
    ({}, "tinycnn", True),
    ({"TINYCNN_NO_THREAD_SETTINGS": "1"}, "unset", False),
    ({"MALLOC_MMAP_THRESHOLD_": str(2**20)}, "user", False),
])
def test_large_blocks_come_from_the_reusable_heap(environ, source, on_heap):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TINYCNN_", "MALLOC_"))}
    env.update(environ)
    result = subprocess.run([sys.executable, "-c", MALLINFO_CHILD], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["report"] == source
    block = 64 * 2**20
    if on_heap:
        assert child["heap"] >= block and child["mapped"] < block, child
    else:
        assert child["mapped"] >= block, child


def test_libraries_loaded_before_tinycnn_are_reported():
    child = _run_child(before="import numpy, numba")
    assert set(child["report"]["loaded_before_tinycnn"]) == {"numpy", "numba"}


def test_kernel_thread_count_follows_the_environment():
    assert _run_child(TINYCNN_NUM_THREADS="1")["kernel_threads"] == 1
    child = _run_child(TINYCNN_NUM_THREADS="3")
    assert child["kernel_threads"] == 3
    assert sum(name.startswith("tinycnn-kernel") for name in child["threads"]) >= 1


def test_user_settings_win():
    users = dict(OPENBLAS_THREAD_TIMEOUT="4", OMP_WAIT_POLICY="ACTIVE", OPENBLAS_NUM_THREADS="2")
    assert set(users) == set(_threading.SETTINGS)
    child = _run_child(**users)
    assert child["environ"] == users
    assert all(child["report"][name][1] == "user" for name in _threading.SETTINGS)


def test_settings_can_be_turned_off():
    child = _run_child(TINYCNN_NO_THREAD_SETTINGS="1")
    assert child["environ"] == {name: None for name in _threading.SETTINGS}
    assert all(child["report"][name] == [None, "unset"] for name in _threading.SETTINGS)


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_kernel_thread_count_is_named_in_the_error(value):
    env = {name: v for name, v in os.environ.items() if not name.startswith("TINYCNN_")}
    env["TINYCNN_NUM_THREADS"] = value
    result = subprocess.run([sys.executable, "-c", "import tinycnn.kernels.parallel"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"TINYCNN_NUM_THREADS must be a positive integer, got {value!r}" in result.stderr
