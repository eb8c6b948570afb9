"""One epoch's pieces for `train`: its batches (in memory or streamed from photo shards, this
process's share of each under DDP), a copy of the best weights, and the progress bar."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from datamoat.errors import BadInput, NotFound
from datamoat.workspace import atomic_write

__all__ = [
    "detect_plateau",
    "epoch_batches",
    "rank_slice",
    "batch_total",
    "RankBatches",
    "clone_state",
    "save_checkpoint",
    "load_checkpoint",
    "progress_bar",
]


def rank_slice(perm: torch.Tensor, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Rank `rank`'s share of global batch `step` of the permutation `perm`: every `world`-th item.

    Every rank gets the same number of steps and shares that differ by at most one item, so no rank
    waits on a collective the others never reach. A short final batch is topped up from the start of
    the permutation (as torch's DistributedSampler pads) until each share has the 2 items BatchNorm
    needs. With one process it is the batch itself.

    >>> perm = torch.arange(10)
    >>> rank_slice(perm, 0, 4, rank=1, world=2).tolist(), rank_slice(perm, 2, 4, rank=1, world=2).tolist()
    ([1, 3], [9, 1])
    """
    b = perm[step * batch_size : (step + 1) * batch_size]  # (<= batch_size,)
    if len(b) < 2 * world:
        need = 2 * world - len(b)
        b = torch.cat([b, perm.repeat(-(-need // len(perm)))[:need]])
    return b[rank::world]


def batch_total(n: int, step: int, batch_size: int, world: int = 1) -> int:
    """How many items global batch `step` of an `n`-item permutation holds across all ranks
    (`rank_slice` tops a short final batch up to 2 a rank).

    >>> batch_total(10, 0, 4), batch_total(10, 2, 4), batch_total(10, 2, 4, world=2)
    (4, 2, 4)
    """
    return max(min(batch_size, n - step * batch_size), 2 * world)


class RankBatches(torch.utils.data.Sampler[list[int]]):
    """A DataLoader's batch sampler: this rank's share of each of `steps` global batches of `perm`,
    which `epoch_batches` sets before each epoch (the same on every rank)."""

    def __init__(self, n: int, batch_size: int, steps: int, rank: int = 0, world: int = 1) -> None:
        self.perm, self.batch_size, self.steps = torch.arange(n), batch_size, steps
        self.rank, self.world = rank, world

    def __iter__(self) -> Any:
        for s in range(self.steps):
            yield rank_slice(self.perm, s, self.batch_size, self.rank, self.world).tolist()

    def __len__(self) -> int:
        return self.steps


def epoch_batches(
    rows_at: Callable[[torch.Tensor], torch.Tensor] | None,
    stream: Any,
    n: int,
    steps: int,
    batch_size: int,
    g: torch.Generator,
    epoch: int,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """One epoch's (normalised batch (B, C, H, W), indices into the train rows (B,)), `steps` of
    them: this rank's shares of the global batches of one permutation drawn from `g`. `rows_at` reads
    the batch at some train-row indices; a photo `stream` (samples, loader) decodes it instead."""
    perm = torch.randperm(n, generator=g)  # (N,), the same on every rank: `g` is seeded alike
    if stream is None:
        assert rows_at is not None
        for s in range(steps):
            idx = rank_slice(perm, s, batch_size, rank, world)
            yield rows_at(idx), idx
        return
    samples, loader = stream
    samples.epoch = epoch  # seeds each photo's crop: the same run gives the same crops, resumed or not
    loader.batch_sampler.perm = perm
    yield from loader


def detect_plateau(val_acc: list[float], patience: int, min_delta: float) -> int | None:
    """1-based epoch after which val accuracy never improved by `min_delta`,
    provided at least `max(patience, 1)` epochs followed it; else None.

    >>> detect_plateau([0.8, 0.85, 0.851, 0.849], patience=2, min_delta=0.005)
    2
    >>> detect_plateau([0.8, 0.85, 0.9], patience=2, min_delta=0.005) is None
    True
    """
    if not val_acc:
        return None
    best_i, best = 0, val_acc[0]
    for i, a in enumerate(val_acc[1:], start=1):
        if a > best + min_delta:
            best_i, best = i, a
    return best_i + 1 if len(val_acc) - 1 - best_i >= max(patience, 1) else None


def clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `net`'s weights and buffers, on the device they are on.

    >>> sorted(clone_state(torch.nn.Linear(2, 1)))
    ['bias', 'weight']
    """
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors and plain data) to `path` atomically: a crash leaves the last one whole."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path | None) -> dict[str, Any]:
    """The state `save_checkpoint` wrote, on the CPU; a one-line error for a missing or unsafe file."""
    if path is None or not path.exists():
        raise NotFound(f"no checkpoint at {path}: the run never finished an epoch; start it again")
    # weights_only: tensors and plain containers, never arbitrary objects, so a
    # checkpoint someone else could write cannot run code here (M7).
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise BadInput(
            f"checkpoint {path} holds more than tensors and plain data, so it was not loaded "
            f"({str(e).splitlines()[0][:120]}): start the run again"
        ) from None


def progress_bar() -> Any:
    """A rich progress bar on stderr with the running loss (`train`'s, one task per epoch)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # On stderr, so `--json` output on stdout stays clean.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
