"""Parallel loops for the Numba CPU kernels, on a small pool of Python threads.

The kernels in tinycnn.kernels.cpu are serial `@njit(nogil=True)` loops over a range of their
outermost index (samples, image planes, channels). `parallel_range` splits that index into chunks
and runs them on the calling thread and the pool's threads at once; Numba's nogil functions and
NumPy's matrix products release the GIL, so the chunks really run side by side.

Why not Numba's own `prange`: on this project's 2-core machine every parallel Numba call paid
130-160 microseconds to wake its thread pool (workqueue layer; 76 with passive OpenMP), about what
im2col of a small layer costs in total, and a ResNet step makes a hundred such calls. Here the
calling thread starts on the first chunk at once and takes chunks from a shared counter, so a pool
thread that is slow to wake costs nothing but the chunks it does not take, and a call whose work
is small runs serially with no hand-off at all. The chunks are fixed by the work's shape, never
by which thread runs them, so results are the same from run to run whatever the thread count.

TINYCNN_NUM_THREADS sets the number of threads (calling thread included); without it, the number
of cores this process may use. `set_num_threads` changes it at run time.

Each chunk's matrix products run on OpenBLAS with one thread, since the threads here already fill
the cores: this module, imported with the Numba kernels at the first kernel call, sets that limit
once for the process through threadpoolctl (tinycnn._threading explains why there and not per call).
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from tinycnn import _threading

_threading.limit_blas_threads()

# A call with fewer element operations than this runs on the calling thread alone: waking a pool
# thread measured 80-90 microseconds here, about what 10^5 element operations of a kernel take.
SERIAL_WORK = 1 << 17
# Chunks are made about this much work each (or one item, if an item is bigger), so that several
# chunks per thread even out threads that start late.
CHUNK_WORK = 1 << 18


def _default_thread_count():
    value = os.environ.get("TINYCNN_NUM_THREADS")
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"tinycnn.kernels: TINYCNN_NUM_THREADS must be a positive integer, got {value!r}")
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_thread_count = _default_thread_count()
_pool = None
_pool_lock = threading.Lock()
_inside = threading.local()  # set while a thread runs a chunk: a nested call runs serially


def get_num_threads():
    return _thread_count


def set_num_threads(count):
    """Use `count` threads (the calling thread included) for the CPU kernels from now on."""
    global _thread_count, _pool
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {count!r}")
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None
        _thread_count = count


def _get_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_thread_count - 1, thread_name_prefix="tinycnn-kernel")
        return _pool


def _forget_pool_after_fork():
    # A forked child has none of the parent's threads: it starts its own pool when it needs one.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def split(total, per_chunk):
    """range(total) as consecutive (start, stop) pieces of per_chunk items, the last one shorter."""
    return [(start, min(start + per_chunk, total)) for start in range(0, total, per_chunk)]


def parallel_pieces(run_piece, counts, work_per_item):
    """parallel_range over the items of several pieces laid end to end, piece k holding counts[k]
    items: run_piece(k, start, stop) for each piece a chunk overlaps, with the range [start, stop)
    counted within that piece (the inputs of a concatenation, each its own array of rows)."""
    firsts = list(itertools.accumulate(counts, initial=0))  # each piece's first item

    def run(start, stop):
        for k in range(len(counts)):
            first, last = max(start, firsts[k]), min(stop, firsts[k + 1])
            if first < last:
                run_piece(k, first - firsts[k], last - firsts[k])

    parallel_range(run, firsts[-1], work_per_item)


def chunk_bounds(total, work_per_item):
    """Split range(total) into chunks of about CHUNK_WORK element operations, at least one item
    each: a list of (start, stop). Depends on the work's size only, never on the thread count."""
    if total <= 0:
        return []
    per_chunk = max(1, min(total, CHUNK_WORK // max(1, work_per_item)))
    return split(total, per_chunk)


def run_chunks(run, chunks):
    """Call run(start, stop) for every chunk, on up to get_num_threads() threads; return when all
    have finished, raising the first exception any of them raised."""
    threads = min(_thread_count, len(chunks))
    if threads <= 1 or getattr(_inside, "active", False):
        for start, stop in chunks:
            run(start, stop)
        return
    next_chunk = itertools.count()  # next() on it is atomic under the GIL
    failed = []

    def take_chunks():
        _inside.active = True
        try:
            while not failed:
                k = next(next_chunk)
                if k >= len(chunks):
                    return
                run(*chunks[k])
        except BaseException as error:
            failed.append(error)
        finally:
            _inside.active = False

    pool = _get_pool()
    helpers = [pool.submit(take_chunks) for _ in range(threads - 1)]
    take_chunks()
    for helper in helpers:
        # A helper that has not started yet finds no chunk left: cancel it rather than wait for
        # its thread to wake. One that has started is finishing its last chunk.
        if not helper.cancel():
            helper.result()
    if failed:
        raise failed[0]


def parallel_range(run, total, work_per_item):
    """run(start, stop) over range(total) in chunks, in parallel when the work is big enough.
    work_per_item: about how many element operations one item costs (for example, the elements
    of one image plane)."""
    if total * work_per_item < SERIAL_WORK:
        if total > 0:
            run(0, total)
        return
    run_chunks(run, chunk_bounds(total, work_per_item))
