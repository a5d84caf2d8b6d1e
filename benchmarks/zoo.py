"""The zoo part of benchmarks/run.py (`python -m benchmarks.run --only zoo`): the networks people
pick from the zoo, timed side by side with torchvision's models given the same weights (issue 14's
table), as the ratio tinycnn / torch.

    LeNet 20-50-500 training at batch 1, 16, 64, 256 and 1024 (MNIST; its twin in benchmarks/twins.py,
    torchvision has no LeNet); ResNet-18 training on 3x32x32 at batch 32 (10 classes); ResNet-50 and
    DenseNet-121 training at 224x224, batch 8; ResNet-50 (batch 8), VGG-16 (batch 4), DenseNet-121
    (batch 8) inference at 224x224 and Inception v3 inference at 299x299 (batch 4).

Training is one SGD step (momentum 0.9: zero_grad, forward, cross-entropy, backward, update) in
training mode; inference is one forward in eval mode under no_grad in both frameworks. Each case
builds the tinycnn network from the registry, copies its parameters and buffers into torchvision's
(the state_dict keys are the same), checks that both compute the same output, then times them in
alternating rounds (benchmarks.run.interleaved_rounds); a row gives the median over the rounds of
the mean time per step. One case's networks are freed before the next is built.

As users run it: benchmarks/run.py imports NumPy (and torch) before tinycnn, and tinycnn limits
NumPy's OpenBLAS to one thread at its first kernel call (tinycnn/_threading.py).

torchvision's package `__init__` cannot be imported beside the CPU build of torch (its compiled
ops fail to load); tests/torchvision_models.py imports its model files without it, and is reused
here (as the namespace package `tests`, found from the repository root, where `python -m
benchmarks.run` runs).

`--zoo-cases lenet,resnet50-infer` keeps only the cases whose name starts with one of the given
prefixes (ZOO_CASES below has the names).
"""
import gc
from dataclasses import dataclass, field

import torch

import tinycnn
import tinycnn.models
from benchmarks import twins
from benchmarks.run import (interleaved_rounds, mnist_batch, output_difference, random_batch, summarise,
                            training_step, with_kernels)
from tests.torchvision_models import torchvision_models


@dataclass(frozen=True)
class ZooCase:
    name: str  # what --zoo-cases matches
    network: str  # tinycnn registry name
    torch_network: str  # torchvision.models constructor, or "twin:<name>" for benchmarks/twins.py
    mode: str  # "train" or "infer"
    batch: int
    input_shape: tuple
    kwargs: dict = field(default_factory=dict)  # for both constructors


MNIST = (1, 28, 28)
ZOO_CASES = (
    ZooCase("lenet-train-1", "lenet", "twin:lenet", "train", 1, MNIST),
    ZooCase("lenet-train-16", "lenet", "twin:lenet", "train", 16, MNIST),
    ZooCase("lenet-train-64", "lenet", "twin:lenet", "train", 64, MNIST),
    ZooCase("lenet-train-256", "lenet", "twin:lenet", "train", 256, MNIST),
    ZooCase("lenet-train-1024", "lenet", "twin:lenet", "train", 1024, MNIST),
    ZooCase("resnet18-train-32px", "resnet18", "resnet18", "train", 32, (3, 32, 32), {"num_classes": 10}),
    ZooCase("resnet50-train", "resnet50", "resnet50", "train", 8, (3, 224, 224)),
    ZooCase("densenet121-train", "densenet121", "densenet121", "train", 8, (3, 224, 224)),
    ZooCase("resnet50-infer", "resnet50", "resnet50", "infer", 8, (3, 224, 224)),
    ZooCase("vgg16-infer", "vgg16", "vgg16", "infer", 4, (3, 224, 224)),
    ZooCase("densenet121-infer", "densenet121", "densenet121", "infer", 8, (3, 224, 224)),
    # torchvision's own build for its weights has the aux head; eval mode does not run it.
    ZooCase("inception_v3-infer", "inception_v3", "inception_v3", "infer", 4, (3, 299, 299)),
)
TORCHVISION_EXTRA = {"inception_v3": {"aux_logits": True, "init_weights": False}}  # weights are copied in


