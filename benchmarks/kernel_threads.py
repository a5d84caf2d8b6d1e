"""Where a step's time goes on the kernel threads: every parallel call of the Numba kernels, its
wall time beside the time its chunks took on all the threads together.

    python -m benchmarks.kernel_threads [--case resnet18-train-32px] [--threads N] [--steps 5] [--top 15]

The step is a case of the zoo part (benchmarks/zoo.py: a training step with SGD, momentum 0.9, or
an inference forward), in tinycnn alone, on random inputs (importing the zoo's list of cases loads
torch, which is not run). After two untimed steps, `steps` steps
run with tinycnn.kernels.parallel.run_chunks measured: for each call, the wall time from its start
to its return, and the sum of its chunks' times on whichever threads ran them. Calls are grouped by
their chunk function (`_conv2d_forward.run` is conv2d's forward chunk, `gather_taps.<lambda>` the
weight-tap gather's), and per step the table gives

    wall        the calls' wall time: the calling thread is inside them
    work        their chunks' time, summed over the threads
    idle        threads x wall - work: thread time spent waiting (a helper that starts late, a
                caller waiting for the last chunk, one chunk where there are two threads)
    efficiency  work / (threads x wall): 1.0 when every thread worked from start to end

and the step's time outside every parallel call: Python, autograd, and kernel work too small to
split (on the calling thread alone).

Run it with --threads 1 beside the default: the chunks' work grows when two threads run them at
once (each comes back from a Numba loop or an OpenBLAS product needing the GIL, and they share the
memory bus), and the difference says by how much. benchmarks/RESULTS.md (run 11) has ResNet-18's.
"""
import argparse
import collections
import contextlib
import sys
import time

import numpy as np  # first, as a user's script imports it

import tinycnn
import tinycnn.models
from benchmarks.zoo import ZOO_CASES
from tinycnn import functional as F, optim
from tinycnn.kernels import parallel


def parse_args(argv=None):
    names = [case.name for case in ZOO_CASES]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_threads", description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="resnet18-train-32px", choices=names, help="a zoo case (benchmarks/zoo.py)")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: every core)")
    parser.add_argument("--steps", type=int, default=5, help="steps measured (default 5)")
    parser.add_argument("--top", type=int, default=15, help="call sites listed, most idle first (default 15)")
    return parser.parse_args(argv)


def make_step(case):
    """A closure running one step of the zoo case in tinycnn, on random inputs."""
    tinycnn.manual_seed(0)
    model = tinycnn.models.create(case.network, **case.kwargs).train(case.mode == "train")
    rng = np.random.default_rng(0)
    x = tinycnn.tensor(rng.standard_normal((case.batch,) + case.input_shape).astype(np.float32))
    if case.mode != "train":
        def infer():
            with tinycnn.no_grad():
                model(x)
        return infer
    labels = tinycnn.tensor(rng.integers(0, case.kwargs.get("num_classes", 10 if case.network == "lenet" else 1000),
                                         size=case.batch))
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train():
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    return train


def call_site(run):
    """The chunk function's module file and qualified name, e.g. 'cpu_conv.py _conv2d_forward.run'."""
    code = getattr(run, "__code__", None)
    if code is None:
        return repr(run)
    return f"{code.co_filename.rsplit('/', 1)[-1]} {run.__qualname__.replace('.<locals>', '')}"


@contextlib.contextmanager
def measured_parallel_calls(wall, work, calls):
    """Within the block, every run_chunks call adds its wall time and its chunks' summed time to
    wall[site] and work[site] (seconds), and 1 to calls[site]. The kernel modules import run_chunks
    by name, so each of their names is replaced too, and restored on exit."""
    original = parallel.run_chunks

    def measured(run, chunks):
        site = call_site(run)
        chunk_seconds = []  # list.append is atomic under the GIL: chunks on any thread

        def timed_run(start, stop):
            began = time.perf_counter()
            run(start, stop)
            chunk_seconds.append(time.perf_counter() - began)

        began = time.perf_counter()
        original(timed_run, chunks)
        wall[site] += time.perf_counter() - began
        work[site] += sum(chunk_seconds)
        calls[site] += 1

    modules = [module for name, module in sys.modules.items()
               if name.startswith("tinycnn.kernels") and getattr(module, "run_chunks", None) is original]
    for module in modules:
        module.run_chunks = measured
    try:
        yield
    finally:
        for module in modules:
            module.run_chunks = original


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        parallel.set_num_threads(args.threads)
    threads = parallel.get_num_threads()
    case = next(case for case in ZOO_CASES if case.name == args.case)
    step = make_step(case)
    for _ in range(2):  # compile or load the kernels, size the allocator's pools
        step()
    wall, work, calls = collections.Counter(), collections.Counter(), collections.Counter()
    with measured_parallel_calls(wall, work, calls):
        began = time.perf_counter()
        for _ in range(args.steps):
            step()
        step_seconds = (time.perf_counter() - began) / args.steps
    per_step = 1e3 / args.steps  # seconds summed over the steps -> ms a step
    total_wall, total_work = sum(wall.values()) * per_step, sum(work.values()) * per_step
    print(f"{case.name}, {threads} kernel thread(s), {args.steps} steps: {step_seconds * 1e3:.1f} ms a step; "
          f"parallel calls {total_wall:.1f} ms of wall time for {total_work:.1f} ms of chunk work "
          f"(efficiency {total_work / (threads * total_wall) if total_wall else 0:.2f}); "
          f"outside them {step_seconds * 1e3 - total_wall:.1f} ms")
    print(f"{'chunk function':66s} {'calls':>6s} {'wall':>8s} {'work':>8s} {'idle':>8s} {'efficiency':>10s}  (ms a step)")
    sites = sorted(wall, key=lambda site: work[site] - threads * wall[site])  # most idle thread time first
    for site in sites[:args.top]:
        print(f"{site:66s} {calls[site] / args.steps:6.0f} {wall[site] * per_step:8.2f} {work[site] * per_step:8.2f} "
              f"{(threads * wall[site] - work[site]) * per_step:8.2f} {work[site] / (threads * wall[site]):10.2f}")


if __name__ == "__main__":
    main()
