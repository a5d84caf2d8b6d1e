"""Thread-pool settings, applied on `import tinycnn` before NumPy or PyTorch load their pools.

tinycnn's CPU kernels run on their own small pool of Python threads (tinycnn.kernels.parallel),
and in each chunk of work a thread calls OpenBLAS for its matrix product: the parallelism is
tinycnn's, so OpenBLAS must not start threads of its own. Any library pool that keeps its threads
spinning after its work is done takes the cores away from the other threads: on this project's
2-core machine a LeNet-like step took 1.7x as long with the libraries' defaults on an idle machine,
and 3-40x as long while other processes shared the cores (benchmarks/RESULTS.md).

    OPENBLAS_NUM_THREADS=1       Each of NumPy's matrix products on the thread that calls it.
                                 tinycnn's kernels run one product per core at once; OpenBLAS's own
                                 threads on top would put two threads on each core. And a two-thread
                                 OpenBLAS product waits for its second thread at every step: while
                                 another process held the other core, products measured 10-60x
                                 slower than on one thread (a 64x800x500 product: 0.38 ms on one
                                 thread, 11-23 ms on two, whatever the timeout below).
    OMP_WAIT_POLICY=PASSIVE      GNU OpenMP threads (PyTorch's pool, when it is loaded in the same
                                 process, e.g. in the tests and benchmarks) sleep as soon as a
                                 parallel region ends instead of spinning for it.
    OPENBLAS_THREAD_TIMEOUT=20   Where the user sets more OpenBLAS threads: they go to sleep after
                                 2**20 cycles without work (the default, 2**28, is about 0.1 s of
                                 spinning after every call).

Each is set only where the user has not set it, so a value the user exported wins;
TINYCNN_NO_THREAD_SETTINGS=1 turns all of them off. The libraries read these variables once, when
their shared library is loaded, so the settings take effect only for libraries not loaded yet when
tinycnn is imported:

- `import tinycnn` first (or before `import numpy`): everything applies.
- NumPy imported before tinycnn: OpenBLAS has already read its thread count and timeout, so its
  products use every core on top of tinycnn's threads, and its threads spin for about 0.1 s after
  each call. The OpenMP policy still applies unless PyTorch (whose GNU OpenMP reads it on loading)
  came first. Export the variables in the shell to be sure.

One more process-wide setting, of memory rather than threads, is made here for the same reason
(the library default costs time on every step): glibc's malloc hands each block of more than a few
MiB (im2col's columns, a layer's output) back to the operating system when it is freed, and the
next one comes as fresh pages that the kernel must zero on first touch. tinycnn raises glibc's
M_MMAP_THRESHOLD to 1 GiB and M_TRIM_THRESHOLD to 2 GiB (mallopt), so freed blocks are reused:
the LeNet training step ran 13-18% faster (im2col of a 58 MB column 16 -> 11 ms), at the price
that the process keeps its peak memory until it exits. Skipped off glibc, where the user has set
MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, and with TINYCNN_NO_THREAD_SETTINGS=1.

`report()` says which values are in force and where they came from.
"""
import ctypes
import os
import platform
import sys

SETTINGS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "OPENBLAS_NUM_THREADS": "1",
    # For a user who asks for more OpenBLAS threads: 2**20 cycles (about 0.4 ms) of waiting for
    # the next product before sleeping, short enough that they are asleep when a Numba loop starts.
    "OPENBLAS_THREAD_TIMEOUT": "20",
}

# Which variables the user had set, and which libraries were loaded, before tinycnn could act.
user_settings = {name: os.environ[name] for name in SETTINGS if name in os.environ}
loaded_before = tuple(name for name in ("numpy", "numba", "torch") if name in sys.modules)

# TINYCNN_NO_THREAD_SETTINGS=1 leaves every library at its own defaults (for comparisons).
enabled = os.environ.get("TINYCNN_NO_THREAD_SETTINGS", "") in ("", "0")

if enabled:
    for _name, _value in SETTINGS.items():
        if _name not in user_settings:
            os.environ[_name] = _value


# mallopt's parameter numbers in glibc's malloc.h, and the values tinycnn sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1}


def _set_malloc_thresholds():
    """'tinycnn' if glibc took the thresholds, else why not: 'user', 'unset' or 'not glibc'."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return "user"
    if not enabled:
        return "unset"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return "not glibc"
    accepted = [mallopt(parameter, value) == 1 for parameter, value in MALLOC_SETTINGS.items()]
    return "tinycnn" if all(accepted) else "not glibc"


malloc_thresholds = _set_malloc_thresholds()


def report():
    """A dict of the settings in force: each variable's value and whether tinycnn or the user set
    it, who set glibc's malloc thresholds, and the libraries loaded before tinycnn."""
    info = {name: (os.environ.get(name), "user" if name in user_settings else "tinycnn" if enabled else "unset")
            for name in SETTINGS}
    info["malloc_thresholds"] = malloc_thresholds
    info["loaded_before_tinycnn"] = loaded_before
    return info
