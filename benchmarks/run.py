"""tinycnn against PyTorch, side by side in one process:

    python -m benchmarks.run [--only a,b,c,d,gpu,compile,shared,import-order,zoo,scaling] [--steps N]
                             [--repeat R] [--zoo-cases PREFIX,...] [--scaling-batches B,...]
                             [--kernels auto,numpy] [--torch-threads N] [--profile] [--json out.json]

Each part builds the same network in both frameworks with the same weights (benchmarks/twins.py),
checks that both compute the same output, then times them in alternating rounds (tinycnn, torch,
torch, tinycnn, ...) after a warm-up, so a change in the machine's load hits both alike. A row
gives the median over the rounds of the mean time per step, and the ratio tinycnn / torch (below 1:
tinycnn is faster).

    a        the seed's LeNet (models.create("lenet"): 20-50-500, 1x28x28) training with SGD +
             momentum 0.9 at batch 64: seconds per MNIST epoch = time per step x 938 (60,000 / 64)
    b        d2l's LeNet-5 shape 6-16-120-84 (models.create("lenet_d2l")) training at batch 64 and
             128: seconds per epoch (938 and 469 steps) and milliseconds per step
    c        ResNet-18 (models.create("resnet18", num_classes=10): torchvision's layout with its 7x7
             stride-2 stem and max pool) on 3x32x32, forward + cross-entropy + backward, batch 32
    d        single convolutions, forward and backward timed separately, in GFLOP/s, beside this
             machine's measured sgemm GFLOP/s on all its cores (a NumPy float32 matmul split into
             one single-threaded OpenBLAS product per core by tinycnn.kernels.cpu.matmul)
    gpu      (a) on the GPU, and ResNet-50 at 224x224 batch 64 training and inference (eval, no_grad):
             images/s and peak GPU memory against PyTorch+cuDNN, TF32 off on both (needs CuPy and a
             CUDA device; prints "skipped: no GPU" otherwise)
    compile  Numba's compile cost: a fresh `python -c` that imports tinycnn and runs one LeNet
             forward + backward, with an empty NUMBA_CACHE_DIR (cold) and again with it filled (warm)
    shared   (not run by default) tinycnn's (a) with one kernel thread and with all of them, while 0,
             1 and 2 CPU-bound processes share the machine: what the kernel threads cost when other
             work holds the cores
    import-order  (not run by default) tinycnn's (a) in fresh processes, alternately with NumPy imported
             before tinycnn (as most scripts do) and with tinycnn first: ms per step for each and
             their ratio, which should be 1 now that the OpenBLAS limit is set at the first kernel
             call (tinycnn/_threading.py); --repeat processes of each, --steps steps timed in each
    zoo      (not run by default) issue 14's table against torchvision's models with the same weights:
             LeNet training at batch 1-1024, ResNet-18 (32x32), ResNet-50 and DenseNet-121 training,
             ResNet-50, VGG-16, DenseNet-121 and Inception v3 inference (benchmarks/zoo.py);
             --zoo-cases keeps the cases whose names start with the given prefixes
    scaling  (not run by default) LeNet (MNIST) and ResNet-18 (3x32x32) training step time and images/s
             against batch size 1, 4, 16, ..., 1024 (--scaling-batches), flagging any batch whose images/s
             falls below a smaller batch's (benchmarks/scaling.py)

Data: one random batch per case (float32 N(0, 1), uniform labels), or for LeNet the first images of
the real MNIST training set when $TINYCNN_DATA is set; the timings do not depend on the values.
tinycnn's settings (tinycnn/_threading.py) are made at run time: OpenBLAS at one thread from the
first kernel call on (PyTorch's own BLAS is not touched), and glibc's malloc thresholds raised by
tinycnn.config.tune_allocator(), called here as `tinycnn train` calls it. torch runs as its users
run it: its default thread count (printed in the header) and its OpenMP threads' default wait
policy. (Until 2026-12-01 this harness set OMP_WAIT_POLICY=PASSIVE before torch loaded, so that
torch's threads would sleep rather than spin between its steps and tinycnn's; it made every torch op
wait for its threads to wake, ResNet-18's training step 62 -> 96 ms, while tinycnn's was the same
either way, 97-100 ms: the ratios of RESULTS.md's run 5 are too kind to tinycnn.)
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import tinycnn

import tinycnn.functional as F
import tinycnn.models
from benchmarks import twins as torch_twins
from tinycnn import backend

PARTS = ("a", "b", "c", "d", "gpu", "compile", "shared", "import-order", "zoo", "scaling")
PART_ALIASES = {"lenet": "a", "lenet5": "b", "resnet18": "c", "conv": "d"}
MNIST_TRAIN_IMAGES = 60000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 4)[4])
    parser.add_argument("--only", "--parts", dest="only", default="a,b,c,d,gpu,compile",
                        help="comma-separated parts to run (default: a,b,c,d,gpu,compile; shared, "
                             "import-order, zoo and scaling only on request)")
    parser.add_argument("--zoo-cases", metavar="PREFIX,...",
                        help="zoo part: only the cases whose names start with these prefixes "
                             "(e.g. lenet-train-1,resnet50; the names are in benchmarks/zoo.py)")
    parser.add_argument("--scaling-batches", metavar="B,...",
                        help="scaling part: the batch sizes (default 1,4,16,64,256,1024)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per round (default 10)")
    parser.add_argument("--repeat", "--rounds", dest="repeat", type=int, default=5,
                        help="alternating timing rounds per framework; the median is reported (default 5)")
    parser.add_argument("--kernels", default="auto",
                        help="comma-separated tinycnn kernel choices to time, from auto, numba, numpy "
                             "(default auto: Numba on the CPU; numpy: the NumPy reference kernels)")
    parser.add_argument("--torch-threads", type=int, metavar="N",
                        help="torch.set_num_threads(N) (default: torch's own choice, printed in the header); "
                             "tinycnn's kernel threads come from TINYCNN_NUM_THREADS (default: every core), "
                             "set in the environment before Python starts")
    parser.add_argument("--profile", action="store_true",
                        help="after timing (a), (b) and (c), cProfile --steps tinycnn steps and print "
                             "where the time goes")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.only = [PART_ALIASES.get(p.strip(), p.strip()) for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.only if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.scaling_batches is not None:
        try:
            args.scaling_batches = [int(b) for b in args.scaling_batches.split(",") if b.strip()]
        except ValueError:
            parser.error(f"--scaling-batches: expected comma-separated positive integers, got {args.scaling_batches!r}")
        if not args.scaling_batches or min(args.scaling_batches) < 1:
            parser.error(f"--scaling-batches: expected comma-separated positive integers, got {args.scaling_batches}")
    if args.zoo_cases is not None:
        args.zoo_cases = [c.strip() for c in args.zoo_cases.split(",") if c.strip()]
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in args.kernels if k not in ("auto", "numba", "numpy")]
    if bad:
        parser.error(f"--kernels: expected auto, numba or numpy, got {bad}")
    if args.steps < 1 or args.repeat < 1:
        parser.error(f"--steps and --repeat must be at least 1, got {args.steps} and {args.repeat}")
    return args


# Each round starts with untimed steps of its entry until this much time has passed (one step at
# least): the threads of the entry timed before (torch's OpenMP team, tinycnn's kernel helpers)
# spin for some milliseconds after their last step and would take a core from this entry's first
# timed steps, and this entry's own threads are woken before the clock starts. Each round then
# times a framework in its steady state, as a training loop runs it. (Sleeping between rounds
# instead let the machine idle, and both frameworks' first steps after an idle moment ran slow.)
ROUND_WARMUP_SECONDS = 0.02


def interleaved_rounds(runs, rounds, steps, warmup=2):
    """Time each entry of `runs` ({label: step} or {label: (prepare, step)}) `steps` times per round,
    alternating the entries round by round (the order reversed every other round); return
    {label: [mean seconds per step in each round]}. Each round starts with untimed steps (see
    ROUND_WARMUP_SECONDS).

    With a (prepare, step) pair only the step is timed, as step(prepare()): a backward pass that
    needs a fresh forward, say.
    """
    runs = {label: run if isinstance(run, tuple) else (None, run) for label, run in runs.items()}

    def timed(prepare, step):
        argument = prepare() if prepare else None
        start = time.perf_counter()
        step(argument) if prepare else step()
        return time.perf_counter() - start

    for prepare, step in runs.values():
        for _ in range(warmup):
            timed(prepare, step)
    times = {label: [] for label in runs}
    labels = list(runs)
    for round_ in range(rounds):
        for label in (labels if round_ % 2 == 0 else labels[::-1]):
            warmup_end = time.perf_counter() + ROUND_WARMUP_SECONDS
            while True:
                timed(*runs[label])
                if time.perf_counter() >= warmup_end:
                    break
            times[label].append(sum(timed(*runs[label]) for _ in range(steps)) / steps)
    return times


def interleaved(runs, rounds, steps, warmup=2):
    """{label: median over the rounds of the mean seconds per step} (see interleaved_rounds)."""
    return {label: statistics.median(t) for label, t in interleaved_rounds(runs, rounds, steps, warmup).items()}


def summarise(times):
    """{label: (median, best)} of interleaved_rounds' per-round times."""
    return {label: (statistics.median(t), min(t)) for label, t in times.items()}


