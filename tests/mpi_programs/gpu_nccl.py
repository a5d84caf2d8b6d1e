"""Run under `mpiexec -n 1` on a GPU machine: tinycnn.distributed over NCCL with a world of one.

One GPU cannot hold a two-rank NCCL communicator (NCCL refuses two ranks on one device), so this
checks what one rank can: the communicator is made (unique id broadcast over MPI), an all-reduce
and a broadcast of CuPy arrays go through NCCL and leave the arrays as they were, DataParallel's
buckets round-trip LeNet's gradients exactly, and SyncBatchNorm over the NCCL group equals
BatchNorm. Prints 'what: max |difference| X' lines for tests/test_distributed.py.
"""
import numpy as np

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import backend, distributed, nn


def main():
    cupy = backend.cupy
    group = distributed.init(timeout_s=60, gpu_transport="nccl")
    assert group.world_size == 1, group
    values = cupy.arange(12, dtype=cupy.float64).reshape(3, 4)
    assert group._transport(values) == "nccl"
    summed = group.all_reduce_sum(values.copy())
    assert group._nccl is not None, "no NCCL communicator was made"
    print(f"NCCL all-reduce: max |difference| {float(abs(summed - values).max()):.3e}", flush=True)
    broadcast = group.broadcast(values.copy(), root=0)
    print(f"NCCL broadcast: max |difference| {float(abs(broadcast - values).max()):.3e}", flush=True)

    tinycnn.manual_seed(0)
    model = models.create("lenet").to("gpu")
    data_parallel = distributed.DataParallel(model, group)
    rng = np.random.default_rng(0)
    x = tinycnn.Tensor(cupy.asarray(rng.standard_normal((8, 1, 28, 28)).astype(np.float32)))
    loss = F.cross_entropy(model(x), cupy.asarray(rng.integers(0, 10, 8)))
    loss.backward()
    before = [p.grad.copy() for p in model.parameters()]
    data_parallel.synchronize()
    worst = max(float(abs(p.grad - g).max()) for p, g in zip(model.parameters(), before))
    print(f"DataParallel gradients over NCCL: max |difference| {worst:.3e}", flush=True)

    x = cupy.asarray(rng.standard_normal((6, 3, 4, 4)) * 2 + 1)
    gy = cupy.asarray(rng.standard_normal(x.shape))
    outputs = []
    for layer in (nn.SyncBatchNorm(3, group=group).double().to("gpu"), nn.BatchNorm2d(3).double().to("gpu")):
        t = tinycnn.Tensor(x.copy(), requires_grad=True)
        y = layer(t)
        y.backward(gy)
        outputs.append((y.data, t.grad, layer.weight.grad, layer.running_var))
    for name, a, b in zip(("y", "gx", "ggamma", "running_var"), *outputs):
        print(f"SyncBatchNorm over NCCL {name}: max |difference| {float(abs(a - b).max()):.3e}", flush=True)


if __name__ == "__main__":
    main()
