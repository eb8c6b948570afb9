"""Structured pruning: remove whole conv filters and hidden units, leaving a smaller dense model.

The result is an ordinary zoo network with narrower `channels`/`hidden`, so it
rebuilds from its config, exports to ONNX and runs faster on any runtime. The
kept slices are copied from the original: a conv's output filters, the
BatchNorm after it, the next conv's input channels, and for the last conv the
first Linear's input columns. Flatten is channel-major, so kept channel c owns
input features c*H*W ... (c+1)*H*W - 1. Classifier outputs are never removed.

Ranking. A conv filter's score is the `norm` (l1 or l2) of the filter with its
BatchNorm folded in, ``w * gamma / sqrt(running_var + eps)``: BN rescales every
channel, so raw weight norms are not comparable across channels, and the
folded filter is what actually runs after export. A filter whose BN gamma is 0
scores 0 whatever its weights. Hidden linear units are ranked by the norm of
their weight row.

ResNet: only each block's inner width (conv1's outputs, bn1, conv2's inputs)
is pruned. Block outputs are added to the shortcut, so removing one of their
channels would have to remove it from every block the residual stream passes
through; the inner width is free, which is why the zoo's config lists it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, cast

import torch
from torch import nn

from datamoat.compress.prune.common import (
    LATENCY_BACKENDS,
    FinetuneConfig,
    compare,
    finetune,
    finish,
    measure,
    need_data,
    nest_finetune,
    val_accuracy,
)
from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.models.zoo import MLP, BasicBlock, ConvNet, ModelConfig, ResNet, build

__all__ = ["StructuredConfig", "structured_prune", "filter_scores", "slice_network", "unprunable_reason"]


@dataclasses.dataclass
class StructuredConfig(Config):
    """Remove `ratio` of the filters/units of every prunable layer, lowest `norm` first, then fine-tune.

    >>> StructuredConfig(ratio=0.5, norm="l2", finetune=FinetuneConfig(epochs=0)).finetune.epochs
    0
    """

    # Version 2: the fine-tune fields moved into `finetune` (version 1 held them flat).
    VERSION: ClassVar[int] = 2

    ratio: float = 0.5
    norm: str = "l1"
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        r = float(self.ratio)
        check(
            0.0 <= r < 1.0,
            f"ratio must be in [0, 1), got {self.ratio}: it is the fraction of channels removed per layer",
        )
        check_choice("norm", self.norm, ("l1", "l2"))

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        return nest_finetune(d) if version == 1 else super().upgrade(d, version)


def filter_scores(layer: nn.Module, bn: nn.BatchNorm2d | None, norm: str) -> torch.Tensor:
    """One score per output filter/unit, (C_out,): the p-norm of the (BN-folded) weights.

    >>> lin = nn.Linear(2, 2); _ = lin.weight.data.copy_(torch.tensor([[3.0, -4.0], [1.0, 0.0]]))
    >>> filter_scores(lin, None, "l2").tolist()
    [5.0, 1.0]
    """
    # A Conv2d's or Linear's weight; nn.Module.__getattr__ types it Tensor | Module.
    w = cast(torch.Tensor, layer.weight).detach().flatten(1)  # (C_out, C_in * kh * kw)
    if bn is not None:
        assert bn.running_var is not None  # the zoo's BatchNorm layers track running stats
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        w = w * scale[:, None]
    return w.abs().sum(1) if norm == "l1" else w.pow(2).sum(1).sqrt()


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the filters to keep, ascending: all but the floor(ratio * n) lowest-scored."""
    n = len(scores)
    n_keep = max(1, n - int(ratio * n))
    order = torch.argsort(scores, descending=True, stable=True)  # ties: the lower index is kept
    return order[:n_keep].sort().values


