"""Run under `mpiexec -n 2 ... equivalence.py [cpu|gpu] [auto|mpi|nccl]`: 2 processes x batch 32
against 1 process x batch 64 on the same samples, on the CPU (default) or with CuPy arrays on the
GPU, their gradients carried by the transport named (default auto: tinycnn.distributed.choose_transport).

Both runs take 20 SGD-momentum steps on LeNet from the same start, on a synthetic data set of
20 * 64 images shuffled by the same DataLoader seed; the two-process run shards each epoch with
DistributedSampler and averages gradients with DataParallel. Rank 0 also runs the one-process
reference and prints, per dtype, the largest difference of any weight between the two runs and
between the two processes' copies. tests/test_distributed.py reads these lines.
"""
import sys

import numpy as np

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import backend, data, distributed, nn, optim
from tinycnn.autograd import Parameter

STEPS, GLOBAL_BATCH, SEED = 20, 64, 7
DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cpu"
TRANSPORT = sys.argv[2] if len(sys.argv) > 2 else "auto"


def make_dataset(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS * GLOBAL_BATCH, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, STEPS * GLOBAL_BATCH)
    return data.TensorDataset(x, y)


def train(dtype, loader, init_seed, data_parallel_group=None):
    tinycnn.manual_seed(init_seed)
    model = models.create("lenet")
    if dtype == np.float64:
        model.double()
    if DEVICE == "gpu":
        model.to("gpu")
    data_parallel = None if data_parallel_group is None else distributed.DataParallel(model, data_parallel_group)
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = 0
    for x, y in loader:
        x, y = (backend.to_device(x, DEVICE), backend.to_device(y, DEVICE)) if DEVICE == "gpu" else (x, y)
        loss = F.cross_entropy(model(tinycnn.Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        if data_parallel is not None:
            data_parallel.synchronize()
        optimizer.step()
        steps += 1
    assert steps == STEPS, steps
    return model, optimizer


class TwoHeads(nn.Module):
    """Head b is used on rank 1 only, `unused` nowhere: what DataParallel does with missing gradients."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)
        self.unused = Parameter(np.zeros(4, dtype=np.float32))

    def forward(self, x, use_b):
        return self.a(x) + self.b(x) if use_b else self.a(x)


def check_missing_gradients(group):
    """A gradient only one process has is averaged with zeros from the others (as if they had
    computed a zero gradient); a parameter no process used keeps grad None."""
    tinycnn.manual_seed(0)
    model = TwoHeads()
    data_parallel = distributed.DataParallel(model, group)
    x = tinycnn.Tensor(np.random.default_rng(group.rank).standard_normal((4, 3)).astype(np.float32))
    model(x, use_b=group.rank == 1).sum().backward()
    local_b = None if model.b.weight.grad is None else model.b.weight.grad.copy()
    rank_1_b = group.broadcast_object(local_b, root=1)
    data_parallel.synchronize()
    difference = float(np.abs(model.b.weight.grad - rank_1_b / group.world_size).max())
    unused = group.broadcast_object(model.unused.grad is None, root=1) and model.unused.grad is None
    if group.rank == 0:
        print(f"gradient of rank 1 only: max |difference| {difference:.3e}", flush=True)
        print(f"unused parameter keeps grad None on both ranks: {unused}", flush=True)


def check_dropout_streams(group):
    """start_epoch gives each process its own stream of tinycnn's generator, the same every time
    for one (seed, rank, epoch): what a resumed run needs to draw the masks of the run it continues."""
    data_parallel = distributed.DataParallel(nn.Linear(2, 2), group, seed=5)
    data_parallel.start_epoch(3)
    first = tinycnn.random.generator().random(4)
    data_parallel.start_epoch(3)
    again = tinycnn.random.generator().random(4)
    other = group.broadcast_object(first, root=1)
    if group.rank == 0:
        print(f"dropout stream of epoch 3: reproducible {np.array_equal(first, again)}, "
              f"differs between ranks {not np.array_equal(first, other)}", flush=True)


def max_difference(a, b):
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


def main():
    group = distributed.init(timeout_s=60, gpu_transport=TRANSPORT)
    assert group.world_size == 2, group
    for dtype in (np.float64, np.float32):
        dataset = make_dataset(dtype)
        sampler = distributed.DistributedSampler(seed=SEED)
        loader = data.DataLoader(dataset, batch_size=GLOBAL_BATCH // group.world_size, shuffle=True, sampler=sampler)
        # Each rank starts from its own weights: DataParallel must broadcast rank 0's.
        model, optimizer = train(dtype, loader, init_seed=1 + group.rank, data_parallel_group=group)
        weights = {name: backend.to_cpu(p.data).copy() for name, p in model.named_parameters()}
        other = group.broadcast_object(weights if group.rank == 1 else None, root=1)
        # The optimizer state on resume: rank 1 forgets its momentum, then takes rank 0's.
        if group.rank == 1:
            optimizer.state = {}
        distributed.broadcast_optimizer_state(optimizer, group)
        momentum = {str(i): backend.to_cpu(optimizer.state[p]["momentum_buffer"])
                    for i, p in enumerate(model.parameters())}
        other_momentum = group.broadcast_object(momentum if group.rank == 1 else None, root=1)
        if group.rank == 0:
            reference_loader = data.DataLoader(dataset, batch_size=GLOBAL_BATCH, shuffle=True, seed=SEED)
            reference, _ = train(dtype, reference_loader, init_seed=1)
            expected = {name: backend.to_cpu(p.data) for name, p in reference.named_parameters()}
            scale = max(float(np.abs(w).max()) for w in expected.values())
            print(f"{np.dtype(dtype).name} vs one process: max |difference| {max_difference(weights, expected):.3e} "
                  f"(weights up to {scale:.3f})", flush=True)
            print(f"{np.dtype(dtype).name} rank 0 vs rank 1: max |difference| {max_difference(weights, other):.3e}",
                  flush=True)
            print(f"{np.dtype(dtype).name} momentum rank 0 vs rank 1 after broadcast_optimizer_state: "
                  f"max |difference| {max_difference(momentum, other_momentum):.3e}", flush=True)
    check_missing_gradients(group)
    check_dropout_streams(group)
    group.barrier()


if __name__ == "__main__":
    main()
