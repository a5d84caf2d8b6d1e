"""tinycnn.kernels.parallel: chunks of a range run on several threads, each exactly once."""
import threading

import numpy as np
import pytest

from tinycnn.kernels import parallel


@pytest.fixture
def three_threads():
    previous = parallel.get_num_threads()
    parallel.set_num_threads(3)
    yield
    parallel.set_num_threads(previous)


def test_every_item_runs_once_and_big_work_is_shared(three_threads):
    counts = np.zeros(1000, dtype=np.int64)
    threads = set()

    def run(start, stop):
        threads.add(threading.current_thread().name)
        counts[start:stop] += 1
        threading.Event().wait(0.002)  # long enough for the pool's threads to wake and take chunks

    parallel.parallel_range(run, 1000, parallel.CHUNK_WORK // 10)  # 100 chunks of 10 items
    assert (counts == 1).all()
    assert len(threads) > 1, threads


def test_small_work_stays_on_the_calling_thread(three_threads):
    threads = []
    parallel.parallel_range(lambda start, stop: threads.append((threading.current_thread(), start, stop)), 10, 10)
    assert threads == [(threading.current_thread(), 0, 10)]


def test_chunks_depend_on_the_work_only():
    assert parallel.chunk_bounds(0, 5) == []
    assert parallel.chunk_bounds(5, parallel.CHUNK_WORK * 2) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert parallel.chunk_bounds(10, parallel.CHUNK_WORK // 4) == [(0, 4), (4, 8), (8, 10)]


def test_an_exception_in_a_chunk_reaches_the_caller(three_threads):
    def run(start, stop):
        if start <= 50 < stop:
            raise ValueError("chunk 50 failed")

    with pytest.raises(ValueError, match="chunk 50 failed"):
        parallel.run_chunks(run, [(k, k + 1) for k in range(100)])


def test_a_nested_call_runs_serially_instead_of_waiting_for_busy_threads(three_threads):
    inner = []

    def run(start, stop):
        parallel.run_chunks(lambda a, b: inner.append(threading.current_thread()), [(0, 1), (1, 2)])

    parallel.run_chunks(run, [(k, k + 1) for k in range(8)])
    assert len(inner) == 16


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_non_positive_ints(count):
    with pytest.raises(ValueError, match="set_num_threads: expected a positive int"):
        parallel.set_num_threads(count)
