"""Data parallelism on one machine: 2 processes x 1 thread against 1 process x 2 threads.

    python -m benchmarks.distributed [--models lenet resnet18] [--steps 20] [--batch-size 64]

For each network, the same global batch is trained two ways, on random data of the data set's
shape (LeNet: MNIST, 1 x 28 x 28, 60,000 images an epoch; ResNet-18 with 10 classes: CIFAR-10,
3 x 32 x 32, 50,000 images an epoch):

  threads    one process, batch B, tinycnn's kernels on 2 threads (TINYCNN_NUM_THREADS=2)
  processes  `mpiexec -n 2`, batch B / 2 each, 1 kernel thread each, gradients averaged by
             tinycnn.distributed.DataParallel over MPI

Each run takes `--warmup` untimed SGD-momentum steps (Numba compilation, first allocations), then
times `--steps` steps; the epoch time is the median step time x ceil(images / B). For the
processes, the all-reduce's share is the time in DataParallel.synchronize() over the step time
(rank 0's, which includes waiting for the other process when it runs late), and "alone" the time
of synchronize() right after a barrier (the communication itself). Run it on a quiet machine:
with other work on the cores the figures mean little.

The worker (--worker) is this same file, launched as a subprocess per configuration so each has
its own thread settings.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

MODELS = {
    # name: (factory arguments, input shape, images per epoch)
    "lenet": ({}, (1, 28, 28), 60000),
    "resnet18": ({"num_classes": 10}, (3, 32, 32), 50000),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["lenet", "resnet18"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (each of 2 processes takes half)")
    parser.add_argument("--worker", choices=("threads", "processes"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args):
    """One configuration: print one JSON line (from rank 0) with the step times."""
    import tinycnn  # first: its thread settings must precede loading NumPy's BLAS and Numba
    import numpy as np
    import tinycnn.functional as F
    import tinycnn.models
    from tinycnn import distributed, optim

    tinycnn.config.tune_allocator()
    group = distributed.init() if args.worker == "processes" else None
    world_size = 1 if group is None else group.world_size
    batch = args.batch_size // world_size
    model_args, shape, _ = MODELS[args.model]
    tinycnn.manual_seed(0)
    model = tinycnn.models.create(args.model, **model_args)
    data_parallel = None if group is None else distributed.DataParallel(model, group)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0 if group is None else group.rank)
    x = tinycnn.Tensor(rng.standard_normal((batch,) + shape).astype(np.float32))
    labels = rng.integers(0, 10, batch)
    step_times, all_reduce_times = [], []
    for step in range(args.warmup + args.steps):
        before = 0.0 if data_parallel is None else data_parallel.all_reduce_seconds
        started = time.perf_counter()
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        if data_parallel is not None:
            data_parallel.synchronize()
        optimizer.step()
        if step >= args.warmup:
            step_times.append(time.perf_counter() - started)
            all_reduce_times.append(0.0 if data_parallel is None else data_parallel.all_reduce_seconds - before)
    # The all-reduce alone: the processes first meet at a barrier, so no waiting for a late one.
    alone_times = []
    for _ in range(args.steps if data_parallel is not None else 0):
        group.barrier()
        started = time.perf_counter()
        data_parallel.synchronize()
        alone_times.append(time.perf_counter() - started)
    if group is None or group.is_root:
        buckets = 0 if data_parallel is None else len(data_parallel.buckets)
        print(json.dumps({"step_s": statistics.median(step_times), "all_reduce_s": statistics.median(all_reduce_times),
                          "all_reduce_alone_s": statistics.median(alone_times) if alone_times else 0.0,
                          "buckets": buckets}), flush=True)


def run_configuration(kind, model, args):
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker", kind, "--model", model,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    env = dict(os.environ, TINYCNN_NUM_THREADS="2" if kind == "threads" else "1")
    if kind == "processes":
        mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
        command = [mpiexec, "-n", "2"] + command
    result = subprocess.run(command, capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    print(f"global batch {args.batch_size}; median of {args.steps} steps after {args.warmup} warm-up steps; "
          "epoch = median step x steps per epoch")
    print(f"{'network':<10} {'configuration':<24} {'step ms':>9} {'epoch s':>9} {'all-reduce (share)':>24} "
          f"{'alone ms':>9}")
    for model in args.models:
        images = MODELS[model][2]
        steps_per_epoch = -(-images // args.batch_size)
        for kind, label in (("threads", "1 process x 2 threads"), ("processes", "2 processes x 1 thread")):
            result = run_configuration(kind, model, args)
            share, alone = "-", "-"
            if kind == "processes":
                share = (f"{result['all_reduce_s'] * 1e3:.1f} ms ({result['all_reduce_s'] / result['step_s']:.1%}, "
                         f"{result['buckets']} buckets)")
                alone = f"{result['all_reduce_alone_s'] * 1e3:.1f}"
            print(f"{model:<10} {label:<24} {result['step_s'] * 1e3:>9.1f} {result['step_s'] * steps_per_epoch:>9.1f} "
                  f"{share:>24} {alone:>9}", flush=True)


if __name__ == "__main__":
    main()