def sgemm_gflops(n=2048, repeats=5, product=None):
    """This machine's float32 matrix product through NumPy's BLAS: (median, best) GFLOP/s of n^3.
    product: how to multiply (default a @ b, on the OpenBLAS threads in force)."""
    product = product or np.matmul
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    product(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(seconds) / 1e9, 2 * n ** 3 / min(seconds) / 1e9


def mnist_batch(batch, seed=0):
    """One (x, t) NumPy batch of MNIST-shaped data: the first real MNIST training images when
    $TINYCNN_DATA is set, else float32 N(0, 1) images and uniform labels."""
    if os.environ.get("TINYCNN_DATA"):
        from tinycnn.data.mnist import load_mnist
        images, labels = load_mnist(train=True, download=False)
        x = (images[:batch].astype(np.float32) / 255.0 - 0.1307) / 0.3081  # the usual normalisation
        return x, labels[:batch].copy()
    return random_batch(batch, (1, 28, 28), 10, seed)


def random_batch(batch, shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + shape, dtype=np.float32), rng.integers(0, classes, size=batch)


def build_twins(name, device="cpu", **kwargs):
    """(tinycnn model from the registry, its torch twin with the same weights), in training mode."""
    tinycnn.manual_seed(0)
    tiny_model = tinycnn.models.create(name, **kwargs)
    torch_model = torch_twins.TWINS[name](**kwargs)
    torch_twins.copy_weights(tiny_model, torch_model)
    if device == "gpu":
        tiny_model.to("gpu")
        torch_model.cuda()
    return tiny_model.train(), torch_model.train()


def output_difference(tiny_model, torch_model, tiny_x, torch_x):
    """max |tinycnn - torch| / max(1, max |torch|) of the two outputs on one batch."""
    tiny_y = backend.to_cpu(tiny_model(tiny_x).data)
    torch_y = torch_model(torch_x).detach().cpu().numpy()
    difference = float(np.abs(tiny_y - torch_y).max()) / max(1.0, float(np.abs(torch_y).max()))
    if difference > 1e-3:
        raise AssertionError(f"tinycnn and torch outputs differ by {difference:.2e} (relative): "
                             "the twins do not compute the same thing, so their timings would not compare")
    return difference


def profile(label, step, steps, top=8):
    """cProfile `steps` calls of `step` and print the functions with the most own time (a NumPy
    operator such as `@` counts towards the Python function that calls it)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    print(f"  cProfile of {label}: {wall / steps * 1e3:.1f} ms/step over {steps} steps (profiled)")
    rows = sorted(((own, total, calls, function) for function, (_, calls, own, total, _) in stats.stats.items()),
                  reverse=True)
    for own, total, calls, (path, line, name) in rows[:top]:
        where = f"{os.path.relpath(path) if path.startswith(os.sep) else path}:{line}({name})"
        print(f"    {own / stats.total_tt:4.0%} own, {total / stats.total_tt:4.0%} with callees, "
              f"{calls:5d} calls  {where}")


def with_kernels(kernels, step):
    """`step` run under tinycnn.config.using(kernels=...)."""
    def run(*args):
        with tinycnn.config.using(kernels=kernels):
            return step(*args)
    return run


def training_step(framework, model, x, t, momentum=0.9, lr=0.01, sync=None):
    """A closure running one SGD step (zero_grad, forward, cross-entropy, backward, update) on the
    framework's tensors (x, t); `sync` waits for the GPU."""
    if framework == "tinycnn":
        from tinycnn import functional as loss_functions, optim
    else:
        from torch import optim
        from torch.nn import functional as loss_functions
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step():
        optimizer.zero_grad()
        loss = loss_functions.cross_entropy(model(x), t)
        loss.backward()
        optimizer.step()
        if sync:
            sync()
        return loss

    return step


def forward_backward(framework, model, x, t):
    """A closure running forward, cross-entropy and backward (no update) on (x, t)."""
    loss_functions = F if framework == "tinycnn" else torch.nn.functional

    def step():
        model.zero_grad()
        loss = loss_functions.cross_entropy(model(x), t)
        loss.backward()
        return loss

    return step


class Results:
    """Rows of measurements, printed as they come and as one table at the end."""

    def __init__(self):
        self.rows = []

    def add(self, part, case, kernels, tiny, torch_, unit, note="", best=None):
        """tiny and torch_ are medians over the rounds; best = (tinycnn, torch) of their fastest rounds."""
        row = dict(part=part, case=case, kernels=kernels, tinycnn=tiny, torch=torch_,
                   ratio=tiny / torch_, unit=unit, note=note)
        if best is not None:
            row.update(tinycnn_best=best[0], torch_best=best[1], best_ratio=best[0] / best[1])
            row["note"] = f"best rounds' ratio {row['best_ratio']:.2f}; " + note
        self.rows.append(row)
        print("  " + self.format(row), flush=True)
        return row

    @staticmethod
    def format(row):
        return (f"{row['part']:4s} {row['case']:42s} {row['kernels']:6s} {row['tinycnn']:10.4g} "
                f"{row['torch']:10.4g} {row['unit']:10s} {row['ratio']:6.2f}  {row['note']}")

    def table(self):
        header = (f"{'part':4s} {'case':42s} {'kernel':6s} {'tinycnn':>10s} {'torch':>10s} {'unit':10s} "
                  f"{'ratio':>6s}  note")
        return "\n".join([header, "-" * len(header)] + [self.format(row) for row in self.rows])


def time_training(results, args, part, case, name, x, t, steps_per_epoch, kwargs=None, device="cpu",
                  sync_tiny=None, sync_torch=None):
    """Time SGD training of the registry network `name` against its torch twin; add per-epoch rows."""
    tiny_model, torch_model = build_twins(name, device, **(kwargs or {}))
    tiny_x, tiny_t = tinycnn.tensor(x, device=device), tinycnn.tensor(t, device=device)
    torch_device = "cuda" if device == "gpu" else "cpu"
    torch_x, torch_t = torch.from_numpy(x).to(torch_device), torch.from_numpy(t).to(torch_device)
    difference = output_difference(tiny_model, torch_model, tiny_x, torch_x)
    runs = {f"tinycnn {k}": with_kernels(k, training_step("tinycnn", tiny_model, tiny_x, tiny_t, sync=sync_tiny))
            for k in (args.kernels if device == "cpu" else ["auto"])}
    runs["torch"] = training_step("torch", torch_model, torch_x, torch_t, sync=sync_torch)
    times = summarise(interleaved_rounds(runs, args.repeat, args.steps))
    if args.profile:
        for label, step in runs.items():
            if label != "torch":
                profile(f"{case}, {label}", step, args.steps)
    (torch_s, torch_best) = times["torch"]
    for label, (seconds, best) in times.items():
        if label != "torch":
            results.add(part, case, label.split()[1], seconds * steps_per_epoch, torch_s * steps_per_epoch,
                        "s/epoch", f"{seconds * 1e3:.1f} vs {torch_s * 1e3:.1f} ms/step; "
                        f"outputs agree to {difference:.0e}", best=(best, torch_best))
    return {label: median for label, (median, _) in times.items()}


def part_a(results, args):
    steps = -(-MNIST_TRAIN_IMAGES // 64)
    source = "real MNIST ($TINYCNN_DATA)" if os.environ.get("TINYCNN_DATA") else "random MNIST-shaped data"
    print(f"(a) LeNet 20-50-500 training, SGD momentum 0.9, batch 64, {source}; "
          f"s/epoch = time per step x {steps}", flush=True)
    time_training(results, args, "a", "LeNet 20-50-500 train, batch 64", "lenet", *mnist_batch(64), steps)


def part_b(results, args):
    print("(b) d2l LeNet-5 shape 6-16-120-84 (sigmoid, avg pool) training, SGD momentum 0.9", flush=True)
    for batch in (64, 128):
        steps = -(-MNIST_TRAIN_IMAGES // batch)
        time_training(results, args, "b", f"LeNet-5 6-16-120-84 train, batch {batch}", "lenet_d2l", *mnist_batch(batch),
                      steps)


def part_c(results, args):
    print("(c) ResNet-18 (torchvision layout: 7x7/2 stem + max pool) on 3x32x32, forward + backward, "
          "batch 32, BatchNorm in training mode", flush=True)
    tiny_model, torch_model = build_twins("resnet18", num_classes=10)
    x, t = random_batch(32, (3, 32, 32), 10)
    tiny_x, tiny_t, torch_x, torch_t = tinycnn.tensor(x), tinycnn.tensor(t), torch.from_numpy(x), torch.from_numpy(t)
    difference = output_difference(tiny_model, torch_model, tiny_x, torch_x)
    runs = {f"tinycnn {k}": with_kernels(k, forward_backward("tinycnn", tiny_model, tiny_x, tiny_t))
            for k in args.kernels}
    runs["torch"] = forward_backward("torch", torch_model, torch_x, torch_t)
    times = summarise(interleaved_rounds(runs, args.repeat, args.steps))
    if args.profile:
        for label, step in runs.items():
            if label != "torch":
                profile(f"ResNet-18, {label}", step, args.steps)
    (torch_s, torch_best) = times["torch"]
    for label, (seconds, best) in times.items():
        if label != "torch":
            results.add("c", "ResNet-18 32x32 fwd+bwd, batch 32", label.split()[1], seconds * 1e3,
                        torch_s * 1e3, "ms/step", f"{32 / seconds:.0f} vs {32 / torch_s:.0f} "
                        f"images/s; outputs agree to {difference:.0e}", best=(best, torch_best))


CONV_LAYERS = (
    # (case, N, C, OC, H, K, padding)
    ("conv 3x3 64->64, 56x56, batch 8", 8, 64, 64, 56, 3, 1),
    ("conv 1x1 256->64, 56x56, batch 8", 8, 256, 64, 56, 1, 0),
    ("conv 5x5 20->50, 12x12, batch 64", 64, 20, 50, 12, 5, 0),
)


def part_d(results, args):
    from tinycnn.kernels import cpu, parallel
    one_thread, one_thread_best = sgemm_gflops()
    sgemm, sgemm_best = sgemm_gflops(product=cpu.matmul)
    results.sgemm_gflops = sgemm
    blas_threads = [library["threads"] for library in tinycnn._threading.report()["blas_threads"]
                    if "numpy" in library["path"]]
    print(f"(d) single convolutions (with bias), float32. This machine's sgemm (NumPy float32 matmul 2048^3): "
          f"{one_thread:.1f} GFLOP/s median ({one_thread_best:.1f} best) with NumPy's BLAS on {blas_threads} "
          f"thread(s); on all {parallel.get_num_threads()} kernel threads "
          f"(split by tinycnn.kernels.cpu.matmul) {sgemm:.1f} median, {sgemm_best:.1f} best. Because the load changes, "
          f"each layer's '% of sgemm' divides by the all-threads sgemm (1024^3) timed in the same alternating "
          f"rounds", flush=True)
    n = 1024
    a = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    b_ = np.random.default_rng(3).standard_normal((n, n), dtype=np.float32)
    rng = np.random.default_rng(0)
    for case, N, C, OC, H, K, P in CONV_LAYERS:
        OH = H + 2 * P - K + 1
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        W = rng.standard_normal((OC, C, K, K), dtype=np.float32) * 0.1
        b = rng.standard_normal(OC, dtype=np.float32)
        gy = rng.standard_normal((N, OC, OH, OH), dtype=np.float32)
        # Forward: 2 N OC OH OW C KH KW multiply-adds; backward computes gx and gW, each as many
        # (gb is a sum, ignored).
        flops = 2 * N * OC * OH * OH * C * K * K
        tiny = [tinycnn.tensor(a, requires_grad=True) for a in (x, W, b)]
        torch_ = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
        torch_gy = torch.from_numpy(gy)
        difference = float(np.abs(F.conv2d(*tiny, padding=P).data
                                  - torch.nn.functional.conv2d(*torch_, padding=P).detach().numpy()).max())

        def tiny_forward():
            return F.conv2d(*tiny, padding=P)

        def torch_forward():
            return torch.nn.functional.conv2d(*torch_, padding=P)

        def fresh_forward(forward, leaves):
            def prepare():
                for leaf in leaves:
                    leaf.grad = None
                return forward()
            return prepare

        runs = {}
        for k in args.kernels:
            runs[f"tinycnn {k} forward"] = with_kernels(k, tiny_forward)
            runs[f"tinycnn {k} backward"] = (with_kernels(k, fresh_forward(tiny_forward, tiny)),
                                             with_kernels(k, lambda y: y.backward(gy)))
        runs["torch forward"] = torch_forward
        runs["torch backward"] = (fresh_forward(torch_forward, torch_), lambda y: y.backward(torch_gy))
        runs["sgemm"] = lambda: cpu.matmul(a, b_)
        times = summarise(interleaved_rounds(runs, args.repeat, args.steps))
        sgemm_here = 2 * n ** 3 / times["sgemm"][0] / 1e9
        for k in args.kernels:
            for pass_, pass_flops in (("forward", flops), ("backward", 2 * flops)):
                (tiny_s, tiny_best), (torch_s, torch_best) = times[f"tinycnn {k} {pass_}"], times[f"torch {pass_}"]
                tiny_gflops, torch_gflops = pass_flops / tiny_s / 1e9, pass_flops / torch_s / 1e9
                row = results.add("d", f"{case} {pass_}", k, tiny_s * 1e3, torch_s * 1e3, "ms",
                                  f"{tiny_gflops:.1f} vs {torch_gflops:.1f} GFLOP/s = {tiny_gflops / sgemm_here:.0%} "
                                  f"vs {torch_gflops / sgemm_here:.0%} of sgemm {sgemm_here:.0f}; "
                                  f"agree to {difference:.0e}", best=(tiny_best, torch_best))
                row.update(tinycnn_gflops=tiny_gflops, torch_gflops=torch_gflops, sgemm_gflops=sgemm_here,
                           tinycnn_sgemm_fraction=tiny_gflops / sgemm_here)


def part_gpu(results, args):
    # TF32 off on both: torch's flags are set below; CuPy's cuBLAS products use TF32 only when
    # CUPY_TF32=1 is set, which is refused here so the two compute alike.
    print("(gpu) LeNet training, ResNet-50 224x224 batch 64 training and inference on the GPU, float32 on "
          "both, TF32 off on both (torch's allow_tf32 flags; CuPy without CUPY_TF32), cudnn.benchmark on",
          flush=True)
    if not (backend.gpu_available() and torch.cuda.is_available()):
        reason = "CuPy is not installed" if backend.cupy is None else "no CUDA device"
        print(f"  skipped: no GPU ({reason}{'' if torch.cuda.is_available() else '; torch sees no CUDA device'})")
        results.gpu_skipped = True
        return
    if os.environ.get("CUPY_TF32", "0") != "0":
        raise SystemExit("benchmarks.run --only gpu: CUPY_TF32 is set, which would let tinycnn's CuPy products use "
                         "TF32 while torch's are float32; unset it")
    import cupy

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    sync_tiny = cupy.cuda.Device().synchronize
    sync_torch = torch.cuda.synchronize
    steps = -(-MNIST_TRAIN_IMAGES // 64)
    time_training(results, args, "gpu", "LeNet 20-50-500 train, batch 64, GPU", "lenet", *mnist_batch(64),
                  steps, device="gpu", sync_tiny=sync_tiny, sync_torch=sync_torch)

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times = time_training(results, args, "gpu", "ResNet-50 224x224 train, batch 64, GPU", "resnet50",
                          *random_batch(64, (3, 224, 224), 1000), 1, device="gpu",
                          sync_tiny=sync_tiny, sync_torch=sync_torch)
    row = results.rows[-1]
    row.update(unit="s/step", note=f"{64 / times['tinycnn auto']:.0f} vs {64 / times['torch']:.0f} images/s")
    # CuPy's pool keeps every block it has held until free_all_blocks, so its size is tinycnn's peak.
    peak = f"peak GPU memory: tinycnn {pool.total_bytes() / 2**30:.2f} GiB (CuPy pool), " \
           f"torch {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (max_memory_allocated)"
    row["note"] += "; " + peak
    print("  " + Results.format(row), flush=True)
    time_gpu_inference(results, args, "resnet50", 64, (3, 224, 224), 1000, sync_tiny, sync_torch)


def time_gpu_inference(results, args, name, batch, shape, classes, sync_tiny, sync_torch):
    """Issue 14: eval-mode forward under no_grad on the GPU, images/s and peak GPU memory against
    PyTorch+cuDNN (same weights, outputs checked to agree); adds one s/step row."""
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    torch.cuda.empty_cache()
    tiny_model, torch_model = build_twins(name, "gpu")
    tiny_model.eval()
    torch_model.eval()
    x, _ = random_batch(batch, shape, classes)
    tiny_x, torch_x = tinycnn.tensor(x, device="gpu"), torch.from_numpy(x).cuda()
    with tinycnn.no_grad(), torch.no_grad():
        difference = output_difference(tiny_model, torch_model, tiny_x, torch_x)
    pool.free_all_blocks()  # the pool's size is then the timed forwards' peak (blocks stay until freed)
    torch.cuda.reset_peak_memory_stats()

    def tiny_forward():
        with tinycnn.no_grad():
            tiny_model(tiny_x)
        sync_tiny()

    def torch_forward():
        with torch.no_grad():
            torch_model(torch_x)
        sync_torch()

    times = summarise(interleaved_rounds({"tinycnn": tiny_forward, "torch": torch_forward}, args.repeat,
                                         args.steps))
    (tiny_s, tiny_best), (torch_s, torch_best) = times["tinycnn"], times["torch"]
    results.add("gpu", f"{name} {shape[1]}x{shape[2]} inference, batch {batch}, GPU", "auto", tiny_s, torch_s,
                "s/step", f"{batch / tiny_s:.0f} vs {batch / torch_s:.0f} images/s; outputs agree to "
                f"{difference:.0e}; peak GPU memory: tinycnn {pool.total_bytes() / 2**30:.2f} GiB (CuPy pool), "
                f"torch {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (max_memory_allocated)",
                best=(tiny_best, torch_best))


COMPILE_PROBE = """
import time
start = time.perf_counter()
import numpy as np
import tinycnn, tinycnn.models, tinycnn.functional as F
imported = time.perf_counter()
net = tinycnn.models.create("lenet")
x = tinycnn.tensor(np.zeros((64, 1, 28, 28), np.float32))
F.cross_entropy(net(x), tinycnn.tensor(np.zeros(64, np.int64))).backward()
done = time.perf_counter()
print(imported - start, done - imported)
"""


def part_compile(results, args):
    print("(compile) fresh `python -c`: import tinycnn + one LeNet forward/backward at batch 64; "
          "Numba's cache in a new NUMBA_CACHE_DIR: cold (empty), then warm (filled by the cold run)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinycnn-numba-cache-") as cache:
        for label, kernels in (("cold", "auto"), ("warm", "auto"), ("numpy", "numpy")):
            environment = dict(os.environ, NUMBA_CACHE_DIR=cache, TINYCNN_KERNELS=kernels)
            start = time.perf_counter()
            output = subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=environment, check=True,
                                    capture_output=True, text=True).stdout
            total = time.perf_counter() - start
            import_s, first_step_s = (float(v) for v in output.split())
            rows.append(dict(label=label, total=total, import_s=import_s, first_step=first_step_s))
            print(f"  {label:5s} ({'reference kernels' if kernels == 'numpy' else 'Numba kernels'}): "
                  f"process {total:.2f} s = import {import_s:.2f} s + first forward/backward "
                  f"{first_step_s:.2f} s + interpreter start/exit", flush=True)
    results.compile = rows


BUSY_PROCESS = "while True: pass"


def part_shared(results, args):
    from tinycnn.kernels import parallel
    all_threads = parallel.get_num_threads()
    print(f"(shared) tinycnn's LeNet training step at batch 64 with 1 and {all_threads} kernel threads, "
          f"interleaved, beside 0, 1 and 2 CPU-bound processes (`python -c \"{BUSY_PROCESS}\"`)", flush=True)
    tiny_model, _ = build_twins("lenet", "cpu")
    x, t = mnist_batch(64)
    step = training_step("tinycnn", tiny_model, tinycnn.tensor(x), tinycnn.tensor(t))

    def with_threads(count):
        def run():
            if parallel.get_num_threads() != count:
                parallel.set_num_threads(count)
            step()
        return run

    rows = []
    try:
        for busy in range(3):
            processes = [subprocess.Popen([sys.executable, "-c", BUSY_PROCESS]) for _ in range(busy)]
            try:
                time.sleep(0.5)  # let them start spinning
                times = summarise(interleaved_rounds({1: with_threads(1), all_threads: with_threads(all_threads)},
                                                     args.repeat, args.steps))
            finally:
                for process in processes:
                    process.kill()
                    process.wait()
            rows.append(dict(busy_processes=busy,
                             **{f"{count}_threads_ms": times[count][0] * 1e3 for count in times},
                             **{f"{count}_threads_best_ms": times[count][1] * 1e3 for count in times}))
            print(f"  {busy} busy: 1 thread {times[1][0] * 1e3:.1f} ms/step (best round {times[1][1] * 1e3:.1f}), "
                  f"{all_threads} threads {times[all_threads][0] * 1e3:.1f} ms/step (best round "
                  f"{times[all_threads][1] * 1e3:.1f})", flush=True)
    finally:
        parallel.set_num_threads(all_threads)
    results.shared = rows


IMPORT_ORDER_PROBE = """
import sys, time
steps, first, allocator = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if first == "numpy":
    import numpy as np
    import tinycnn
else:
    import tinycnn
    import numpy as np
if allocator == "tuned":
    tinycnn.config.tune_allocator()
import tinycnn.functional as F
import tinycnn.models
rng = np.random.default_rng(0)
x = tinycnn.tensor(rng.standard_normal((64, 1, 28, 28)).astype(np.float32))
t = tinycnn.tensor(rng.integers(0, 10, 64))
net = tinycnn.models.create("lenet")
optimizer = tinycnn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
def step():
    optimizer.zero_grad()
    F.cross_entropy(net(x), t).backward()
    optimizer.step()
for _ in range(3):  # warm-up: Numba's cache loaded, the kernel threads started
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""


def part_import_order(results, args):
    print(f"(import-order) the seed's LeNet training step at batch 64 in fresh processes: `import numpy` "
          f"before `import tinycnn`, and after it; {args.repeat} processes of each, alternating, after one untimed "
          f"process; {args.steps} steps timed in each after 3 warm-up steps; median over the processes; with glibc's "
          f"allocator as a script finds it, then after tinycnn.config.tune_allocator()", flush=True)

    def run_process(steps, first, allocator):
        return subprocess.run([sys.executable, "-c", IMPORT_ORDER_PROBE, str(steps), first, allocator],
                              check=True, capture_output=True, text=True).stdout

    run_process(1, "tinycnn", "default")  # not timed: the first process reads Numba's cache from disk into memory
    results.import_order = {}
    # glibc's default allocator moves its mmap threshold as blocks are freed, so a process's big arrays land
    # on reused or on fresh pages depending on its first allocations: per process, LeNet's step then takes
    # one of two times (measured 9.2-9.7 and 11.2-12.0 ms), whichever the import order. The tuned allocator
    # fixes the thresholds and so removes that spread; the import order is compared under both.
    for allocator in ("default", "tuned"):
        times = {"numpy": [], "tinycnn": []}
        for round_ in range(args.repeat):
            for first in (("numpy", "tinycnn") if round_ % 2 == 0 else ("tinycnn", "numpy")):
                times[first].append(float(run_process(args.steps, first, allocator).split()[-1]))
        numpy_first, tinycnn_first = (statistics.median(times[first]) for first in ("numpy", "tinycnn"))
        ratio = numpy_first / tinycnn_first
        best_ratio = min(times["numpy"]) / min(times["tinycnn"])  # the quietest process of each
        print(f"  {allocator} allocator: NumPy imported first {numpy_first * 1e3:.2f} ms/step, tinycnn first "
              f"{tinycnn_first * 1e3:.2f} ms/step: ratio {ratio:.3f} (target within 5%: "
              f"{'met' if abs(ratio - 1) <= 0.05 else 'NOT met'}); best processes' ratio {best_ratio:.3f}; "
              f"per process (ms), NumPy first {[round(t * 1e3, 1) for t in times['numpy']]}, tinycnn first "
              f"{[round(t * 1e3, 1) for t in times['tinycnn']]}", flush=True)
        results.import_order[allocator] = dict(
            numpy_first_ms=numpy_first * 1e3, tinycnn_first_ms=tinycnn_first * 1e3, ratio=ratio, best_ratio=best_ratio,
            numpy_first_rounds_ms=[t * 1e3 for t in times["numpy"]],
            tinycnn_first_rounds_ms=[t * 1e3 for t in times["tinycnn"]])


def part_zoo(results, args):
    from benchmarks import zoo  # here, not at the top: zoo imports this module's helpers
    zoo.part_zoo(results, args)


def part_scaling(results, args):
    from benchmarks import scaling  # here, not at the top: scaling imports this module's helpers
    scaling.part_scaling(results, args)


def machine():
    info = dict(python=platform.python_version(), numpy=np.__version__, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), tinycnn=tinycnn.__version__)
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        with open("/proc/meminfo") as meminfo:
            info["memory_gib"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    info["threads"] = tinycnn._threading.report()
    info["thread_counts"] = {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "TINYCNN_NUM_THREADS",
                                                                     "OMP_NUM_THREADS")}
    from tinycnn.kernels import parallel
    info["kernel_threads"] = parallel.get_num_threads()
    return info


def main(argv=None):
    args = parse_args(argv)
    tinycnn.config.tune_allocator()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    results = Results()
    info = machine()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command}\n{info['cpu']}, {info['cpus']} CPUs, {info.get('memory_gib')} GiB; Python {info['python']}, "
          f"numpy {info['numpy']}, numba {info['numba']}, torch {info['torch']} ({info['torch_threads']} threads), "
          f"tinycnn {info['tinycnn']}; thread counts {info['thread_counts']}, tinycnn kernel threads {info['kernel_threads']}\n"
          f"timed: {args.repeat} alternating rounds x {args.steps} steps after 2 warm-up steps; median of the "
          f"rounds; tinycnn kernels {args.kernels}", flush=True)
    for part in args.only:
        globals()[f"part_{part.replace('-', '_')}"](results, args)
    info["threads"] = tinycnn._threading.report()
    print(f"\nthread settings: {info['threads']}\n\n{results.table()}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(dict(command=command, machine=info, rows=results.rows,
                           sgemm_gflops=getattr(results, "sgemm_gflops", None),
                           compile=getattr(results, "compile", None), shared=getattr(results, "shared", None),
                           import_order=getattr(results, "import_order", None),
                           gpu_skipped=getattr(results, "gpu_skipped", None),
                           scaling=getattr(results, "scaling", None)), file, indent=1, default=str)


if __name__ == "__main__":
    main()
