"""Per-layer A/B of the Numba backend's 3x3 convolutions: im2col against Winograd (F(2x2, 3x3), and
F(4x4, 3x3) from 16x16 outputs on, as kernels/cpu_conv.py's _winograd_tile picks).

    python -m benchmarks.winograd [--layers PREFIX,...] [--repeat R] [--backward]

For each 3x3 stride-1 layer of VGG-16 (batch 4), ResNet-50 and DenseNet-121 (batch 8) at 224x224
input, times tinycnn.kernels.cpu.conv2d_forward with Winograd off (kernels/cpu_conv.py's WINOGRAD
flag) and on, in alternating rounds (off, on, on, off, ...) so that a change in the machine's load
hits both alike, and prints the minimum of each and their ratio (below 1: Winograd faster).
`routed` says which path the rule in kernels/cpu_conv.py picks; where it is im2col, both columns
time im2col. With --backward, conv2d_backward (dx, dW, db) too, in three settings: before
(Winograd off), Winograd on but WINOGRAD_INPUT_GRADIENT off (dx by col2im where OC >= C), and both
on (dx as a Winograd convolution of gy); the ratio is the better of the last two against before.
The rule was set from these figures.
"""
import argparse
import time

import numpy as np

# (name, N, C, OC, H=W), padding 1: every distinct 3x3 stride-1 layer of the three networks.
LAYERS = (
    ("vgg16-3-64-224", 4, 3, 64, 224),
    ("vgg16-64-64-224", 4, 64, 64, 224),
    ("vgg16-64-128-112", 4, 64, 128, 112),
    ("vgg16-128-128-112", 4, 128, 128, 112),
    ("vgg16-128-256-56", 4, 128, 256, 56),
    ("vgg16-256-256-56", 4, 256, 256, 56),
    ("vgg16-256-512-28", 4, 256, 512, 28),
    ("vgg16-512-512-28", 4, 512, 512, 28),
    ("vgg16-512-512-14", 4, 512, 512, 14),
    ("resnet50-64-64-56", 8, 64, 64, 56),
    ("resnet50-128-128-28", 8, 128, 128, 28),
    ("resnet50-256-256-14", 8, 256, 256, 14),
    ("resnet50-512-512-7", 8, 512, 512, 7),
    ("densenet121-128-32-56", 8, 128, 32, 56),
    ("densenet121-128-32-28", 8, 128, 32, 28),
    ("densenet121-128-32-14", 8, 128, 32, 14),
    ("densenet121-128-32-7", 8, 128, 32, 7),
)


def _settings(winograd, input_gradient):
    """Switch kernels/cpu_conv.py's rule: Winograd on or off, dx by Winograd for OC >= C or not."""
    from tinycnn.kernels import cpu_conv
    cpu_conv.WINOGRAD = winograd
    cpu_conv.WINOGRAD_INPUT_GRADIENT = input_gradient


def _min_times(calls, repeat):
    """Minimum seconds of each call over `repeat` alternating rounds (forward, then reversed)."""
    best = [float("inf")] * len(calls)
    for round_index in range(repeat):
        order = range(len(calls)) if round_index % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            settings, call = calls[k]
            _settings(*settings)
            start = time.perf_counter()
            call()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.winograd", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", metavar="PREFIX,...", help="only the layers whose name starts so")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per setting (default 5)")
    parser.add_argument("--backward", action="store_true", help="also time conv2d_backward")
    args = parser.parse_args(argv)
    prefixes = args.layers.split(",") if args.layers else None
    layers = [layer for layer in LAYERS if prefixes is None or any(layer[0].startswith(p) for p in prefixes)]
    if not layers:
        parser.error(f"--layers: no layer starts with {prefixes}; the layers are {', '.join(l[0] for l in LAYERS)}")

    import tinycnn.config
    from tinycnn.kernels import cpu, cpu_conv
    tinycnn.config.tune_allocator()  # as `tinycnn train` and benchmarks/run.py do
    default_input_gradient = cpu_conv.WINOGRAD_INPUT_GRADIENT
    rng = np.random.default_rng(0)
    print(f"{'layer':24s} {'routed':9s} {'forward ms: im2col':>19s} {'winograd':>9s} {'ratio':>6s}"
          + (f"  {'backward ms: before':>20s} {'wino fwd':>9s} {'+ dx':>8s} {'ratio':>6s}" if args.backward else ""))
    try:
        for name, N, C, OC, size in layers:
            x = rng.standard_normal((N, C, size, size)).astype(np.float32)
            W = (rng.standard_normal((OC, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
            b = np.zeros(OC, np.float32)
            window = (1, 1, 1, 1, 1, 1)
            _settings(True, default_input_gradient)
            routed = "winograd" if cpu_conv._winograd_suits(x.shape, W.shape, *window, 1) else "im2col"

            def forward():
                cpu.conv2d_forward(x, W, b, *window, 1)
            calls = [((False, False), forward), ((True, True), forward)]
            for settings, call in calls:  # warm-up: compile, pool threads, allocator
                _settings(*settings)
                call()
            before, after = _min_times(calls, args.repeat)
            line = f"{name:24s} {routed:9s} {before * 1e3:19.2f} {after * 1e3:9.2f} {after / before:6.2f}"
            if args.backward:
                gy = rng.standard_normal((N, OC, size, size)).astype(np.float32)

                def backward():
                    cpu.conv2d_backward(gy, x, W, *window, 1)
                calls = [((False, False), backward), ((True, False), backward), ((True, True), backward)]
                for settings, call in calls:
                    _settings(*settings)
                    call()
                times = _min_times(calls, args.repeat)
                line += (f"  {times[0] * 1e3:20.2f} {times[1] * 1e3:9.2f} {times[2] * 1e3:8.2f}"
                         f" {min(times[1:]) / times[0]:6.2f}")
            print(line, flush=True)
    finally:
        _settings(True, default_input_gradient)

if __name__ == "__main__":
    main()
