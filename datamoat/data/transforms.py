"""The few image transforms training needs, on normalised batches.

Written on tensors (no torchvision): a seeded generator drives them, so the
same seed gives the same augmented batch, which distillation relies on to
show teacher and student the same image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datamoat.configs import check_choice

__all__ = ["AUGMENTATIONS", "augment"]

AUGMENTATIONS = ("none", "crop", "crop_flip")


def augment(
    x: torch.Tensor,
    mode: str,
    generator: torch.Generator,
    pad: int = 2,
    *,
    share: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Random shift by up to `pad` pixels (zero padding) and optional h-flip.

    x: (B, C, H, W) -> (B, C, H, W)

    With ``share=(rank, world, total)``, `x` is the items ``rank::world`` of a global batch of
    `total`: the draws are made for the whole batch and this share's are kept, so every process
    draws alike (their generators stay in step) and each sample is augmented as one process would.

    >>> g = torch.Generator().manual_seed(0)
    >>> augment(torch.zeros(4, 1, 8, 8), "crop_flip", g).shape
    torch.Size([4, 1, 8, 8])
    """
    check_choice("augmentation", mode, AUGMENTATIONS)
    if mode == "none":
        return x
    b, _, h, w = x.shape
    rank, world, total = share or (0, 1, b)
    if len(range(rank, total, world)) != b:
        raise ValueError(f"a share {rank}::{world} of {total} items has {len(range(rank, total, world))}, not {b}")
    # Pad with the value of a black pixel after normalisation: the batch minimum.
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[rank::world]  # (B,)
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[rank::world]  # (B,)
    # The draws come from the CPU generator (reproducible anywhere); the indices go where x is.
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).to(x.device)  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).to(x.device)  # (B, 1, 1, W)
    out = padded.gather(2, rows.expand(b, x.shape[1], h, w + 2 * pad))
    out = out.gather(3, cols.expand(b, x.shape[1], h, w))  # (B, C, H, W)
    if mode == "crop_flip":
        flip = torch.rand(total, generator=generator)[rank::world] < 0.5  # (B,)
        out = torch.where(flip.view(b, 1, 1, 1).to(x.device), out.flip(3), out)
    return out
