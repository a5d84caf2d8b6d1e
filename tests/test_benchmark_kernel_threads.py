"""benchmarks/kernel_threads.py: its accounting of the kernels' parallel calls, and that it leaves
the kernels as they were (it replaces run_chunks in every kernel module while it measures)."""
import collections
import threading

from benchmarks.kernel_threads import call_site, measured_parallel_calls
from tinycnn.kernels import cpu_conv, parallel


def test_a_parallel_call_is_timed_with_its_chunks_and_run_chunks_is_restored():
    original = parallel.run_chunks
    wall, work, calls = collections.Counter(), collections.Counter(), collections.Counter()

    def chunk(start, stop):
        threading.Event().wait(0.002)

    parallel.run_chunks(chunk, [(0, 1), (1, 2)])  # starts the helper threads, outside the measurement
    with measured_parallel_calls(wall, work, calls):
        assert cpu_conv.run_chunks is not original  # the name cpu_conv imported is replaced too
        cpu_conv.run_chunks(chunk, [(0, 1), (1, 2), (2, 3)])
    assert parallel.run_chunks is original and cpu_conv.run_chunks is original
    site = call_site(chunk)
    assert list(calls) == [site] and calls[site] == 1
    assert work[site] >= 3 * 0.002  # every chunk's time, whichever thread ran it
    assert 0 < wall[site] <= work[site] + 0.002  # at least one chunk ran beside another, or all in turn


def test_the_call_site_names_the_chunk_function_and_its_file():
    def run(start, stop):
        pass

    assert call_site(run) == "test_benchmark_kernel_threads.py " \
                             "test_the_call_site_names_the_chunk_function_and_its_file.run"
