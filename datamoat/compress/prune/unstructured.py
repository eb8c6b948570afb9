"""Global magnitude pruning: zero the smallest weights across all conv and linear layers.

Global (one threshold for the whole network) rather than per layer, because
layers differ in how much they can lose: a per-layer 90% would gut the small
first conv while leaving redundancy in the big flatten->hidden linear. BN
parameters and biases are left alone: they are few and every one matters.

Sparsity ramps up over `steps` rounds (cubic by default, as in Zhu & Gupta
2017: big cuts early while the network has slack, small ones at the end),
each followed by fine-tuning. `torch.nn.utils.prune` keeps a mask buffer and
recomputes ``weight = weight_orig * mask`` before every forward, so pruned
weights stay zero through fine-tuning; `prune.remove` makes it permanent.

The zeros only shrink the artifact through sparse storage (see `sparse`); a
dense runtime still multiplies by them, so latency does not improve.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

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
from datamoat.models.model import Model
from datamoat.models.sparse import sparse_state_bytes
from datamoat.models.zoo import build

__all__ = ["MagnitudeConfig", "magnitude_prune", "prunable_weights", "weight_sparsity", "sparsity_schedule"]


@dataclasses.dataclass
class MagnitudeConfig(Config):
    """Unstructured global magnitude pruning to `sparsity`, over `steps` prune + fine-tune rounds.

    `finetune` is each round's fine-tuning; round k seeds it with its seed + k - 1.

    >>> MagnitudeConfig(sparsity=0.9, steps=3).finetune.epochs
    1
    """

    # Version 2: the fine-tune fields moved into `finetune` (version 1 held them flat).
    VERSION: ClassVar[int] = 2

    sparsity: float = 0.9
    steps: int = 3
    schedule: str = "cubic"
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        s = float(self.sparsity)
        check(
            0.0 <= s < 1.0,
            f"sparsity must be in [0, 1), got {self.sparsity}: it is the fraction of weights zeroed, e.g. 0.9",
        )
        check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        check_choice("schedule", self.schedule, ("cubic", "linear"))

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        return nest_finetune(d) if version == 1 else super().upgrade(d, version)


def sparsity_schedule(final: float, step: int, steps: int, kind: str = "cubic") -> float:
    """Target sparsity after `step` of `steps` (1-based); reaches `final` at the last step.

    >>> [round(sparsity_schedule(0.9, k, 3), 3) for k in (1, 2, 3)]
    [0.633, 0.867, 0.9]
    >>> [round(sparsity_schedule(0.9, k, 3, "linear"), 3) for k in (1, 2, 3)]
    [0.3, 0.6, 0.9]
    """
    frac = step / steps
    return final * (1.0 - (1.0 - frac) ** 3) if kind == "cubic" else final * frac


def prunable_weights(net: nn.Module) -> list[tuple[nn.Conv2d | nn.Linear, str]]:
    """(module, "weight") for every Conv2d and Linear, in registration order."""
    return [(m, "weight") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weight_sparsity(net: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv and linear weights.

    >>> lin = nn.Linear(4, 2); _ = nn.init.zeros_(lin.weight[0])
    >>> weight_sparsity(lin)
    0.5
    """
    ws = [m.weight.detach() for m, _ in prunable_weights(net)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def _current_weight(m: nn.Conv2d | nn.Linear) -> torch.Tensor:
    # `m.weight` is refreshed only by a forward pass; after `train` reloads its
    # best state it can be stale, so rebuild it from the reparametrisation.
    if hasattr(m, "weight_orig"):
        # torch_prune's parameter and buffer, set as attributes: typed Tensor | Module
        return (cast(torch.Tensor, m.weight_orig) * cast(torch.Tensor, m.weight_mask)).detach()
    return m.weight.detach()


def magnitude_prune(
    model: Model, config: MagnitudeConfig, data: Dataset | None = None, *, latency: str = "onnxruntime"
) -> Model:
    """Zero the globally smallest conv/linear weights, fine-tuning between rounds.

    The input model is not modified. Use `prune(model, MagnitudeConfig(...))`.
    """
    need_data(config, data)
    check_choice("latency backend", latency, LATENCY_BACKENDS)
    before = measure(model, data)
    work = dataclasses.replace(model, net=copy.deepcopy(model.net), id=None)
    params = prunable_weights(work.net)
    total = sum(m.weight.numel() for m, _ in params)
    steps = []
    for k in range(1, config.steps + 1):
        target = sparsity_schedule(config.sparsity, k, config.steps, config.schedule)
        masked = sum(
            int((cast(torch.Tensor, m.weight_mask) == 0).sum()) for m, _ in params if hasattr(m, "weight_mask")
        )
        amount = round(target * total) - masked  # an int: how many more weights to zero
        if amount > 0:
            scores = {(m, n): _current_weight(m) for m, n in params}
            torch_prune.global_unstructured(
                params, pruning_method=torch_prune.L1Unstructured, importance_scores=scores, amount=amount
            )
        if config.finetune.epochs:
            assert data is not None
            work = finetune(work, data, config.finetune, seed_offset=k - 1)
        steps.append({"step": k, "target_sparsity": target, "val_accuracy": val_accuracy(work, data)})
    for m, name in params:
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, name)  # weight = weight_orig * mask, now a plain parameter
    # `remove` re-registers each weight after its bias; a fresh zoo net keeps the
    # usual state-dict order (and so the same bytes as any other saved model).
    net = build(work.config)
    net.load_state_dict(work.net.state_dict())
    with torch.no_grad():
        for m, _ in prunable_weights(net):
            # weight_orig * 0 is -0.0 for negative weights; sparse storage keeps
            # -0.0 as a value (its round trip is bit-exact), so write +0.0.
            m.weight.masked_fill_(m.weight == 0, 0.0)
    work = dataclasses.replace(work, net=net.eval())
    after = measure(work, data)
    report = compare(before, after)
    state = {k: v.detach() for k, v in work.net.state_dict().items()}
    report.update(
        {
            "method": "magnitude",
            "storage": "sparse",
            "bytes_after": len(sparse_state_bytes(state)),
            "dense_bytes_after": after["bytes"],
            "target_sparsity": config.sparsity,
            "sparsity": weight_sparsity(work.net),
            "steps": steps,
        }
    )
    # Sparse storage is what makes the zeros pay: save_model honours it.
    return dataclasses.replace(finish(model, work, config, data, report, latency), storage="sparse")
