"""The model zoo, every network rebuilt from a config.

- Small architectures (`mlp`, `cnn_*`, `resnet`) whose layer widths are
  explicit lists, so a structurally pruned model (fewer channels in some
  layers) is just another config and rebuilds exactly from the catalog.
- Photo backbones a team starts from (`resnet18`, `resnet50`,
  `mobilenet_v3_small`, `mobilenet_v3_large`, `efficientnet_b0`), with
  torchvision's parameter names, so its published checkpoints load
  (`datamoat.models.backbones`, `datamoat train --weights FILE`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from datamoat.configs import Config, check
from datamoat.errors import BadInput
from datamoat.models.backbones import BACKBONES, build_backbone

__all__ = ["ModelConfig", "ARCHS", "build", "preset", "param_count", "MLP", "ConvNet", "ResNet"]


@dataclasses.dataclass
class ModelConfig(Config):
    """Architecture config. `channels` are conv widths, `hidden` linear widths."""

    arch: str = "cnn_medium"
    in_channels: int = 1
    image_size: tuple[int, int] = (28, 28)
    num_classes: int = 10
    channels: tuple[int, ...] = ()
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    pool_every: int = 1
    # BatchNorm momentum; 0 keeps the architecture's own. MobileNetV3's published 0.01 lets a short
    # from-scratch run's running statistics lag so far that eval mode predicts one class.
    bn_momentum: float = 0.0

    def validate(self) -> None:
        check(
            self.arch in ARCHS,
            f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHS)}",
        )
        self.image_size = tuple(self.image_size)  # type: ignore[assignment]
        self.channels = tuple(int(c) for c in self.channels)
        self.hidden = tuple(int(h) for h in self.hidden)
        check(self.num_classes >= 2, "num_classes must be at least 2")
        check(all(c >= 1 for c in self.channels + self.hidden), "layer widths must be at least 1")
        check(0.0 <= self.dropout < 1.0, f"dropout {self.dropout} must be in [0, 1)")
        check(0.0 <= self.bn_momentum <= 1.0, f"bn_momentum {self.bn_momentum} must be in [0, 1] (0: the arch's own)")


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers, then the classifier."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, w = cfg.image_size
        layers: list[nn.Module] = [nn.Flatten()]
        width = cfg.in_channels * h * w
        for hid in cfg.hidden:
            layers += [nn.Linear(width, hid), nn.ReLU(inplace=True)]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = hid
        layers.append(nn.Linear(width, cfg.num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(x)


class ConvNet(nn.Module):
    """Conv3x3-BN-ReLU blocks with 2x2 max-pooling every `pool_every` blocks,
    then a flatten and Linear-ReLU-Dropout layers before the classifier."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, w = cfg.image_size
        feats: list[nn.Module] = []
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.channels):
            feats += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if (i + 1) % cfg.pool_every == 0 and min(h, w) >= 2:
                feats.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c
        self.features = nn.Sequential(*feats)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c_in * h * w
        for hid in cfg.hidden:
            layers += [nn.Linear(width, hid), nn.ReLU(inplace=True)]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = hid
        layers.append(nn.Linear(width, cfg.num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: a stem conv, then one BasicBlock per stage.

    `channels` is (stem, stage1_mid, stage1_out, stage2_mid, stage2_out, ...):
    each block's inner width is free, which is what structured pruning shrinks,
    while block outputs stay tied to the residual path.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if len(cfg.channels) < 3 or len(cfg.channels) % 2 == 0:
            raise BadInput("resnet channels must be (stem, mid1, out1, mid2, out2, ...)")
        stem = cfg.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        blocks = []
        c_in = stem
        for i in range(1, len(cfg.channels), 2):
            mid, out = cfg.channels[i], cfg.channels[i + 1]
            blocks.append(BasicBlock(c_in, mid, out, stride=1 if i == 1 else 2))
            c_in = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(self.pool(self.blocks(self.stem(x))))


def _backbone(name: str) -> Callable[[ModelConfig], nn.Module]:
    def make(cfg: ModelConfig) -> nn.Module:
        net = build_backbone(name, num_classes=cfg.num_classes, in_channels=cfg.in_channels)
        if cfg.bn_momentum:  # momentum is no weight: published checkpoints load the same
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = cfg.bn_momentum
        return net

    return make


# name -> (builder, preset fields). The small ones' widths suit 28x28 grayscale on 2 cores; a
# backbone's layers are fixed by its published definition (its config holds no widths).
ARCHS: dict[str, tuple[Callable[[ModelConfig], nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {"hidden": (256, 128), "dropout": 0.1}),
    "cnn_small": (ConvNet, {"channels": (16, 32), "hidden": (64,)}),
    "cnn_medium": (ConvNet, {"channels": (32, 64), "hidden": (128,), "dropout": 0.25}),
    "cnn_large": (ConvNet, {"channels": (32, 32, 64, 64), "hidden": (256,), "dropout": 0.3, "pool_every": 2}),
    "resnet": (ResNet, {"channels": (32, 32, 32, 64, 64, 128, 128)}),
    **{name: (_backbone(name), {"bn_momentum": 0.1 if "mobilenet" in name else 0.0}) for name in BACKBONES},
}


def preset(
    arch: str, *, in_channels: int, image_size: tuple[int, int], num_classes: int, **overrides: Any
) -> ModelConfig:
    """The zoo's config for `arch`, shaped for the given input and classes.

    >>> preset("cnn_small", in_channels=1, image_size=(28, 28), num_classes=10).channels
    (16, 32)
    """
    if arch not in ARCHS:
        raise BadInput(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    fields = {**ARCHS[arch][1], **overrides}
    # validate() turns image_size into a tuple, as it does for a config loaded from JSON
    return ModelConfig(arch=arch, in_channels=in_channels, image_size=image_size, num_classes=num_classes, **fields)


def build(cfg: ModelConfig) -> nn.Module:
    """Instantiate the network for a config.

    >>> net = build(preset("mlp", in_channels=1, image_size=(8, 8), num_classes=3))
    >>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
    (2, 3)
    """
    return ARCHS[cfg.arch][0](cfg)


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
