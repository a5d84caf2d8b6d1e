"""Per-layer A/B of the Numba backend's convolutions of small outputs: im2col against the tap
products (kernels/cpu_conv_taps.py), with PyTorch's time in the same rounds.

    python -m benchmarks.conv_taps [--repeat R]

For each convolution of ResNet-18 on 3x32x32 images (batch 32) whose output is 4x4 or smaller,
times tinycnn.kernels.cpu.conv2d_forward, and conv2d_backward (dx and dW, as a layer inside a
network needs them), with the tap products off (kernels/cpu_conv.py's TAPS flag) and on for every
layer (TAPS_FORWARD_LIVE and TAPS_BACKWARD_LIVE raised to 1, whatever the rule says), and
torch's aten.convolution and aten.convolution_backward on the same arrays, in alternating rounds
(off, on, torch, then the reverse) so that a change in the machine's load hits all three alike. It
prints the median of each, milliseconds, and the ratios taps/im2col and taps/torch. `live` is the
share of im2col's multiply-adds that read the input rather than padding; `routed` says whether the
rule in kernels/cpu_conv.py sends the layer's forward or backward to the taps. The rule was set from these figures.
"""
import argparse
import time

import numpy as np

# (name, N, C, OC, H=W, kernel, stride, padding): ResNet-18's layers on 32x32 images with small
# outputs, and its 8x8 layers, which the rule keeps on Winograd's and im2col's paths.
LAYERS = (
    ("64-64-8", 32, 64, 64, 8, 3, 1, 1),
    ("64-128-8-s2", 32, 64, 128, 8, 3, 2, 1),
    ("128-128-4", 32, 128, 128, 4, 3, 1, 1),
    ("128-256-4-s2", 32, 128, 256, 4, 3, 2, 1),
    ("256-256-2", 32, 256, 256, 2, 3, 1, 1),
    ("256-512-2-s2", 32, 256, 512, 2, 3, 2, 1),
    ("512-512-1", 32, 512, 512, 1, 3, 1, 1),
)


def _median_times(calls, repeat, steps):
    """Median seconds per call of each (setting, call) over `repeat` alternating rounds of `steps`."""
    from tinycnn.kernels import cpu_conv
    rule = cpu_conv.TAPS_FORWARD_LIVE, cpu_conv.TAPS_BACKWARD_LIVE
    times = [[] for _ in calls]
    for round_index in range(repeat):
        order = range(len(calls)) if round_index % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            taps, call = calls[k]
            cpu_conv.TAPS = taps
            cpu_conv.TAPS_FORWARD_LIVE, cpu_conv.TAPS_BACKWARD_LIVE = (1.0, 1.0) if taps else rule  # on: every layer
            call()  # untimed: the other setting's call ran last
            start = time.perf_counter()
            for _ in range(steps):
                call()
            times[k].append((time.perf_counter() - start) / steps)
    cpu_conv.TAPS = True
    cpu_conv.TAPS_FORWARD_LIVE, cpu_conv.TAPS_BACKWARD_LIVE = rule
    return [float(np.median(t)) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--steps", type=int, default=10, help="calls timed per round (default 10)")
    args = parser.parse_args(argv)
    import torch
    from tinycnn.kernels import cpu, cpu_conv
    from tinycnn.kernels.cpu_conv_taps import live_fraction
    print(f"torch threads {torch.get_num_threads()}; median ms of {args.repeat} rounds of {args.steps} calls")
    print(f"{'layer':14s} {'live':>5s} {'routed':>6s} {'pass':>8s} {'im2col':>8s} {'taps':>8s} {'torch':>8s}"
          f" {'taps/im2col':>11s} {'taps/torch':>10s}")
    rng = np.random.default_rng(0)
    for name, N, C, OC, H, K, S, P in LAYERS:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        W = rng.standard_normal((OC, C, K, K), dtype=np.float32) * np.float32((2 / (C * K * K)) ** 0.5)
        y = cpu.conv2d_forward(x, W, None, S, S, P, P, 1, 1, 1)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        tx, tW, tgy = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(gy)
        live = live_fraction(H, y.shape[2], K, S, P, 1) ** 2
        passes = {
            "forward": (lambda: cpu.conv2d_forward(x, W, None, S, S, P, P, 1, 1, 1),
                        lambda: torch.ops.aten.convolution(tx, tW, None, [S, S], [P, P], [1, 1], False, [0, 0], 1)),
            "backward": (lambda: cpu.conv2d_backward(gy, x, W, S, S, P, P, 1, 1, 1, (True, True, False)),
                         lambda: torch.ops.aten.convolution_backward(tgy, tx, tW, None, [S, S], [P, P], [1, 1], False,
                                                                     [0, 0], 1, [True, True, False])),
        }
        for label, (ours, theirs) in passes.items():
            suits = cpu_conv._taps_suit(x.shape, W.shape, S, S, P, P, 1, 1, 1, backward=label == "backward")
            routed = "taps" if suits else "-"
            calls = [(False, ours), (True, ours), (True, theirs)]
            im2col, taps, torch_s = _median_times(calls, args.repeat, args.steps)
            print(f"{name:14s} {live:5.2f} {routed:>6s} {label:>8s} {im2col * 1e3:8.3f} {taps * 1e3:8.3f}"
                  f" {torch_s * 1e3:8.3f} {taps / im2col:11.2f} {taps / torch_s:10.2f}")


if __name__ == "__main__":
    main()