def _sliced(t: torch.Tensor, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> torch.Tensor:
    t = t.detach()
    if out is not None and t.ndim >= 1:
        t = t.index_select(0, out)
    if inp is not None and t.ndim >= 2:
        t = t.index_select(1, inp)
    return t.clone()


def _put(state: dict, prefix: str, module: nn.Module, out: torch.Tensor | None, inp: torch.Tensor | None) -> None:
    for key, t in module.state_dict().items():  # weight, bias, running stats, num_batches_tracked
        state[f"{prefix}.{key}"] = _sliced(t, out, inp) if t.ndim else t.clone()


def _slice_chain(net: nn.Module, cfg: ModelConfig, ratio: float, norm: str) -> tuple[ModelConfig, dict]:
    """ConvNet / MLP: convs (+BN) then linears, each feeding the next."""
    named = dict(net.named_modules())
    convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)]
    bns = [n for n, m in named.items() if isinstance(m, nn.BatchNorm2d)]
    linears = [n for n, m in named.items() if isinstance(m, nn.Linear)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    prev: torch.Tensor | None = None  # kept inputs of the next layer; None = all
    keep: torch.Tensor | None
    kept_channels = []
    for conv, bn in zip(convs, bns, strict=True):
        keep = _keep(filter_scores(named[conv], named[bn], norm), ratio)
        _put(state, conv, named[conv], keep, prev)
        _put(state, bn, named[bn], keep, None)
        kept_channels.append(len(keep))
        prev = keep
    if prev is not None:  # flatten: kept channel c -> features c*HW ... (c+1)*HW - 1
        hw = named[linears[0]].in_features // named[convs[-1]].out_channels
        prev = (prev[:, None] * hw + torch.arange(hw)).flatten()  # (C_kept * H * W,)
    kept_hidden = []
    for i, lin in enumerate(linears):
        last = i == len(linears) - 1
        keep = None if last else _keep(filter_scores(named[lin], None, norm), ratio)
        _put(state, lin, named[lin], keep, prev)
        if keep is not None:
            kept_hidden.append(len(keep))
        prev = keep
    return cfg.replace(channels=tuple(kept_channels), hidden=tuple(kept_hidden)), state


def _slice_resnet(net: ResNet, cfg: ModelConfig, ratio: float, norm: str) -> tuple[ModelConfig, dict]:
    """ResNet: each block's inner width only; the residual stream keeps its channels."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    channels = list(cfg.channels)
    blocks = [(n, m) for n, m in net.named_modules() if isinstance(m, BasicBlock)]
    for i, (name, block) in enumerate(blocks):
        keep = _keep(filter_scores(block.conv1, block.bn1, norm), ratio)
        _put(state, f"{name}.conv1", block.conv1, keep, None)
        _put(state, f"{name}.bn1", block.bn1, keep, None)
        _put(state, f"{name}.conv2", block.conv2, None, keep)
        channels[1 + 2 * i] = len(keep)  # (stem, mid1, out1, mid2, out2, ...)
    return cfg.replace(channels=tuple(channels)), state


def unprunable_reason(net: nn.Module) -> str | None:
    """Why `slice_network` cannot narrow `net`, or None when it can.

    >>> from datamoat.models import preset
    >>> unprunable_reason(build(preset("cnn_small", in_channels=1, image_size=(8, 8), num_classes=3))) is None
    True
    """
    if isinstance(net, (ResNet, ConvNet, MLP)):
        return None
    return f"structured pruning supports the zoo's mlp, cnn_* and resnet, not {type(net).__name__}"


def slice_network(net: nn.Module, cfg: ModelConfig, ratio: float, norm: str = "l1") -> tuple[ModelConfig, nn.Module]:
    """The narrower config and a network holding the kept slices of `net`'s weights.

    >>> from datamoat.models import preset
    >>> cfg = preset("cnn_small", in_channels=1, image_size=(8, 8), num_classes=3)
    >>> small_cfg, small = slice_network(build(cfg), cfg, 0.5)
    >>> small_cfg.channels, small_cfg.hidden
    ((8, 16), (32,))
    """
    why_not = unprunable_reason(net)
    if why_not:
        raise BadInput(why_not)
    if isinstance(net, ResNet):
        new_cfg, state = _slice_resnet(net, cfg, ratio, norm)
    else:
        new_cfg, state = _slice_chain(net, cfg, ratio, norm)
    small = build(new_cfg)
    small.load_state_dict(state)  # strict: any shape slip fails here, not silently later
    return new_cfg, small.eval()


def _widths(cfg: ModelConfig) -> dict[str, list[int]]:
    return {"channels": list(cfg.channels), "hidden": list(cfg.hidden)}


def _prunable_width(cfg: ModelConfig) -> int:
    """Total width of the layers structured pruning may narrow."""
    if cfg.arch == "resnet":
        return sum(cfg.channels[1::2])  # block inner widths
    return sum(cfg.channels) + sum(cfg.hidden)


def structured_prune(
    model: Model, config: StructuredConfig, data: Dataset | None = None, *, latency: str = "onnxruntime"
) -> Model:
    """A smaller dense model: `ratio` of each prunable layer's filters removed, then fine-tuned.

    The input model is not modified. Use `prune(model, StructuredConfig(...))`.
    """
    need_data(config, data)
    check_choice("latency backend", latency, LATENCY_BACKENDS)
    before = measure(model, data)
    new_cfg, net = slice_network(model.net, model.config, config.ratio, config.norm)
    pruned = dataclasses.replace(model, net=net, config=new_cfg, id=None)
    acc_pruned = val_accuracy(pruned, data)
    if config.finetune.epochs:
        assert data is not None
        pruned = finetune(pruned, data, config.finetune)
    after = measure(pruned, data)
    total, kept = _prunable_width(model.config), _prunable_width(new_cfg)
    report = compare(before, after)
    report.update(
        {
            "method": "structured",
            "storage": "dense",
            "val_accuracy_pruned": acc_pruned,
            "channels_removed_fraction": (total - kept) / max(total, 1),
            "widths_before": _widths(model.config),
            "widths_after": _widths(new_cfg),
        }
    )
    return finish(model, pruned, config, data, report, latency)
