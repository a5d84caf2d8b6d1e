"""Data-parallel training across processes: MPI (mpi4py) on the CPU, NCCL (CuPy) on GPUs.

Every process holds a full copy of the network and trains on its own shard of each batch; after
backward the gradients are averaged across the processes, so every copy takes the same step, the
step one process would take on the whole (global) batch. This is the scheme of ChainerMN and
Horovod, built on their engines rather than on a transport of our own:

    mpiexec -n 2 python train.py          # or: mpiexec -n 2 tinycnn train lenet ... --distributed

    group = tinycnn.distributed.init()                      # rank, world_size, local_rank
    model = tinycnn.models.create("lenet")
    data_parallel = tinycnn.distributed.DataParallel(model)  # broadcasts rank 0's weights
    sampler = tinycnn.distributed.DistributedSampler()       # this process's share of each epoch
    loader = tinycnn.data.DataLoader(train_set, batch_size=32, shuffle=True, sampler=sampler)
    for x, y in loader:
        loss = F.cross_entropy(model(tinycnn.Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        data_parallel.synchronize()   # p.grad <- mean over the processes of p.grad
        optimizer.step()

Collectives on NumPy arrays go through MPI. Collectives on CuPy arrays go through NCCL (one
process per GPU; rank 0 makes the NCCL unique id and MPI sends it to the others), or, where CuPy
has no NCCL, through MPI with a copy to host memory (choose_transport says which).

BatchNorm stays per process: each copy normalises with the statistics of its own shard (and keeps
its own running statistics; rank 0's are the ones saved). tinycnn.nn.SyncBatchNorm computes them
over the global batch instead.

A collective that does not complete within `timeout_s` (a process died, stalled or took another
path) ends the whole job: the waiting process prints which collective and which rank, then calls
MPI_Abort, so a job never hangs. mpiexec itself ends the job at once when a process is killed.
"""
import math
import pickle
import sys
import time

import numpy

from tinycnn import backend, random
from tinycnn.errors import UserError

__all__ = ["DataParallel", "DistributedError", "DistributedSampler", "ProcessGroup", "broadcast_object",
           "broadcast_optimizer_state", "broadcast_parameters", "choose_transport", "default_group", "get_group", "init",
           "make_buckets", "run_on_root"]

DEFAULT_TIMEOUT_S = 300.0
# MPI moves a non-blocking collective forward only inside calls such as Test, so a wait first
# calls Test without pause for this long, then with growing pauses (pauses from the start made
# LeNet's gradient all-reduce several times slower than a blocking MPI_Allreduce).
SPIN_S = 0.002
# Gradients are averaged in flat buffers of about this size: one MPI call per bucket rather than
# one per parameter (LeNet's 1.6 MiB of float32 gradients: 1 bucket; ResNet-18's 43 MiB: 5). A
# bucket closes once it holds bucket_bytes or more, so one may hold a little more.
DEFAULT_BUCKET_BYTES = 8 * 2**20

_group = None  # the ProcessGroup of init(), used where no group is passed


class DistributedError(UserError):
    """A distributed job set up wrongly (mpi4py missing, NCCL asked for where there is none)."""


def choose_transport(device, gpu_transport, nccl_available):
    """'nccl' or 'mpi': how a collective moves an array on `device` ('cpu' or 'gpu').

    gpu_transport 'auto' takes NCCL for GPU arrays where CuPy has it, else MPI through host memory;
    'nccl' insists on NCCL (an error where there is none); 'mpi' always stages GPU arrays on the
    host. CPU arrays always go through MPI: NCCL carries device memory only.
    """
    if gpu_transport not in ("auto", "nccl", "mpi"):
        raise DistributedError(f"tinycnn.distributed: gpu_transport must be 'auto', 'nccl' or 'mpi', got "
                               f"{gpu_transport!r}")
    if device != "gpu" or gpu_transport == "mpi":
        return "mpi"
    if not nccl_available:
        if gpu_transport == "nccl":
            raise DistributedError("tinycnn.distributed: gpu_transport='nccl' needs cupy.cuda.nccl (CuPy built "
                                   "with NCCL); use 'auto' or 'mpi' to go through MPI instead")
        return "mpi"
    return "nccl"


