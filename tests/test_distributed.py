"""tinycnn.distributed and nn.SyncBatchNorm.

In this process: DistributedSampler's shards, the DataLoader with a sampler, the transport choice,
the buckets, SyncBatchNorm of one process against torch. Under `mpiexec -n 2` (programs in
tests/mpi_programs/, launched as subprocesses with a timeout): 2 processes x batch 32 against 1 x
64, SyncBatchNorm against torch's BatchNorm on the global batch, a dying rank, and `tinycnn train
--distributed`. The MPI tests skip only where mpi4py or mpiexec is missing; CI installs both (the
extra `distributed`).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import tinycnn
from tinycnn import cli, data, distributed, nn
from tinycnn.gradcheck import gradcheck

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "mpi_programs")
DATA = os.environ.get("TINYCNN_DATA") or os.path.join(HERE, "..", "..", "shared", "data")


def find_mpiexec():
    """mpiexec on the PATH, or beside this Python (where `pip install mpich` puts it)."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return shutil.which("mpiexec") or (beside if os.path.exists(beside) else None)


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                               reason="needs mpi4py and mpiexec: pip install '.[distributed]' (CI does)")


def mpirun(*args, processes=2, timeout=90):
    """Run `mpiexec -n processes ARGS` and return (completed process, seconds it took); one
    thread per process, as the two processes share the machine."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", TINYCNN_DATA=DATA)
    start = time.monotonic()
    result = subprocess.run([MPIEXEC, "-n", str(processes), *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
    return result, time.monotonic() - start


def differences(output):
    """{what: X} of each line 'what: max |difference| X' (or 'what max |difference| X')."""
    found = {}
    for line in output.splitlines():
        if "max |difference|" in line:
            what, value = line.rsplit(" max |difference| ", 1)
            found[what.rstrip(":")] = float(value.split()[0])
    return found


# DistributedSampler and the DataLoader, in this process

@given(n=st.integers(0, 60), replicas=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_shards_cover_the_order_exactly_with_documented_padding(n, replicas, seed):
    order = np.random.default_rng(seed).permutation(n)
    shards = [distributed.DistributedSampler(replicas, rank, seed=0).shard(order) for rank in range(replicas)]
    per_process = -(-n // replicas)
    assert all(len(shard) == per_process for shard in shards)
    # Interleaved back (process r's k-th item is item k * R + r), they are the order, then its
    # first items again as padding: none dropped, at most R - 1 repeated.
    interleaved = np.stack(shards, axis=1).reshape(-1) if n else np.array([], dtype=order.dtype)
    padding = per_process * replicas - n
    assert padding < replicas
    np.testing.assert_array_equal(interleaved, np.concatenate([order, order[:padding]]))


def test_loader_with_sampler_gives_each_process_its_share_of_the_global_batch():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    dataset = data.TensorDataset(x, np.arange(100))
    single = list(data.DataLoader(dataset, batch_size=20, shuffle=True, seed=3))
    shares = [list(data.DataLoader(dataset, batch_size=10, shuffle=True,
                                   sampler=distributed.DistributedSampler(2, rank, seed=3))) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(single) == 5
    for i, (global_x, _) in enumerate(single):
        np.testing.assert_array_equal(global_x[0::2], shares[0][i][0])
        np.testing.assert_array_equal(global_x[1::2], shares[1][i][0])


def test_loader_with_sampler_pads_and_counts_batches_per_process():
    dataset = data.TensorDataset(np.arange(7, dtype=np.float32), np.arange(7))
    loaders = [data.DataLoader(dataset, batch_size=2, sampler=distributed.DistributedSampler(3, rank, seed=0))
               for rank in range(3)]
    assert [len(loader) for loader in loaders] == [2, 2, 2]  # ceil(7 / 3) = 3 items each
    seen = np.concatenate([np.concatenate([y for _, y in loader]) for loader in loaders])
    assert sorted(seen.tolist()) == [0, 0, 1, 1, 2, 3, 4, 5, 6]  # items 0 and 1 pad the last shards


def test_each_process_draws_its_own_augmentation():
    def noise(x, rng):
        return x + rng.standard_normal(x.shape)
    dataset = data.TensorDataset(np.zeros((8, 1)), np.arange(8), transform=noise)
    samplers = [distributed.DistributedSampler(2, rank, seed=1) for rank in range(2)]
    batches = [next(iter(data.DataLoader(dataset, batch_size=4, sampler=sampler))) for sampler in samplers]
    assert not np.allclose(batches[0][0], batches[1][0])


def test_sampler_without_group_or_numbers_says_to_call_init():
    with pytest.raises(distributed.DistributedError, match=r"DistributedSampler: no process group; call "
                                                           r"tinycnn.distributed.init\(\)"):
        distributed.DistributedSampler()
    with pytest.raises(ValueError, match="rank 2 of 2"):
        distributed.DistributedSampler(2, 2, seed=0)


# Transport choice and buckets, in this process

@pytest.mark.parametrize("device, setting, nccl, expected", [
    ("cpu", "auto", True, "mpi"), ("cpu", "nccl", True, "mpi"), ("gpu", "auto", True, "nccl"),
    ("gpu", "auto", False, "mpi"), ("gpu", "mpi", True, "mpi"), ("gpu", "nccl", True, "nccl")])
def test_choose_transport(device, setting, nccl, expected):
    assert distributed.choose_transport(device, setting, nccl) == expected


def test_choose_transport_refuses_nccl_where_there_is_none():
    with pytest.raises(distributed.DistributedError, match="gpu_transport='nccl' needs cupy.cuda.nccl"):
        distributed.choose_transport("gpu", "nccl", False)
    with pytest.raises(distributed.DistributedError, match="must be 'auto', 'nccl' or 'mpi', got 'gloo'"):
        distributed.choose_transport("cpu", "gloo", False)


def test_buckets_split_by_size_and_dtype():
    parameters = [tinycnn.autograd.Parameter(np.zeros(n, dtype=dtype))
                  for n, dtype in [(100, np.float32), (100, np.float32), (300, np.float32), (10, np.float64)]]
    buckets = distributed.make_buckets(parameters, bucket_bytes=800)
    assert [[p.size for p in bucket] for bucket in buckets] == [[100, 100], [300], [10]]


# SyncBatchNorm in one process: a BatchNorm

@given(shape=st.sampled_from([(3, 2), (2, 3, 2, 2), (4, 2, 3)]), seed=st.integers(0, 2**16))
def test_sync_batch_norm_gradcheck_in_one_process(shape, seed):
    rng = np.random.default_rng(seed)
    x = tinycnn.Tensor(rng.standard_normal(shape), requires_grad=True)
    gamma = tinycnn.Tensor(rng.standard_normal(shape[1]), requires_grad=True)
    beta = tinycnn.Tensor(rng.standard_normal(shape[1]), requires_grad=True)
    gradcheck(lambda *t: nn.syncbatchnorm.sync_batch_norm(t[0], None, None, t[1], t[2]), (x, gamma, beta))


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_sync_batch_norm_in_one_process_equals_torch(dtype, tolerance):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 3, 4, 4)) * 2 + 1).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    ours = nn.SyncBatchNorm(3, momentum=0.2).to(dtype)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.2).to(torch.float64 if dtype == np.float64 else torch.float32)
    x_ours, x_theirs = tinycnn.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    y_ours.backward(gy)
    y_theirs.backward(torch.from_numpy(gy))
    for a, b in [(y_ours.data, y_theirs), (x_ours.grad, x_theirs.grad), (ours.weight.grad, theirs.weight.grad),
                 (ours.bias.grad, theirs.bias.grad), (ours.running_var, theirs.running_var)]:
        np.testing.assert_allclose(a, b.detach().numpy(), atol=tolerance, rtol=tolerance)


def test_convert_sync_batchnorm_keeps_parameters_and_statistics():
    model = tinycnn.models.create("resnet18", num_classes=10)
    model.bn1.running_mean[...] = 3.0
    before = model.state_dict()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted.bn1, nn.SyncBatchNorm) and isinstance(converted.layer1[0].bn2, nn.SyncBatchNorm)
    assert not any(type(m).__name__ == "BatchNorm2d" for m in converted.modules())
    after = converted.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(after[key], before[key]) for key in before)


def test_sync_batch_norm_rejects_a_single_value_per_channel():
    with pytest.raises(ValueError, match="sync_batch_norm: expected more than 1 value per channel"):
        nn.SyncBatchNorm(3)(tinycnn.Tensor(np.zeros((1, 3), dtype=np.float32)))


# Under mpiexec -n 2

@needs_mpi
def test_two_processes_of_32_take_the_steps_of_one_process_of_64():
    result, _ = mpirun(sys.executable, os.path.join(PROGRAMS, "equivalence.py"))
    assert result.returncode == 0, result.stderr
    found = differences(result.stdout)
    assert len(found) == 7, result.stdout
    assert found["float64 vs one process"] <= 1e-10
    assert found["gradient of rank 1 only"] <= 1e-7  # averaged with rank 0's zeros
    assert "unused parameter keeps grad None on both ranks: True" in result.stdout
    assert "dropout stream of epoch 3: reproducible True, differs between ranks True" in result.stdout
    # float32: round-off differs with the batch split. The weights agree to 3e-8 for 14 steps, then
    # jump to 5e-6 at step 15 and grow to 3e-4 by step 20 (the same figures with the two halves'
    # gradients averaged in one process): a max-pool's argmax or a ReLU's sign flipped by round-off.
    assert found["float32 vs one process"] <= 1e-3
    for dtype in ("float64", "float32"):
        assert found[f"{dtype} rank 0 vs rank 1"] == 0  # the copies stay identical
        assert found[f"{dtype} momentum rank 0 vs rank 1 after broadcast_optimizer_state"] == 0


@needs_mpi
def test_sync_batch_norm_over_two_processes_equals_batch_norm_on_the_global_batch():
    result, _ = mpirun(sys.executable, os.path.join(PROGRAMS, "syncbatchnorm.py"))
    assert result.returncode == 0, result.stderr
    found = differences(result.stdout)
    assert len(found) == 14, result.stdout
    assert all(value <= 1e-12 for value in found.values()), found


@needs_mpi
@pytest.mark.parametrize("mode", ["raise", "hang", "kill"])
def test_a_dying_rank_ends_the_job_with_a_clear_error(mode):
    result, seconds = mpirun(sys.executable, os.path.join(PROGRAMS, "dead_rank.py"), mode, timeout=60)
    assert result.returncode != 0
    assert "finished all steps" not in result.stdout
    assert f"rank 1: failing ({mode}) at step 2" in result.stdout
    assert seconds < 30  # the program's collective timeout is 3 s
    if mode == "kill":  # mpiexec sees the process die and ends the job at once
        assert "BAD TERMINATION" in result.stdout + result.stderr
    else:  # rank 0's watchdog
        assert ("tinycnn.distributed: rank 0 of 2: error: MPI gradient all-reduce (bucket 1/1) did not complete "
                "within 3 s") in result.stderr


@needs_mpi
def test_the_readme_script_trains_on_two_processes(tmp_path):
    # The README's ```py block of "Training on several machines" (```py, not ```python: test_readme
    # runs those in its own process, where there is no second process).
    readme = open(os.path.join(HERE, "..", "README.md")).read()
    section = readme[readme.index("## Training on several machines"):]
    script = re.search(r"^```py\n(.*?)^```$", section, re.MULTILINE | re.DOTALL).group(1)
    (tmp_path / "train_two.py").write_text(script)
    result, _ = mpirun(sys.executable, str(tmp_path / "train_two.py"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epoch 1/2") == result.stdout.count("epoch 2/2") == 1, result.stdout


needs_gpu = pytest.mark.skipif(not tinycnn.backend.gpu_available(), reason="needs CuPy and a CUDA device")


@pytest.mark.gpu
@needs_gpu
@needs_mpi
def test_nccl_with_a_world_of_one_gpu():
    result, _ = mpirun(sys.executable, os.path.join(PROGRAMS, "gpu_nccl.py"), processes=1)
    assert result.returncode == 0, result.stderr
    found = differences(result.stdout)
    assert len(found) == 7, result.stdout
    assert all(value <= 1e-12 for value in found.values()), found


@pytest.mark.gpu
@needs_gpu
@needs_mpi
def test_two_processes_with_cupy_arrays_over_mpi_take_the_steps_of_one():
    # Both processes on the one GPU, so MPI through host memory: NCCL refuses two ranks on one device.
    result, _ = mpirun(sys.executable, os.path.join(PROGRAMS, "equivalence.py"), "gpu", "mpi")
    assert result.returncode == 0, result.stderr
    found = differences(result.stdout)
    assert len(found) == 7, result.stdout
    assert found["float64 vs one process"] <= 1e-10
    assert found["float32 vs one process"] <= 1e-3
    assert found["float64 rank 0 vs rank 1"] == found["float32 rank 0 vs rank 1"] == 0


def mnist_available():
    return os.path.isdir(os.path.join(DATA, "mnist"))


@needs_mpi
@pytest.mark.skipif(not mnist_available(), reason="the MNIST files are not here (set TINYCNN_DATA=../shared/data, "
                                                  "as CI does)")
def test_train_distributed_resumes_exactly_on_the_same_world_size_and_refuses_another(tmp_path, capsys):
    common = ["-m", "tinycnn", "train", "lenet", "--dataset", "mnist", "--limit-train", "300", "--limit-test", "100",
              "--batch-size", "16", "--scheduler", "none", "--no-download", "--no-progress", "--distributed"]
    straight, _ = mpirun(sys.executable, *common, "--epochs", "2", "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    # Rank 0 alone prints: each line once.
    assert straight.stdout.count("epoch 1/2") == 1 and straight.stdout.count("done in") == 1, straight.stdout
    first, _ = mpirun(sys.executable, *common, "--epochs", "1", "--out", str(tmp_path / "resumed"))
    assert first.returncode == 0, first.stderr
    checkpoint_path = tmp_path / "resumed" / "last.ckpt"
    second, _ = mpirun(sys.executable, *common, "--epochs", "2", "--out", str(tmp_path / "resumed"),
                       "--resume", str(checkpoint_path))
    assert second.returncode == 0, second.stderr

    history = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("straight", "resumed")]
    assert len(history[0]) == len(history[1]) == 2
    for key in ("train_loss", "train_top1", "test_loss", "test_top1"):
        assert [row[key] for row in history[0]] == [row[key] for row in history[1]]
    states = [tinycnn.checkpoint.load(tmp_path / name / "last.ckpt") for name in ("straight", "resumed")]
    assert states[0]["settings"]["world_size"] == 2
    for key, value in states[0]["model"].items():
        np.testing.assert_array_equal(value, states[1]["model"][key])

    # One process (no --distributed) may not continue a run of two.
    status = cli.main(["train", "lenet", "--epochs", "3", "--out", str(tmp_path / "resumed"),
                       "--resume", str(checkpoint_path), "--no-progress", "--scheduler", "none"])
    assert status == 1
    assert ("was trained on 2 processes (global batch 32), this run has 1: resume it with mpiexec -n 2 ... "
            "--distributed") in capsys.readouterr().err
