"""Parallel loops for the Numba CPU kernels, on a small pool of Python threads.

The kernels in tinycnn.kernels.cpu are serial `@njit(nogil=True)` loops over a range of their
outermost index (samples, image planes, channels). `parallel_range` splits that index into chunks
and runs them on the calling thread and the pool's threads at once; Numba's nogil functions and
NumPy's matrix products release the GIL, so the chunks really run side by side.

The pool's helper threads spin for a few milliseconds after each call before they sleep (see
_Helpers): on this project's machine, a virtual machine whose idle cores halt at once, a sleeping
thread took 50-100 microseconds to wake, so a helper woken for each kernel call started its share
late. The calling thread starts on the first chunk at once and takes chunks from a shared counter,
so a helper that is late costs nothing but the chunks it does not take, and a call whose work is
small runs serially with no hand-off at all. The chunks are fixed by the work's shape, never by
which thread runs them, so results are the same from run to run whatever the thread count.

Why not Numba's own `prange`: its OpenMP threads wake as fast as these helpers (2 microseconds for
a two-chunk loop, with GNU OpenMP's default spinning), but a conv2d chunk calls OpenBLAS through
NumPy between its Numba loops, which a `prange` body cannot; and an OpenMP team spinning beside
this pool would take the cores from it. (Its workqueue layer, and OpenMP told not to spin, paid
76-160 microseconds a call.)

TINYCNN_NUM_THREADS sets the number of threads (calling thread included); without it, the number
of cores this process may use. `set_num_threads` changes it at run time.

Each chunk's matrix products run on OpenBLAS with one thread, since the threads here already fill
the cores: this module, imported with the Numba kernels at the first kernel call, sets that limit
once for the process through threadpoolctl (tinycnn._threading explains why there and not per call).
"""
import itertools
import os
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinycnn import _threading

_threading.limit_blas_threads()

# A call with fewer element operations than this runs on the calling thread alone: waking a pool
# thread measured 80-90 microseconds here, about what 10^5 element operations of a kernel take.
# The helpers now spin rather than sleep between calls, but a smaller limit still gained nothing:
# a helper needs the GIL to start its chunk, and waits for it asleep while the caller holds it
# (with 2^15 here and 2 M multiply-adds for PRODUCT_SERIAL, LeNet's training step at batch 16 ran
# 1.09-1.10x torch's time, against 1.07 with these limits).
SERIAL_WORK = 1 << 17
# Chunks are made about this much work each (or one item, if an item is bigger), so that several
# chunks per thread even out threads that start late.
CHUNK_WORK = 1 << 18


def _core_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    return _cores


_cores = _core_count()
_thread_count = _default_thread_count()
_inside = threading.local()  # set while a thread runs a chunk: a nested call runs serially


def get_num_threads():
    return _thread_count


def set_num_threads(count):
    """Use `count` threads (the calling thread included) for the CPU kernels from now on."""
    global _thread_count, _helpers
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {count!r}")
    with _helpers_lock:
        if _helpers is not None:
            _helpers.stop()
            _helpers = None
        _thread_count = count


