"""Run under `mpiexec -n 2 ... dead_rank.py MODE`: rank 1 fails at its third step, and rank 0 must
not hang in the gradient all-reduce.

MODE raise   rank 1 raises an exception (its process ends without MPI_Abort; rank 0's watchdog
             must end the job after the 3 s collective timeout)
     hang    rank 1 stalls (sleeps far longer than the timeout): the same watchdog
     kill    rank 1 is killed by SIGKILL, as by the out-of-memory killer: mpiexec ends the job
"""
import os
import signal
import sys
import time

import numpy as np

import tinycnn
import tinycnn.functional as F
from tinycnn import distributed, nn, optim

TIMEOUT_S = 3.0


def main():
    mode = sys.argv[1]
    # A long timeout while the processes start (one may import tinycnn seconds after the other on
    # a busy machine), the short one from the first step on.
    group = distributed.init(timeout_s=60)
    tinycnn.manual_seed(0)
    model = nn.Linear(8, 4)
    data_parallel = distributed.DataParallel(model)
    group.barrier()
    group.timeout_s = TIMEOUT_S
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(group.rank)
    for step in range(5):
        if group.rank == 1 and step == 2:
            print(f"rank 1: failing ({mode}) at step {step}", flush=True)
            if mode == "raise":
                raise RuntimeError("rank 1 failed on purpose")
            if mode == "hang":
                time.sleep(120)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        x = tinycnn.Tensor(rng.standard_normal((16, 8)).astype(np.float32))
        loss = F.cross_entropy(model(x), rng.integers(0, 4, 16))
        optimizer.zero_grad()
        loss.backward()
        data_parallel.synchronize()
        optimizer.step()
        print(f"rank {group.rank}: step {step} done", flush=True)
    print(f"rank {group.rank}: finished all steps (it should not)", flush=True)


if __name__ == "__main__":
    main()