def _nccl_module():
    """cupy.cuda.nccl when CuPy has it (and it is usable), else None."""
    if backend.cupy is None:
        return None
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", True) else None


class ProcessGroup:
    """The processes of one job (an MPI communicator) and the collectives tinycnn needs.

    rank        this process's number, 0 .. world_size - 1; rank 0 is the root that saves and prints
    world_size  how many processes
    local_rank  this process's number among those on its machine (which GPU it uses)

    Every collective is started non-blocking and then waited for with a deadline (_wait), which is
    what turns a dead or stalled peer into an error instead of a hang.
    """

    def __init__(self, comm, local_rank=0, timeout_s=DEFAULT_TIMEOUT_S, gpu_transport="auto"):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.world_size = comm.Get_size()
        self.local_rank = local_rank
        self.timeout_s = float(timeout_s)
        choose_transport("cpu", gpu_transport, False)  # checks the name now rather than at the first collective
        self.gpu_transport = gpu_transport
        self._nccl = None  # the NCCL communicator, made at the first collective on GPU arrays

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"ProcessGroup(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    def abort(self, message):
        """Print `message` for this rank and end every process of the job (MPI_Abort)."""
        sys.stdout.flush()
        sys.stderr.write(f"tinycnn.distributed: rank {self.rank} of {self.world_size}: error: {message}; "
                         "aborting the job\n")
        sys.stderr.flush()
        # mpiexec forwards each process's output through its proxy; MPI_Abort tears the job down
        # at once and could lose the message on the way (seen with MPICH 5): give it a moment.
        time.sleep(1.0)
        self.comm.Abort(1)

    def _wait(self, is_done, what):
        """Poll `is_done()` until it is true; abort the job after timeout_s seconds. Without pause
        for SPIN_S, then with a pause that grows to 1 ms: a short wait costs little time, a long
        one (a process running late) little CPU."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        pause = 0.0
        while not is_done():
            now = time.monotonic()
            if now - started < SPIN_S:
                continue
            if now > deadline:
                self.abort(f"{what} did not complete within {self.timeout_s:g} s: another process died, stalled "
                           "or did not call it (see the other ranks' messages)")
            time.sleep(pause)
            pause = min(2 * pause or 1e-5, 1e-3)

    def _transport(self, array):
        return choose_transport(backend.device_of(array), self.gpu_transport, _nccl_module() is not None)

    def all_reduce_sum_start(self, array):
        """Start summing `array` across the processes, in place; finish with all_reduce_wait."""
        if self._transport(array) == "nccl":
            return self._nccl_all_reduce_start(array)
        host = backend.to_cpu(array)  # the array itself on the CPU, a copy for a GPU array staged through MPI
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return ("mpi", request, host, array)

    def all_reduce_wait(self, pending, what="all-reduce"):
        kind, handle, host, array = pending
        if kind == "nccl":
            self._wait(lambda: handle.done, f"NCCL {what}")  # handle: a CUDA event recorded after the NCCL call
            return array
        self._wait(handle.Test, f"MPI {what}")
        if host is not array:
            array[...] = backend.to_gpu(host)
        return array

    def all_reduce_sum(self, array, what="all-reduce"):
        """Sum `array` across the processes, in place; returns it."""
        return self.all_reduce_wait(self.all_reduce_sum_start(array), what)

    def broadcast(self, array, root=0, what="broadcast"):
        """Overwrite `array` everywhere with root's, in place; returns it."""
        if self._transport(array) == "nccl":
            return self._nccl_broadcast(array, root, what)
        host = backend.to_cpu(array)
        if not host.flags.c_contiguous:
            raise ValueError(f"ProcessGroup.broadcast: expected a contiguous array, got shape {tuple(host.shape)}")
        request = self.comm.Ibcast(host, root=root)
        self._wait(request.Test, f"MPI {what}")
        if host is not array:
            array[...] = backend.to_gpu(host)
        return array

    def broadcast_object(self, value, root=0, what="broadcast of an object"):
        """Root's `value` (any picklable object) on every process."""
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        length = numpy.array([len(payload)], dtype=numpy.int64)
        self.broadcast(length, root, what)
        buffer = numpy.frombuffer(payload, dtype=numpy.uint8).copy() if self.rank == root else \
            numpy.empty(int(length[0]), dtype=numpy.uint8)
        self.broadcast(buffer, root, what)
        return value if self.rank == root else pickle.loads(buffer.tobytes())

    def barrier(self, what="barrier"):
        request = self.comm.Ibarrier()
        self._wait(request.Test, f"MPI {what}")

    # NCCL: one communicator per process group, for CuPy arrays; NCCL calls are queued on the
    # current CUDA stream and run in order with the kernels that produce and consume the arrays.

    def _nccl_communicator(self):
        if self._nccl is None:
            nccl = _nccl_module()
            unique_id = nccl.get_unique_id() if self.rank == 0 else None
            unique_id = self.broadcast_object(unique_id, 0, "broadcast of the NCCL unique id")
            self._nccl = nccl.NcclCommunicator(self.world_size, unique_id, self.rank)
        return self._nccl

    def _nccl_dtype(self, array):
        nccl = _nccl_module()
        types = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32, numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64,
                 numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16, numpy.dtype(numpy.int64): nccl.NCCL_INT64,
                 numpy.dtype(numpy.int32): nccl.NCCL_INT32, numpy.dtype(numpy.uint8): nccl.NCCL_UINT8}
        if array.dtype not in types:
            raise TypeError(f"tinycnn.distributed: NCCL carries no {array.dtype} arrays")
        if not array.flags.c_contiguous:
            raise ValueError(f"tinycnn.distributed: expected a contiguous GPU array, got shape {tuple(array.shape)}")
        return types[array.dtype]

    def _nccl_done_event(self):
        event = backend.cupy.cuda.Event(disable_timing=True)
        event.record(backend.cupy.cuda.get_current_stream())
        return event

    def _nccl_all_reduce_start(self, array):
        nccl = _nccl_module()
        stream = backend.cupy.cuda.get_current_stream().ptr
        self._nccl_communicator().allReduce(array.data.ptr, array.data.ptr, array.size, self._nccl_dtype(array),
                                            nccl.NCCL_SUM, stream)
        return ("nccl", self._nccl_done_event(), None, array)

    def _nccl_broadcast(self, array, root, what):
        stream = backend.cupy.cuda.get_current_stream().ptr
        self._nccl_communicator().bcast(array.data.ptr, array.size, self._nccl_dtype(array), root, stream)
        event = self._nccl_done_event()
        self._wait(lambda: event.done, f"NCCL {what}")
        return array


