"""Process-wide settings for speed, made at run time and never by `import tinycnn`.

**OpenBLAS on one thread, whatever the import order.** tinycnn's CPU kernels run on their own small
pool of Python threads (tinycnn.kernels.parallel), and in each chunk of work a thread calls
OpenBLAS for its matrix product: the parallelism is tinycnn's, so OpenBLAS must not start threads
of its own. OpenBLAS threads on top would put two threads on each core, and a two-thread OpenBLAS
product waits for its second thread at every step: while another process held the other core,
products measured 10-60x slower than on one thread (benchmarks/RESULTS.md).

tinycnn used to ask for this with OPENBLAS_NUM_THREADS=1 written into the environment on import.
OpenBLAS reads that variable once, when NumPy loads it, so a script that imported NumPy first (as
nearly every script does) kept OpenBLAS's own threads, and its LeNet training steps ran 1.4-1.6x
slower. Now `limit_blas_threads()` sets the thread count of the BLAS libraries already loaded
through threadpoolctl (which calls openblas_set_num_threads, or MKL's or BLIS's own), so it holds
whatever was imported first. tinycnn.kernels.parallel calls it once, when the Numba kernels are
first imported, that is at the first kernel call (kernels.cpu and kernels.parallel are loaded on
first use, not by `import tinycnn`); it loads NumPy first, so NumPy's BLAS is among those limited.

Why one global limit, set once, rather than `with threadpool_limits(1):` around each kernel call:
threadpoolctl's context manager scans every loaded shared library each time it is entered, which
costs about as much as a whole small kernel, and LeNet at batch 1 makes dozens of kernel calls per
step; even a kept ThreadpoolController would set and restore the count on every call; and the
count is process-wide in OpenBLAS, so kernel threads setting and restoring it at once would race.

What that means for the rest of the process: after the first kernel call, NumPy's own products
(in your code too) run on one thread. To give them more threads, call
`threadpoolctl.threadpool_limits(n)` after that first call, knowing that tinycnn's kernels then
put OpenBLAS threads on top of their own. BLAS libraries loaded later (say, PyTorch's, imported
after the first kernel call) are not touched. OPENBLAS_NUM_THREADS set in the environment is the
user's choice and wins: no limit is set then. TINYCNN_NO_THREAD_SETTINGS=1 turns the limit off.

**glibc's allocator, on request.** glibc's malloc hands each block of more than a few MiB (im2col's
columns, a layer's output) back to the operating system when it is freed, and the next one comes as
fresh pages that the kernel must zero on first touch. `tune_allocator()` (also
`tinycnn.config.tune_allocator()`) raises glibc's M_MMAP_THRESHOLD to 1 GiB and M_TRIM_THRESHOLD
to 2 GiB (mallopt), so freed blocks are reused: the LeNet training step ran 13-18% faster (im2col
of a 58 MB column 16 -> 11 ms), at the price that the process keeps its peak memory until it exits.
As that changes the whole process, a library import must not do it: the CLI's `tinycnn train`
calls it, and so do the benchmarks; a script of yours may. Skipped off glibc, where the user has set
MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, and with TINYCNN_NO_THREAD_SETTINGS=1.

PyTorch in the same process (the tests and benchmarks): its GNU OpenMP threads spin for a while
after each parallel region (unless OMP_WAIT_POLICY=PASSIVE is in the environment before torch
loads). tinycnn leaves that alone, and so do the benchmarks: torch is measured as its users run it.

`report()` says what is in force and who set it.
"""
import ctypes
import os
import platform
import sys

# Which libraries were loaded before tinycnn (the settings hold either way; reported for the record).
loaded_before = tuple(name for name in ("numpy", "numba", "torch") if name in sys.modules)

# TINYCNN_NO_THREAD_SETTINGS=1 leaves every library at its own defaults (for comparisons).
enabled = os.environ.get("TINYCNN_NO_THREAD_SETTINGS", "") in ("", "0")

# What limit_blas_threads did: None until it has run, then 'tinycnn', 'user' or 'unset'.
blas_limit = None


def limit_blas_threads():
    """Once per process: every loaded BLAS library (NumPy's OpenBLAS included) to one thread.
    Returns who decided the thread count: 'tinycnn', 'user' (OPENBLAS_NUM_THREADS is set) or
    'unset' (TINYCNN_NO_THREAD_SETTINGS=1). Later calls return the first call's answer at once."""
    global blas_limit
    if blas_limit is not None:
        return blas_limit
    if "OPENBLAS_NUM_THREADS" in os.environ:
        blas_limit = "user"
    elif not enabled:
        blas_limit = "unset"
    else:
        import numpy  # noqa: F401 - loads NumPy's BLAS, so that threadpoolctl finds it
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1, user_api="blas")  # as a call, not a `with`: it stays
        blas_limit = "tinycnn"
    return blas_limit


# mallopt's parameter numbers in glibc's malloc.h, and the values tune_allocator sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1}

# What tune_allocator did: None until it has run.
malloc_thresholds = None


def tune_allocator():
    """Raise glibc's mmap and trim thresholds (see the module docstring). Returns 'tinycnn' if glibc
    took them, else why not: 'user', 'unset' or 'not glibc'. Calling it again changes nothing."""
    global malloc_thresholds
    if malloc_thresholds is None:
        malloc_thresholds = _set_malloc_thresholds()
    return malloc_thresholds


def _set_malloc_thresholds():
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


def report():
    """A dict of what is in force: the thread count of each loaded BLAS library (from threadpoolctl),
    who set it ('tinycnn', 'user', 'unset', or None before the first kernel call), who set glibc's
    malloc thresholds (None if tune_allocator was not called), and the libraries loaded before
    tinycnn."""
    from threadpoolctl import threadpool_info
    libraries = [dict(library=info["internal_api"], threads=info["num_threads"], path=info["filepath"])
                 for info in threadpool_info() if info["user_api"] == "blas"]
    return dict(blas_threads=libraries, blas_limit=blas_limit, malloc_thresholds=malloc_thresholds,
                loaded_before_tinycnn=loaded_before)
