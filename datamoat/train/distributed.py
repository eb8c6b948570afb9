"""Training on several processes with PyTorch's own engine: torchrun starts the processes (one
machine or many, through its rendezvous) and DistributedDataParallel averages their gradients.

datamoat adds no launcher or collective of its own. `train --nproc N` runs
``torchrun --standalone --nproc-per-node N -m datamoat train ...``; on several machines run torchrun
yourself (README, "Training on several processes"). Under torchrun, `setup` joins the process
group that torchrun's environment describes: gloo on the CPU, NCCL on CUDA GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import torch

from datamoat.errors import BadInput

__all__ = [
    "alone",
    "all_sum_array",
    "setup",
    "teardown",
    "leaving_together",
    "rank_world",
    "is_main",
    "local_device",
    "all_sum",
    "broadcast",
    "gather",
    "sync_buffers",
    "synced_batchnorm",
    "launch",
    "without_option",
]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


_alone = [0]  # depth of `alone` blocks in this process
# How long a collective waits for a peer. torch's default (minutes) is shorter than a fold model a
# peer still trains while this process, done with its own (`alone`), waits to share the results;
# a peer that dies is noticed sooner, by torchrun, which then stops every process.
GROUP_TIMEOUT = datetime.timedelta(hours=6)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process trains by itself, as if it were the only one: `rank_world` says
    (0, 1), so `train` wraps no DDP and calls no collective. For work split into independent pieces
    (each process takes whole fold models); the process group stays joined for what follows.

    >>> with alone():
    ...     rank_world()
    (0, 1)
    """
    _alone[0] += 1
    try:
        yield
    finally:
        _alone[0] -= 1


def rank_world() -> tuple[int, int]:
    """(this process's rank, how many processes train together); (0, 1) outside a process group.

    >>> rank_world()
    (0, 1)
    """
    dist = _dist()
    if _alone[0]:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process. Other ranks never touch the workspace.

    >>> is_main()
    True
    """
    return rank_world()[0] == 0


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), once; returns
    (rank, world). Outside torchrun it does nothing and returns (0, 1).

    >>> setup(torch.device("cpu"))
    (0, 1)
    """
    dist = _dist()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return rank_world()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    return rank_world()


def local_device(device: torch.device) -> torch.device:
    """This process's own GPU under torchrun (one GPU per process), else `device` unchanged."""
    if device.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def teardown(*, together: bool = True) -> None:
    """Leave the process group, if this process joined one. `together`: after a barrier, so no rank
    closes its connections while a peer still works (gloo aborts a peer that sees that); a rank that
    failed leaves at once instead, since its peers may never reach the barrier."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def leaving_together() -> Iterator[None]:
    """Run a command's work, then leave the process group: together when it succeeded (however it
    returned), at once when it raised.

    >>> with leaving_together():
    ...     pass
    """
    try:
        yield
    except BaseException:
        teardown(together=False)
        raise
    teardown()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """`values` summed over every process (unchanged with one).

    >>> all_sum([1.0, 2.0], torch.device("cpu"))
    [1.0, 2.0]
    """
    if rank_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)  # (len(values),)
    _dist().all_reduce(t)
    return t.tolist()


def all_sum_array(a: np.ndarray, device: torch.device) -> np.ndarray:
    """`a` summed element-wise over every process (unchanged with one), in its own dtype, so a piece
    that one process filled and the others left at zero comes back exact.

    >>> all_sum_array(np.ones((2, 3), np.float32), torch.device("cpu")).sum()
    np.float32(6.0)
    """
    if rank_world()[1] == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)  # a's shape
    _dist().all_reduce(t)
    return t.cpu().numpy()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj`, on every process (unchanged with one).

    >>> broadcast("run-1")
    'run-1'
    """
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every process's `obj` in rank order, on rank 0; an empty list on the other ranks ([obj] alone).

    >>> gather("part")
    ['part']
    """
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    _dist().gather_object(obj, out, dst=0)
    return out or []


def sync_buffers(net: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) to every process, so that all of them
    evaluate and keep the same model: each rank's statistics saw only its own share of the batches."""
    if rank_world()[1] == 1:
        return
    for b in net.buffers():
        _dist().broadcast(b, src=0)


_BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


@contextlib.contextmanager
def synced_batchnorm(net: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside the block, when several processes train together, `net`'s BatchNorm layers normalise
    by the statistics of the global batch, as one process would, not of this rank's share; yields how
    many layers it synchronises (0 alone, or when not `enabled`). The state dict is untouched.

    torch's SyncBatchNorm does this on GPUs only (its kernels are CUDA's) and replaces the modules;
    here each layer's sums go through torch.distributed.nn's differentiable all_reduce, so gloo on
    the CPU gets it too and the gradient flows through the shared statistics as it would in one process.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    >>> with synced_batchnorm(net) as n:
    ...     n
    0
    """
    world = rank_world()[1]
    layers = [m for m in net.modules() if isinstance(m, _BATCHNORMS)] if enabled and world > 1 else []
    for m in layers:
        m.forward = types.MethodType(_global_batchnorm, m)  # type: ignore[method-assign]  # shadows the class's
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


def _global_batchnorm(self: Any, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm's forward over every rank's share of the batch; x: (B, C, ...) -> (B, C, ...)."""
    if not self.training:  # evaluation uses the running statistics: nothing to share
        return type(self).forward(self, x)
    from torch.distributed.nn.functional import all_reduce  # differentiable: sums the gradients back

    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, c] + [1] * (x.dim() - 2)
    # One all-reduce a layer (and one back), as torch's SyncBatchNorm: each rank's count, sum and sum of
    # squares about the origin, from its own two-pass statistics and in float64, where the difference
    # E[x^2] - E[x]^2 keeps its precision however far a channel's mean is from 0.
    xf = x.float()  # statistics in fp32 under autocast, as torch's BatchNorm keeps them
    k = x.numel() / c  # this rank's samples x positions
    mean_k = xf.mean(dims)  # (C,)
    m2_k = (xf - mean_k.view(shape)).pow(2).sum(dims)  # (C,): two-pass, accurate in fp32
    mean_d = mean_k.double()
    sums = all_reduce(torch.cat([k * mean_d, m2_k.double() + k * mean_d * mean_d, mean_d.new_tensor([k])]))
    n = sums[2 * c]  # samples x positions over all ranks
    mean64 = sums[:c] / n  # (C,)
    var = (sums[c : 2 * c] / n - mean64 * mean64).clamp_min(0).float()  # (C,), biased: what normalises the batch
    mean = mean64.float()
    centred = xf - mean.view(shape)  # (B, C, ...)
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), f)
            self.running_var.lerp_(var.detach() * n / (n - 1), f)  # unbiased, as BatchNorm records it
    y = centred * torch.rsqrt(var + self.eps).view(shape)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


def launch(nproc: int, argv: list[str], stdout: IO[str] | None = None) -> int:
    """Run ``datamoat ARGV`` on `nproc` processes of this machine through torchrun; its exit code.
    The processes write to `stdout` (default: this process's).

    torchrun's --standalone rendezvous picks a free port, so two launches on one machine do not clash.
    """
    if nproc < 1:
        raise BadInput(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*cmd, "-m", "datamoat", *argv], stdout=stdout)


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without ``NAME VALUE`` or ``NAME=VALUE``, so a relaunched command does not relaunch.

    >>> without_option(["train", "--nproc", "2", "--epochs", "1"], "--nproc")
    ['train', '--epochs', '1']
    >>> without_option(["train", "--nproc=2"], "--nproc")
    ['train']
    """
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out
