"""The scaling part of benchmarks/run.py (`python -m benchmarks.run --only scaling`): how the cost of
a training step grows with the batch (issue 14, point 5), tinycnn beside PyTorch.

    LeNet 20-50-500 on MNIST (1x28x28; its torch twin in benchmarks/twins.py) and ResNet-18 on
    3x32x32 (10 classes; torchvision's, with the same weights), one SGD step (momentum 0.9:
    zero_grad, forward, cross-entropy, backward, update) in training mode, at batch 1, 4, 16, 64,
    256 and 1024 (`--scaling-batches` to choose others).

A row gives ms per step and images/s of both frameworks, as the zoo part does (median over
alternating rounds, benchmarks.run.interleaved_rounds). Each round times
min(--steps, IMAGES_PER_ROUND // batch) steps, at least one, so batch 1024 costs about as much per
round as batch 256. Throughput should never fall as the batch grows (the step's fixed cost is
spread over more images; a fall means the work stopped fitting somewhere, a cliff): a batch at
which a framework's images/s is below what it reached at the batch before is flagged in its row's
note, and listed at the end of the part.

ResNet-18 on 32x32 cannot train at batch 1 in either framework: its last stage is 1x1, so its
BatchNorm would see one value per channel. That batch is skipped with a note.
"""
import gc

import torch

import tinycnn
from benchmarks.run import interleaved_rounds, mnist_batch, output_difference, random_batch, summarise, training_step, \
    with_kernels
from benchmarks.zoo import MNIST, ZooCase, build_pair

DEFAULT_BATCHES = (1, 4, 16, 64, 256, 1024)
IMAGES_PER_ROUND = 256
NETWORKS = (
    ZooCase("lenet", "lenet", "twin:lenet", "train", 0, MNIST),
    ZooCase("resnet18", "resnet18", "resnet18", "train", 0, (3, 32, 32), {"num_classes": 10}),
)
# ResNet-18's 32x32 input is 1x1 after its last stage (stride 32): batch 1 leaves BatchNorm one value.
SMALLEST_TRAINABLE_BATCH = {"lenet": 1, "resnet18": 2}


def batch_data(network, batch):
    if network.network == "lenet":
        return mnist_batch(batch)
    return random_batch(batch, network.input_shape, network.kwargs["num_classes"])


def falls(images_per_second):
    """[(previous batch, batch)] where images/s is below the largest reached at a smaller batch:
    {batch: images/s} in increasing batch order."""
    best_batch, cliffs = None, []
    for batch, rate in images_per_second.items():
        if best_batch is not None and rate < images_per_second[best_batch]:
            cliffs.append((best_batch, batch))
        if best_batch is None or rate >= images_per_second[best_batch]:
            best_batch = batch
    return cliffs


def time_network(results, args, network, batches):
    """Time one network's training step at every batch; return {framework label: {batch: images/s}}."""
    tiny_model, torch_model = build_pair(network)
    smallest = SMALLEST_TRAINABLE_BATCH[network.network]
    x, t = batch_data(network, 8)  # the check in training mode: 8 values per channel at the 1x1 stage
    difference = output_difference(tiny_model, torch_model, tinycnn.tensor(x), torch.from_numpy(x))
    rates = {}
    for batch in batches:
        label = f"{network.network} train {'x'.join(map(str, network.input_shape[1:]))}, batch {batch}"
        if batch < smallest:
            print(f"  {label}: skipped (at batch {batch} BatchNorm of the 1x1 last stage sees one value per channel)",
                  flush=True)
            continue
        # Each batch from the same initial weights. Carried over from batch to batch, the networks
        # fitted batch 1's one image in its hundreds of warm-up and timed steps, and at batch 4 both
        # frameworks' losses went to NaN within 29 steps (run 10 printed NumPy's overflow warning):
        # the larger batches were timed on NaNs.
        tiny_model, torch_model = build_pair(network)
        x, t = batch_data(network, batch)
        tiny_x, tiny_t, torch_x, torch_t = tinycnn.tensor(x), tinycnn.tensor(t), torch.from_numpy(x), torch.from_numpy(t)
        runs = {f"tinycnn {k}": with_kernels(k, training_step("tinycnn", tiny_model, tiny_x, tiny_t))
                for k in args.kernels}
        runs["torch"] = training_step("torch", torch_model, torch_x, torch_t)
        steps = max(1, min(args.steps, IMAGES_PER_ROUND // batch))
        times = summarise(interleaved_rounds(runs, args.repeat, steps, warmup=1))
        torch_s, torch_best = times["torch"]
        for run_label, (seconds, _) in times.items():
            rates.setdefault(run_label, {})[batch] = batch / seconds
        for run_label, (seconds, best) in times.items():
            if run_label == "torch":
                continue
            flags = [f"{who} images/s FALLS from batch {previous}" for who in (run_label, "torch")
                     for previous, at in falls(rates[who]) if at == batch]
            results.add("scaling", label, run_label.split()[1], seconds * 1e3, torch_s * 1e3, "ms/step",
                        f"{batch / seconds:.1f} vs {batch / torch_s:.1f} images/s; {steps} step(s)/round; "
                        f"outputs agree to {difference:.0e}" + "".join("; " + flag for flag in flags),
                        best=(best, torch_best))
    return rates


def part_scaling(results, args):
    batches = sorted(args.scaling_batches or DEFAULT_BATCHES)
    print(f"(scaling) LeNet (MNIST) and ResNet-18 (3x32x32) training step against batch size {batches}, "
          f"tinycnn beside torch; a batch whose images/s falls below a smaller batch's is flagged", flush=True)
    results.scaling = {}
    for network in NETWORKS:
        rates = time_network(results, args, network, batches)
        results.scaling[network.network] = {label: {str(b): r for b, r in by_batch.items()}
                                            for label, by_batch in rates.items()}
        for label, by_batch in rates.items():
            cliffs = falls(by_batch)
            listed = ", ".join(f"{at} (below batch {previous})" for previous, at in cliffs)
            print(f"  {network.network} {label}: images/s " + ", ".join(f"{b}: {r:.0f}" for b, r in by_batch.items())
                  + (f"; FALLS at batch {listed}" if cliffs else "; never falls"), flush=True)
        gc.collect()
