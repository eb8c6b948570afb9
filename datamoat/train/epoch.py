"""One epoch's pieces for `train`: its batches (in memory or streamed from photo shards), a copy of
the best weights, and the progress bar."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["epoch_batches", "clone_state", "progress_bar"]


def epoch_batches(
    x_tr: torch.Tensor | None,
    stream: Any,
    n: int,
    steps: int,
    batch_size: int,
    seed: int,
    g: torch.Generator,
    epoch: int,
) -> Any:
    """One epoch's (normalised batch (B, C, H, W), indices into the train rows (B,)), `steps` of them."""
    if stream is None:
        assert x_tr is not None
        perm = torch.randperm(n, generator=g)
        for s in range(steps):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            yield x_tr[idx.to(x_tr.device)], idx
        return
    samples, loader = stream
    samples.epoch = epoch  # seeds each photo's crop: the same run gives the same crops, resumed or not
    loader.generator.manual_seed(seed * 100_003 + epoch)
    for s, (xb, idx) in enumerate(loader):
        if s == steps:  # a final batch of one sample breaks BatchNorm; it is dropped, as `train` counts steps
            break
        yield xb, idx


def clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `net`'s weights and buffers, on the device they are on.

    >>> sorted(clone_state(torch.nn.Linear(2, 1)))
    ['bias', 'weight']
    """
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


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