def init(timeout_s=DEFAULT_TIMEOUT_S, gpu_transport="auto"):
    """Join the job mpiexec started: returns the ProcessGroup of all its processes (MPI_COMM_WORLD),
    also kept as the default group of the functions here. Where CuPy sees GPUs, this process takes
    GPU local_rank (mod the count): one process per GPU. Calling it again returns the same group."""
    global _group
    if _group is not None:
        return _group
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("tinycnn.distributed needs mpi4py and an MPI library: pip install "
                               "'tinycnn[distributed]'") from None
    world = MPI.COMM_WORLD
    # The processes that share this machine's memory, numbered 0.. on each machine.
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    local_rank = local.Get_rank()
    local.Free()
    if backend.gpu_available():
        backend.cupy.cuda.Device(local_rank % backend.cupy.cuda.runtime.getDeviceCount()).use()
    _group = ProcessGroup(world, local_rank, timeout_s, gpu_transport)
    return _group


def default_group():
    """The ProcessGroup of init(), or None when this process has not joined a job."""
    return _group


def get_group(group=None, where="tinycnn.distributed"):
    """`group`, else the group of init(); an error if there is neither."""
    if group is not None:
        return group
    if _group is None:
        raise DistributedError(f"{where}: no process group; call tinycnn.distributed.init() first "
                               "(in a job started by mpiexec)")
    return _group