def select_cases(prefixes):
    """The cases whose name starts with one of `prefixes` (all for None); a prefix matching none
    is an error naming the cases."""
    if prefixes is None:
        return list(ZOO_CASES)
    names = [case.name for case in ZOO_CASES]
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unmatched:
        raise SystemExit(f"benchmarks.run: error: --zoo-cases: no case starts with {unmatched}; "
                         f"the cases are {', '.join(names)}")
    return [case for case in ZOO_CASES if any(case.name.startswith(p) for p in prefixes)]


def build_pair(case):
    """(tinycnn network, torch network with the same parameters and buffers), in the case's mode."""
    tinycnn.manual_seed(0)
    tiny_model = tinycnn.models.create(case.network, **case.kwargs)
    if case.torch_network.startswith("twin:"):
        torch_model = twins.TWINS[case.torch_network[len("twin:"):]](**case.kwargs)
    else:
        constructor = getattr(torchvision_models(), case.torch_network)
        torch_model = constructor(weights=None, **case.kwargs, **TORCHVISION_EXTRA.get(case.torch_network, {}))
    twins.copy_weights(tiny_model, torch_model)
    training = case.mode == "train"
    return tiny_model.train(training), torch_model.train(training)


def inference_step(framework, model, x):
    """A closure running one forward under the framework's no_grad."""
    no_grad = tinycnn.no_grad if framework == "tinycnn" else torch.no_grad

    def step():
        with no_grad():
            return model(x)

    return step


def time_case(results, args, case):
    if case.network == "lenet":
        x, t = mnist_batch(case.batch)
    else:
        x, t = random_batch(case.batch, case.input_shape, case.kwargs.get("num_classes", 1000))
    tiny_model, torch_model = build_pair(case)
    tiny_x, tiny_t, torch_x, torch_t = tinycnn.tensor(x), tinycnn.tensor(t), torch.from_numpy(x), torch.from_numpy(t)
    with tinycnn.no_grad(), torch.no_grad():
        difference = output_difference(tiny_model, torch_model, tiny_x, torch_x)
    if case.mode == "train":
        runs = {f"tinycnn {k}": with_kernels(k, training_step("tinycnn", tiny_model, tiny_x, tiny_t))
                for k in args.kernels}
        runs["torch"] = training_step("torch", torch_model, torch_x, torch_t)
    else:
        runs = {f"tinycnn {k}": with_kernels(k, inference_step("tinycnn", tiny_model, tiny_x)) for k in args.kernels}
        runs["torch"] = inference_step("torch", torch_model, torch_x)
    times = summarise(interleaved_rounds(runs, args.repeat, args.steps))
    torch_s, torch_best = times["torch"]
    side = "x".join(str(s) for s in case.input_shape[1:])
    label = f"{case.network} {'train' if case.mode == 'train' else 'inference'} {side}, batch {case.batch}"
    for run_label, (seconds, best) in times.items():
        if run_label != "torch":
            results.add("zoo", label, run_label.split()[1], seconds * 1e3, torch_s * 1e3, "ms/step",
                        f"{case.batch / seconds:.1f} vs {case.batch / torch_s:.1f} images/s; "
                        f"outputs agree to {difference:.0e}", best=(best, torch_best))


def part_zoo(results, args):
    cases = select_cases(args.zoo_cases)
    print(f"(zoo) issue 14's table against torchvision's models with the same weights (LeNet: its twin); "
          f"train = one SGD step (momentum 0.9), inference = eval + no_grad forward; NumPy imported before "
          f"tinycnn; {len(cases)} case(s): {', '.join(case.name for case in cases)}", flush=True)
    for case in cases:
        time_case(results, args, case)
        gc.collect()  # free this case's networks (VGG-16: 0.5 GiB of weights each) before the next
