"""`count_flops`: multiply-accumulates of one forward pass, from the layers that matter.

"FLOPs" here means multiply-accumulates (MACs), the convention of most
model-compression papers: multiply by 2 for floating-point operations. Only
Conv2d and Linear layers are counted. BatchNorm folds into the preceding conv
at export, and ReLU, pooling and the residual additions cost one operation per
activation, well under 1% of a conv's MACs in the zoo, so they are left out.

The count comes from forward hooks on one real example, so it follows
whatever the network really does (pooling, strides, flatten sizes) instead of
re-deriving shapes from the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

__all__ = ["count_flops"]


def count_flops(model_or_net: object, input_shape: Sequence[int] | None = None, *, nonzero: bool = False) -> int:
    """Multiply-accumulates of a forward pass on one example of `input_shape` (C, H, W).

    `model_or_net` is a `datamoat.models.Model` (then `input_shape` defaults to
    its config's) or an `nn.Module`. With `nonzero=True` only MACs whose weight
    is nonzero are counted: what a sparse kernel could skip after magnitude
    pruning (a dense runtime still does them all).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    >>> count_flops(net, (1, 4, 4))  # conv 4*4 positions * 2*1*3*3, linear 32*3
    384
    """
    net = cast(nn.Module, getattr(model_or_net, "net", model_or_net))
    if input_shape is None:
        cfg = getattr(model_or_net, "config", None)
        if cfg is None:
            raise TypeError("count_flops needs input_shape (C, H, W) when given a bare nn.Module")
        input_shape = (cfg.in_channels, *cfg.image_size)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:  # a batch shape: count for one example
        shape = shape[1:]
    total = 0

    def weight_count(m: nn.Module) -> int:
        # A Conv2d's or Linear's (typed Tensor | Module by nn.Module.__getattr__);
        # computed by prune's pre-hook when pruning is active.
        w = cast(torch.Tensor, m.weight).detach()
        return int(torch.count_nonzero(w)) if nonzero else w.numel()

    def conv_hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        # Each output position of each filter costs (C_in / groups) * kh * kw MACs;
        # weight.numel() = C_out * (C_in / groups) * kh * kw, so per position it is numel.
        total += out.shape[-2] * out.shape[-1] * weight_count(m)  # out: (1, C_out, H_out, W_out)

    def linear_hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        rows = out.numel() // out.shape[-1]  # leading dims: 1 for (1, out_features)
        total += rows * weight_count(m)

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = net.training
    net.eval()  # BatchNorm must not update its running statistics here
    try:
        with torch.no_grad():
            net(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return total