def broadcast_object(value, group=None, root=0):
    return get_group(group, "broadcast_object").broadcast_object(value, root)


def run_on_root(function, group=None, errors=(UserError, OSError)):
    """function() run by rank 0 alone (it reads or checks a file only rank 0 has); its result on
    every process. An exception of one of the `errors` types is raised on every process, so none
    is left waiting in a collective for a root that has given up."""
    group = get_group(group, "run_on_root")
    outcome = None
    if group.is_root:
        try:
            outcome = ("result", function())
        except errors as error:
            outcome = ("error", error)
    kind, value = group.broadcast_object(outcome, 0, "broadcast of rank 0's result")
    if kind == "error":
        raise value
    return value


def broadcast_parameters(model, group=None, root=0):
    """Give every process root's parameters and buffers (running statistics), in place."""
    group = get_group(group, "broadcast_parameters")
    for name, parameter in model.named_parameters():
        group.broadcast(parameter.data, root, f"broadcast of parameter {name}")
    for name, buffer in model.named_buffers():
        if buffer is not None:
            group.broadcast(buffer, root, f"broadcast of buffer {name}")


def broadcast_optimizer_state(optimizer, group=None, root=0):
    """Give every process root's optimizer state (momentum buffers, step counts, learning rates):
    on resume, when only root has read the checkpoint."""
    group = get_group(group, "broadcast_optimizer_state")
    state = group.broadcast_object(optimizer.state_dict() if group.rank == root else None, root,
                                   "broadcast of the optimizer state")
    if group.rank != root:
        optimizer.load_state_dict(state)


def make_buckets(parameters, bucket_bytes):
    """Split `parameters` into runs of one dtype and device holding about bucket_bytes each."""
    buckets, size = [], 0
    for p in parameters:
        same_kind = buckets and p.dtype == buckets[-1][0].dtype and p.device == buckets[-1][0].device
        if not same_kind or size >= bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.data.nbytes
    return buckets


