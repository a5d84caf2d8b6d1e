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


def test_a_call_returns_only_once_every_chunk_has_finished(three_threads):
    # The helpers say they are done from inside a Numba loop (parallel._leave_and_spin), not from
    # Python: a caller that took that for the end of a chunk still running would return early.
    finished = []

    def run(start, stop):
        on_helper = threading.current_thread() is not caller
        threading.Event().wait(0.002 if on_helper else 0.0003)  # the helpers' chunks end last
        finished.append(start)

    caller = threading.current_thread()

    for _ in range(20):
        finished.clear()
        parallel.run_chunks(run, [(k, k + 1) for k in range(6)])
        assert sorted(finished) == list(range(6))


def test_small_work_stays_on_the_calling_thread(three_threads):
    threads = []
    parallel.parallel_range(lambda start, stop: threads.append((threading.current_thread(), start, stop)), 10, 10)
    assert threads == [(threading.current_thread(), 0, 10)]


def test_chunks_depend_on_the_work_only():
    assert parallel.chunk_bounds(0, 5) == []
    assert parallel.chunk_bounds(5, parallel.CHUNK_WORK * 2) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert parallel.chunk_bounds(10, parallel.CHUNK_WORK // 4) == [(0, 4), (4, 8), (8, 10)]
    # at least min_items a chunk (the batch-norm kernels' blocks of channels), or all of them
    assert parallel.chunk_bounds(10, parallel.CHUNK_WORK * 2, min_items=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert parallel.chunk_bounds(10, parallel.CHUNK_WORK // 4, min_items=3) == [(0, 4), (4, 8), (8, 10)]
    assert parallel.chunk_bounds(10, parallel.CHUNK_WORK * 2, min_items=50) == [(0, 10)]


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


def _chunk_names(chunk_count, seconds):
    """Run chunk_count chunks of `seconds` each; the names of the threads that ran them."""
    names = []

    def run(start, stop):
        names.append(threading.current_thread().name)
        threading.Event().wait(seconds)

    parallel.run_chunks(run, [(k, k + 1) for k in range(chunk_count)])
    return names


def test_helpers_that_went_to_sleep_wake_for_the_next_call(three_threads, monkeypatch):
    # A helper spins for SPIN_PASSES after a call, then sleeps: the next call must still wake it.
    monkeypatch.setattr(parallel, "SPIN_PASSES", 0)
    assert len(set(_chunk_names(50, 0.002))) > 1
    threading.Event().wait(0.05)  # every helper is asleep by now
    assert len(set(_chunk_names(50, 0.002))) > 1


def test_spinning_helpers_take_the_next_call(three_threads, monkeypatch):
    monkeypatch.setattr(parallel, "SPIN_PASSES", 1 << 40)  # they spin until the next call, however late
    monkeypatch.setattr(parallel, "_cores", 3)  # as if each thread had a core of its own
    for _ in range(3):
        assert len(set(_chunk_names(20, 0.002))) > 1


def test_set_num_threads_stops_the_old_helpers(three_threads):
    _chunk_names(10, 0.001)
    old = [t for t in threading.enumerate() if t.name.startswith("tinycnn-kernel-")]
    assert len(old) == 2
    parallel.set_num_threads(2)
    assert not any(t.is_alive() for t in old)
    names = _chunk_names(20, 0.002)
    assert len(set(names)) == 2 and len(names) == 20


def test_a_failed_call_leaves_the_helpers_serving(three_threads):
    def run(start, stop):
        threading.Event().wait(0.002)
        raise RuntimeError(f"chunk {start}")

    with pytest.raises(RuntimeError, match="chunk"):
        parallel.run_chunks(run, [(k, k + 1) for k in range(10)])
    assert len(set(_chunk_names(50, 0.002))) > 1


def test_calls_from_two_user_threads_at_once_both_finish(three_threads):
    # The helpers serve one call at a time: the other call runs on its own thread, to the same result.
    results = {}

    def call(label):
        counts = np.zeros(200, dtype=np.int64)

        def run(start, stop):
            counts[start:stop] += 1
            threading.Event().wait(0.001)

        parallel.run_chunks(run, [(k, k + 10) for k in range(0, 200, 10)])
        results[label] = counts

    users = [threading.Thread(target=call, args=(label,)) for label in "ab"]
    for user in users:
        user.start()
    for user in users:
        user.join(timeout=30)
    assert not any(user.is_alive() for user in users)
    assert all((results[label] == 1).all() for label in "ab")
