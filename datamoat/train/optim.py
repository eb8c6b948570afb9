"""The optimiser and learning-rate schedule of `datamoat.train.loop.train`: parameter groups (no
weight decay on biases and norms; the classifier apart when the body learns slower), and
one-cycle, cosine or flat schedules with an optional linear warm-up."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["head_parameters", "make_optimizer", "make_scheduler"]

# `cfg` below is a `datamoat.train.loop.TrainConfig`; typed as Any so this module does not import the loop.


def head_parameters(net: torch.nn.Module) -> list[str]:
    """Names of the classifier's parameters: those of the network's last Linear layer.

    >>> from datamoat.models.backbones import build_backbone
    >>> head_parameters(build_backbone("resnet18", num_classes=3))
    ['fc.weight', 'fc.bias']
    """
    last = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    return [f"{last}.{p}" for p, _ in net.get_submodule(last).named_parameters()]


def make_optimizer(net: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (the usual practice).
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.body_lr_scale != 1.0:  # the head first: the curve records group 0's learning rate
        head = set(head_parameters(net))
        named = list(net.named_parameters())
        groups = [
            {"params": [p for n, p in named if n in head and p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if n in head and p.ndim <= 1], "weight_decay": 0.0},
            {"params": [p for n, p in named if n not in head and p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if n not in head and p.ndim <= 1], "weight_decay": 0.0},
        ]
        for g in groups[2:]:
            g["lr"] = cfg.lr * cfg.body_lr_scale
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Any, total_steps: int) -> Any:
    if cfg.schedule == "onecycle":
        peaks = [g.get("lr", cfg.lr) for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total_steps, pct_start=0.15)
    warm = int(round(cfg.warmup_epochs * total_steps / cfg.epochs))
    if warm:
        import math

        cosine = cfg.schedule == "cosine"

        def factor(step: int) -> float:  # linear ramp to the peak, then cosine decay (or flat) over the rest
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm))) if cosine else 1.0

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