class DataParallel:
    """Averages `model`'s gradients across the processes after each backward (`synchronize()`).

    Process-group data parallelism as Horovod and ChainerMN do it (not torch.nn.DataParallel's
    threads). Construction broadcasts rank 0's parameters and buffers, so every copy starts alike.
    The gradients go in flat buffers (buckets) of about bucket_bytes, one all-reduce each, all
    started before the first is waited for. Each bucket ends with one flag per parameter (1 where
    this process has a gradient): a parameter no process used keeps grad None, as it would in one
    process, instead of getting a zero gradient that weight decay or momentum would act on.

    synchronize() is called after backward, not overlapped with it. A parameter's hook runs as soon
    as its gradient is complete (run_backward's hook point 2), so a bucket's all-reduce could start
    from the hook of its last parameter; that is not done yet.

    fit(..., data_parallel=dp) calls start_epoch(epoch) before each epoch, synchronize() between
    backward and step, averages the epoch's training metrics over the processes, and lets only
    rank 0 log and write files.

    start_epoch reseeds tinycnn's global generator (dropout's masks) from (seed, rank, epoch):
    each process draws its own masks (a shared generator would give every process the same ones),
    and a resumed run draws, from its first epoch on, what the run it continues would have drawn.
    `seed` defaults to one drawn by rank 0 and broadcast; `tinycnn train` passes its --seed.
    """

    def __init__(self, model, group=None, bucket_bytes=DEFAULT_BUCKET_BYTES, broadcast=True, seed=None):
        self.group = get_group(group, "DataParallel")
        self.model = model
        if seed is None:
            seed = self.group.broadcast_object(int(random.generator().integers(2**63)) if self.group.is_root else None,
                                               0, "broadcast of DataParallel's seed")
        self.seed = int(seed)
        # In reverse: backward produces the last layers' gradients first.
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.buckets = make_buckets(reversed(trainable), bucket_bytes)
        self.all_reduce_seconds = 0.0  # time spent in synchronize(), for the benchmark's share of a step
        if broadcast:
            broadcast_parameters(model, self.group)

    @property
    def is_root(self):
        return self.group.is_root

    @property
    def world_size(self):
        return self.group.world_size

    def start_epoch(self, epoch):
        """Reseed tinycnn's global generator for epoch `epoch` (0-based) of this process."""
        random.manual_seed([self.seed, self.group.rank, epoch])

    def synchronize(self):
        """p.grad <- the mean over the processes of p.grad, for every trainable parameter."""
        start = time.perf_counter()
        pending = [self.group.all_reduce_sum_start(self._pack(bucket)) for bucket in self.buckets]
        for index, (bucket, work) in enumerate(zip(self.buckets, pending)):
            flat = self.group.all_reduce_wait(work, f"gradient all-reduce (bucket {index + 1}/{len(self.buckets)})")
            self._unpack(bucket, flat)
        self.all_reduce_seconds += time.perf_counter() - start

    def _pack(self, bucket):
        """[every gradient flattened (zeros where None), then one has-gradient flag per parameter]."""
        xp = backend.get_array_module(bucket[0].data)
        parts = [p.grad.reshape(-1) if p.grad is not None else xp.zeros(p.size, dtype=p.dtype) for p in bucket]
        flags = xp.array([p.grad is not None for p in bucket], dtype=bucket[0].dtype)
        return xp.concatenate(parts + [flags])

    def _unpack(self, bucket, flat):
        flags = flat[-len(bucket):]
        offset = 0
        for p, flag in zip(bucket, backend.to_cpu(flags)):
            if flag > 0:
                p.grad = flat[offset:offset + p.size].reshape(p.shape) / self.group.world_size
            offset += p.size

    def average_metrics(self, metrics):
        """The training metrics of train_epoch ({'loss', 'top1', 'top5', 'images', 'time_s'}) over
        the global batch: loss and accuracies weighted by each process's image count, the images
        summed. The time stays this process's: the all-reduce of every step keeps them in step."""
        images = float(metrics["images"])
        sums = numpy.array([metrics["loss"] * images, metrics["top1"] * images, metrics["top5"] * images, images])
        self.group.all_reduce_sum(sums, "all-reduce of the epoch's metrics")
        total = max(sums[3], 1.0)
        return {**metrics, "loss": sums[0] / total, "top1": sums[1] / total, "top5": sums[2] / total,
                "images": int(sums[3])}


class DistributedSampler:
    """This process's share of each epoch's shuffled order, for DataLoader(..., sampler=...).

    The DataLoader draws the epoch's permutation of all n items as it would in one process (from a
    generator seeded alike on every process: `seed`, by default drawn by rank 0 and broadcast), and
    the sampler keeps every world_size-th item starting at `rank`. Process r's batch i then holds
    items r, r + R, r + 2R, ... of the single-process batch i of batch_size * R items (R =
    world_size): the processes together see exactly the global batch.

    Padding: when n is not a multiple of R the order is extended, cyclically from its start, to
    ceil(n / R) * R items, so every process has the same number of items and batches (a process
    with one batch fewer would wait for ever in the all-reduce). Those few items (at most R - 1) are
    seen twice in the epoch; no item is dropped.
    """

    def __init__(self, num_replicas=None, rank=None, seed=None, group=None):
        if num_replicas is None or rank is None or seed is None:
            group = get_group(group, "DistributedSampler")
            num_replicas = group.world_size if num_replicas is None else num_replicas
            rank = group.rank if rank is None else rank
            if seed is None:
                seed = group.broadcast_object(int(random.generator().integers(2**63)) if group.is_root else None,
                                              0, "broadcast of the sampler's seed")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: expected 0 <= rank < num_replicas, got rank {rank} of "
                             f"{num_replicas}")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)

    def shard_length(self, n):
        """Items per process in an epoch of n items: ceil(n / num_replicas)."""
        return math.ceil(n / self.num_replicas)

    def shard(self, order):
        """This process's items of the epoch order `order` (the padded order[rank::num_replicas])."""
        padded = numpy.resize(order, self.shard_length(len(order)) * self.num_replicas)  # repeats cyclically
        return padded[self.rank::self.num_replicas]

    def __repr__(self):
        return f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, seed={self.seed})"
