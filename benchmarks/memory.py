"""Peak memory of one training step, tinycnn against PyTorch (issue 14), each in a fresh process:

    python -m benchmarks.memory [--networks resnet50,densenet121,densenet121-efficient]
                                [--frameworks tinycnn,torch] [--batch 16] [--size 224] [--tune-allocator]
                                [--json out.json]

Each (network, framework) runs in its own `python -m benchmarks.memory --child ...` so that no
process sees another's allocations. The child imports NumPy, then tinycnn or torch (torchvision's
model files through tests/torchvision_models.py), builds the network (the same architecture and
state_dict keys in both; weights need not agree for a memory count), makes one random float32 batch
and an SGD optimizer (momentum 0.9), and runs one warm-up step at batch 1: first-call costs (Numba's
compiled kernels read from its cache, thread pools, the momentum buffers) then belong to the
baseline. It then reads

    baseline  the resident set size (VmRSS) after imports, build, batch and warm-up;
    peak      ru_maxrss (resource.getrusage) after one training step at --batch: the process's
              high-water mark, everything included ("raw peak");
    step      peak - baseline: what the step itself added at its highest (activations kept for
              backward, gradients, temporaries).

`densenet121-efficient` is DenseNet-121 with memory_efficient=True in both frameworks (tinycnn's
recomputing dense layer, models/densenet.py; torchvision's checkpointed one).
`--tune-allocator` calls tinycnn.config.tune_allocator() in tinycnn's process first, as `tinycnn
train` and benchmarks/run.py do (glibc keeps freed memory for reuse: faster, and the peak stays);
by default the library is used as a script imports it, without.

Run it on a quiet machine: other processes do not change a process's own RSS, but swapping would.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

NETWORKS = {
    # name -> (tinycnn registry name, torchvision constructor, keyword arguments for both)
    "resnet50": ("resnet50", "resnet50", {}),
    "densenet121": ("densenet121", "densenet121", {}),
    "densenet121-efficient": ("densenet121", "densenet121", {"memory_efficient": True}),
}
FRAMEWORKS = ("tinycnn", "torch")
MIB = 2 ** 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 5)[5])
    parser.add_argument("--networks", default="resnet50,densenet121,densenet121-efficient",
                        help=f"comma-separated, from {', '.join(NETWORKS)} (default: all)")
    parser.add_argument("--frameworks", default="tinycnn,torch", help="comma-separated, from tinycnn, torch")
    parser.add_argument("--batch", type=int, default=16, help="images per training step (default 16)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="call tinycnn.config.tune_allocator() in tinycnn's process, as `tinycnn train` does")
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    parser.add_argument("--child", metavar="SETTINGS", help=argparse.SUPPRESS)  # a JSON dict: one measurement
    args = parser.parse_args(argv)
    args.networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [n for n in args.networks if n not in NETWORKS] + [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown network(s) or framework(s) {unknown}; networks: {', '.join(NETWORKS)}; "
                     f"frameworks: {', '.join(FRAMEWORKS)}")
    # Below 64 pixels ResNet-50's last stage is 1x1, and torch's BatchNorm refuses the warm-up step's
    # single value per channel.
    if args.batch < 1 or args.size < 64:
        parser.error(f"--batch must be at least 1 and --size at least 64, got {args.batch} and {args.size}")
    return args


def current_rss():
    """This process's resident set size now, in bytes (Linux: VmRSS in /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("benchmarks.memory: no VmRSS in /proc/self/status (Linux only)")


def peak_rss():
    """This process's high-water resident set size so far, in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tinycnn_step_maker(network, tune_allocator):
    import tinycnn
    import tinycnn.functional as F
    import tinycnn.models
    from tinycnn import optim

    if tune_allocator:
        tinycnn.config.tune_allocator()
    registry_name, _, extra = NETWORKS[network]
    model = tinycnn.models.create(registry_name, **extra).train()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, t):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tinycnn.tensor(x)), tinycnn.tensor(t))
        loss.backward()
        optimizer.step()

    return step


def torch_step_maker(network):
    import torch
    from tests.torchvision_models import torchvision_models

    _, constructor, extra = NETWORKS[network]
    model = getattr(torchvision_models(), constructor)(weights=None, **extra).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, t):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(t))
        loss.backward()
        optimizer.step()

    return step


def child(settings):
    """One measurement in this (fresh) process; prints one JSON line."""
    import numpy as np  # first, as most scripts do

    if settings["framework"] == "tinycnn":
        step = tinycnn_step_maker(settings["network"], settings["tune_allocator"])
    else:
        step = torch_step_maker(settings["network"])
    rng = np.random.default_rng(0)
    shape = (3, settings["size"], settings["size"])
    x = rng.standard_normal((settings["batch"],) + shape, dtype=np.float32)
    t = rng.integers(0, 1000, size=settings["batch"])
    step(x[:1], t[:1])  # warm-up at batch 1: first-call costs go into the baseline
    baseline, peak_before = current_rss(), peak_rss()
    step(x, t)
    peak = peak_rss()
    print(json.dumps(dict(settings, baseline=baseline, peak_before_step=peak_before, peak=peak,
                          step=peak - baseline)))


def measure(network, framework, args):
    settings = dict(network=network, framework=framework, batch=args.batch, size=args.size,
                    tune_allocator=args.tune_allocator and framework == "tinycnn")
    process = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(settings)],
                             capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"benchmarks.memory: the {framework} {network} process failed "
                           f"(exit {process.returncode}):\n{process.stderr}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def table(rows):
    header = f"{'network':22s} {'framework':9s} {'baseline':>10s} {'raw peak':>10s} {'step':>10s}   (MiB)"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['network']:22s} {row['framework']:9s} {row['baseline'] / MIB:10.0f} "
                     f"{row['peak'] / MIB:10.0f} {row['step'] / MIB:10.0f}")
    by_key = {(row["network"], row["framework"]): row for row in rows}
    for network in dict.fromkeys(row["network"] for row in rows):
        tiny, torch_ = by_key.get((network, "tinycnn")), by_key.get((network, "torch"))
        if tiny and torch_:
            lines.append(f"{network}: tinycnn / torch = {tiny['peak'] / torch_['peak']:.2f} (raw peak), "
                         f"{tiny['step'] / torch_['step']:.2f} (step)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    command = "python -m benchmarks.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command}\none training step (SGD momentum 0.9, cross-entropy, training mode), batch {args.batch}, "
          f"{args.size}x{args.size}, float32, each in a fresh process after a warm-up step at batch 1; "
          f"tinycnn's allocator {'tuned' if args.tune_allocator else 'untouched'}; "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    for network in args.networks:
        for framework in args.frameworks:
            row = measure(network, framework, args)
            print(f"  {network} {framework}: baseline {row['baseline'] / MIB:.0f} MiB, raw peak "
                  f"{row['peak'] / MIB:.0f} MiB, step {row['step'] / MIB:.0f} MiB", flush=True)
            rows.append(row)
    print("\n" + table(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(dict(command=command, rows=rows), file, indent=1)


if __name__ == "__main__":
    main()
