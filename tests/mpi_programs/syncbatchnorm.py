"""Run under `mpiexec -n 2`: SyncBatchNorm on each process's shard equals torch's BatchNorm on the
global batch, forward and backward, in float64.

The global batch is split unevenly (rank 0 takes the first rows, rank 1 the rest), so the
statistics must weigh each process by its count. Rank 0 prints the largest difference of each
quantity; tests/test_distributed.py reads these lines.
"""
import numpy as np
import torch

import tinycnn
from tinycnn import distributed, nn


def check(group, shape, split):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3 + 1.5  # a mean far from 0, as after a ReLU
    gy = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    rows = slice(0, split) if group.rank == 0 else slice(split, shape[0])

    layer = nn.SyncBatchNorm(shape[1], momentum=0.3).double()
    layer.weight.data[...] = gamma
    layer.bias.data[...] = beta
    x_local = tinycnn.Tensor(x[rows].copy(), requires_grad=True)
    y_local = layer(x_local)
    y_local.backward(gy[rows])
    layer.eval()
    y_eval = layer(tinycnn.Tensor(x[rows].copy())).data

    torch_layer = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(shape[1], momentum=0.3).double()
    with torch.no_grad():
        torch_layer.weight[...] = torch.from_numpy(gamma)
        torch_layer.bias[...] = torch.from_numpy(beta)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = torch_layer(x_torch)
    y_torch.backward(torch.from_numpy(gy))
    torch_layer.eval()
    y_torch_eval = torch_layer(torch.from_numpy(x)).detach().numpy()

    # The parameter gradients are each process's share: summed over the processes they are the
    # global batch's.
    ggamma = group.all_reduce_sum(layer.weight.grad.copy())
    gbeta = group.all_reduce_sum(layer.bias.grad.copy())
    differences = {
        "y": np.abs(y_local.data - y_torch.detach().numpy()[rows]).max(),
        "gx": np.abs(x_local.grad - x_torch.grad.numpy()[rows]).max(),
        "ggamma": np.abs(ggamma - torch_layer.weight.grad.numpy()).max(),
        "gbeta": np.abs(gbeta - torch_layer.bias.grad.numpy()).max(),
        "running_mean": np.abs(layer.running_mean - torch_layer.running_mean.numpy()).max(),
        "running_var": np.abs(layer.running_var - torch_layer.running_var.numpy()).max(),
        "eval y": np.abs(y_eval - y_torch_eval[rows]).max(),
    }
    worst = group.broadcast_object(differences if group.rank == 1 else None, root=1)
    if group.rank == 0:
        for name, value in differences.items():
            print(f"shape {shape} split {split}: {name} max |difference| {max(value, worst[name]):.3e}", flush=True)


def main():
    group = distributed.init(timeout_s=60)
    assert group.world_size == 2, group
    check(group, (7, 3, 4, 5), split=5)
    check(group, (10, 4), split=3)
    group.barrier()


if __name__ == "__main__":
    main()