@intrinsic
def _read_shared(typing_context, array_type, index_type):
    """array[index], read with an atomic load (acquire ordering): a value that another thread writes.
    A spin loop must not read it with a plain load, which the compiler may hoist out of a loop that
    writes nothing, and then spin forever on the value it read first."""
    signature = array_type.dtype(array_type, index_type)

    def codegen(context, builder, signature, arguments):
        array_type, _ = signature.args
        array = context.make_array(array_type)(context, builder, arguments[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [arguments[1]])
        return builder.load_atomic(pointer, "acquire", array_type.dtype.bitwidth // 8)

    return signature, codegen


@intrinsic
def _write_shared(typing_context, array_type, index_type, value_type):
    """array[index] = value, written with an atomic store (release ordering): every write this
    thread made before it is seen by a thread that reads the value with _read_shared."""
    signature = types.void(array_type, index_type, value_type)

    def codegen(context, builder, signature, arguments):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, arguments[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [arguments[1]])
        value = context.cast(builder, arguments[2], signature.args[2], array_type.dtype)
        builder.store_atomic(value, pointer, "release", array_type.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _yield_core(typing_context):
    """sched_yield() from the C library: the calling thread lets any other runnable thread on its core
    go first. This machine's scheduler may put a spinning helper on the same core as the thread
    whose work it waits for: without the yield, the spinner took half that core (LeNet's training
    steps, batch 16, ran 7.8 ms instead of 3.5 with 16 ms of spin)."""
    signature = types.int32()

    def codegen(context, builder, signature, arguments):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(function, [])

    return signature, codegen


@njit(cache=True, nogil=True)
def _spin_until_changed(cell, seen, passes):
    # cell[0] as soon as it differs from `seen`; after `passes` reads, each followed by a yield,
    # whatever it holds then.
    for _ in range(passes):
        value = _read_shared(cell, 0)
        if value != seen:
            return value
        _yield_core()
    return _read_shared(cell, 0)


@njit(cache=True, nogil=True)
def _leave_and_spin(busy, index, cell, seen, passes):
    # busy[index] = 0, then _spin_until_changed(cell, seen, passes). A helper leaves its job here
    # rather than in Python: this store runs after Numba has let go of the GIL, so the caller,
    # which sees it and then takes the GIL back, never finds the GIL still held by this helper.
    # (Where it did, the caller slept on the GIL and woke 50 microseconds later: a thread asleep
    # takes that long to wake on this project's virtual machine.)
    _write_shared(busy, index, 0)
    return _spin_until_changed(cell, seen, passes)


@njit(cache=True, nogil=True)
def _spin_until_idle(busy, passes):
    # 0 as soon as every entry of busy is 0; after `passes` rounds of reads (at least one), each
    # followed by a yield, how many are not.
    remaining = busy.size
    for _ in range(max(passes, 1)):
        remaining = 0
        for i in range(busy.size):
            remaining += _read_shared(busy, i) != 0
        if remaining == 0:
            break
        _yield_core()
    return remaining


# How long an idle helper, or a caller waiting for its helpers, spins before it sleeps: this many
# passes of a read and a yield, about 4 ms here (a yield takes 0.16 microseconds when no other
# thread wants the core), longer than the gaps between kernel calls in a training step: LeNet's
# at batch 1 ran 1.52-1.54 ms a step so against 1.76-2.07 with 1 ms of spin, where its helper fell
# asleep within every step. (GNU OpenMP's threads, torch's, spin for some milliseconds too.) The
# helpers spin only where each thread has a core of its own.
SPIN_PASSES = 25_000
# A caller whose helpers are still busy after its spin looks again this often, asleep between.
WAIT_POLL_SECONDS = 1e-4


def _spin_passes():
    return SPIN_PASSES if _thread_count <= _cores else 0


class _Helpers:
    """The pool's helper threads: each runs every job handed to it (a callable that takes chunks
    until none is left), then spins for SPIN_PASSES, watching for the next job, before it sleeps.

    A helper that spins sees a new job within a microsecond, where one asleep took 50-100 to wake.
    It spins in a Numba loop, without the GIL, so the calling thread's Python runs on undisturbed.
    (It still needs the GIL to start its chunk: where the caller holds the GIL then, the helper
    waits for it, asleep, and starts late; the chunks it does not take, the caller runs.)

    Jobs are numbered: `generation` holds the last one's number, and `busy[i]` is 1 while helper i
    is inside a job. A helper sets it before it takes its first chunk and clears it once out of the
    job and off the GIL (_leave_and_spin), so a caller that has seen the chunks run out and then
    finds every entry 0 knows that no chunk of its job is still running."""

    def __init__(self, count):
        self.generation = np.zeros(1, dtype=np.int64)
        self.busy = np.zeros(count, dtype=np.int64)
        self.job = None  # the job of number generation[0]; None tells the helpers to stop
        self.wake = threading.Condition()  # for helpers that spun without seeing a job
        # Compiled (or loaded from Numba's cache) here, before any helper runs: a helper compiling
        # its spin loop in its first job would leave every chunk of that job to the caller.
        _leave_and_spin(np.zeros(1, dtype=np.int64), 0, self.generation, 0, 0)
        _spin_until_idle(self.busy, 0)
        self.threads = [threading.Thread(target=self._serve, args=(i,), name=f"tinycnn-kernel-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _serve(self, index):
        seen = 0  # the number of the last job this helper ran
        while True:
            # the job just run (if any) ends here: _leave_and_spin clears busy[index] off the GIL
            generation = _leave_and_spin(self.busy, index, self.generation, seen, _spin_passes())
            if generation == seen:
                with self.wake:
                    while self.generation[0] == seen:
                        self.wake.wait()
                generation = self.generation[0]
            seen = generation
            job = self.job
            if job is None:
                return
            self.busy[index] = 1
            try:
                job()
            except BaseException:  # (take_chunks keeps its errors; this would be a bug in it)
                self.busy[index] = 0
                raise

    def start(self, job):
        """Hand `job` to every helper."""
        self.job = job
        with self.wake:
            self.generation[0] += 1
            self.wake.notify_all()

    def wait(self):
        """Return once no helper is inside a job."""
        while _spin_until_idle(self.busy, _spin_passes()):
            time.sleep(WAIT_POLL_SECONDS)

    def stop(self):
        self.start(None)
        for thread in self.threads:
            thread.join()


_helpers = None  # started by the first call that runs in parallel
_helpers_lock = threading.Lock()  # held by the call whose job the helpers run, and to replace them


def _forget_helpers_after_fork():
    # A forked child has none of the parent's threads: it starts its own helpers when it needs them.
    global _helpers, _helpers_lock
    _helpers = None
    _helpers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers_after_fork)


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


def chunk_bounds(total, work_per_item, min_items=1):
    """Split range(total) into chunks of about CHUNK_WORK element operations, at least min_items
    items each (or all of them): a list of (start, stop). Depends on the work's size only, never on
    the thread count."""
    if total <= 0:
        return []
    per_chunk = max(1, min(total, max(min_items, CHUNK_WORK // max(1, work_per_item))))
    return split(total, per_chunk)


def run_chunks(run, chunks):
    """Call run(start, stop) for every chunk, on up to get_num_threads() threads; return when all
    have finished, raising the first exception any of them raised."""
    global _helpers
    # Serially: one chunk or one thread, a call nested in a chunk, or a call made while the helpers
    # run another thread's (the user's own threads, each calling kernels): they serve one at a time.
    if (min(_thread_count, len(chunks)) <= 1 or getattr(_inside, "active", False)
            or not _helpers_lock.acquire(blocking=False)):
        for start, stop in chunks:
            run(start, stop)
        return
    try:
        if _helpers is None:
            _helpers = _Helpers(_thread_count - 1)
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

        _helpers.start(take_chunks)
        take_chunks()
        _helpers.wait()
    finally:
        _helpers_lock.release()
    if failed:
        raise failed[0]


def parallel_range(run, total, work_per_item, min_items=1):
    """run(start, stop) over range(total) in chunks, in parallel when the work is big enough.
    work_per_item: about how many element operations one item costs (for example, the elements
    of one image plane); min_items: the fewest items a chunk may have (all of them at most)."""
    if total * work_per_item < SERIAL_WORK:
        if total > 0:
            run(0, total)
        return
    run_chunks(run, chunk_bounds(total, work_per_item, min_items))
