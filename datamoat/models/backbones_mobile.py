"""MobileNetV3 (Small, Large) and EfficientNet-B0, laid out as torchvision lays them out.

Module names, registration order, channel widths, strides, BatchNorm eps and
momentum, dropout and stochastic-depth rates follow torchvision's
``models/mobilenetv3.py``, ``models/efficientnet.py`` and ``ops/misc.py``, so a
torchvision checkpoint loads with ``load_state_dict(strict=True)``. Build them
through `datamoat.models.backbones.build_backbone`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

__all__ = [
    "ConvNormActivation",
    "SqueezeExcitation",
    "StochasticDepth",
    "MobileNetV3",
    "EfficientNet",
    "make_divisible",
    "mobilenet_head_init",
    "efficientnet_head_init",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
]

Layer = Callable[..., nn.Module]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """`v` rounded to a multiple of `divisor`, never more than 10% below `v` (the TF/torchvision rule).

    >>> make_divisible(72 // 4), make_divisible(20)
    (24, 24)
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias when normalised) -> norm -> activation, as children ``0``, ``1``, ``2``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Layer | None = nn.BatchNorm2d,
        activation_layer: Layer | None = nn.ReLU,
    ) -> None:
        # "same" padding for odd kernels, as torchvision's Conv2dNormActivation
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=norm_layer is None)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(c_out))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = c_out


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigma(fc2(delta(fc1(mean_hw(x))))), with 1x1 convs named fc1/fc2."""

    def __init__(
        self, channels: int, squeeze: int, activation: Layer = nn.ReLU, scale_activation: Layer = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        s = self.activation(self.fc1(self.avgpool(x)))  # (B, S, 1, 1)
        s = self.scale_activation(self.fc2(s))  # (B, C, 1, 1)
        return s * x


class StochasticDepth(nn.Module):
    """Drops a residual branch per sample with probability `p` while training ("row" mode); identity at eval."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0 or mode not in ("row", "batch"):
            raise ValueError(f"stochastic depth needs 0 <= p <= 1 and mode row|batch, got p={p}, mode={mode!r}")
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(keep)  # (B, 1, 1, 1) or (1, 1, 1, 1)
        return x * noise.div_(keep) if keep > 0.0 else x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


def _init_weights(net: nn.Module, linear_init: Callable[[nn.Linear], None]) -> None:
    # torchvision's initialisation, so training from scratch starts where it does
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m)


def mobilenet_head_init(m: nn.Linear) -> None:
    """MobileNetV3's Linear init: N(0, 0.01) weights, zero bias."""
    nn.init.normal_(m.weight, 0, 0.01)
    nn.init.zeros_(m.bias)


def efficientnet_head_init(m: nn.Linear) -> None:
    """EfficientNet's Linear init: U(-1/sqrt(out), 1/sqrt(out)) weights, zero bias."""
    bound = 1.0 / math.sqrt(m.out_features)
    nn.init.uniform_(m.weight, -bound, bound)
    nn.init.zeros_(m.bias)


# (input, kernel, expanded, output, use SE, "HS" hardswish or "RE" relu, stride), Tables 1 and 2 of the paper
MobileSetting = tuple[int, int, int, int, bool, str, int]
MOBILENET_V3: dict[str, tuple[list[MobileSetting], int]] = {
    "large": (
        [
            (16, 3, 16, 16, False, "RE", 1),
            (16, 3, 64, 24, False, "RE", 2),
            (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2),
            (40, 5, 120, 40, True, "RE", 1),
            (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2),
            (80, 3, 200, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 480, 112, True, "HS", 1),
            (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2),
            (160, 5, 960, 160, True, "HS", 1),
            (160, 5, 960, 160, True, "HS", 1),
        ],
        1280,
    ),
    "small": (
        [
            (16, 3, 16, 16, True, "RE", 2),
            (16, 3, 72, 24, False, "RE", 2),
            (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2),
            (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1),
            (48, 5, 144, 48, True, "HS", 1),
            (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1),
            (96, 5, 576, 96, True, "HS", 1),
        ],
        1024,
    ),
}


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project, as ``block.N``."""

    def __init__(self, s: MobileSetting, norm_layer: Layer) -> None:
        super().__init__()
        c_in, k, c_exp, c_out, use_se, act_name, stride = s
        self.use_res_connect = stride == 1 and c_in == c_out
        act: Layer = nn.Hardswish if act_name == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if c_exp != c_in:
            layers.append(ConvNormActivation(c_in, c_exp, 1, norm_layer=norm_layer, activation_layer=act))
        layers.append(
            ConvNormActivation(c_exp, c_exp, k, stride, groups=c_exp, norm_layer=norm_layer, activation_layer=act)
        )
        if use_se:
            layers.append(SqueezeExcitation(c_exp, make_divisible(c_exp // 4), scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(c_exp, c_out, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3 ("Searching for MobileNetV3"): ``features``, ``avgpool``, ``classifier.0..3``."""

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        setting, last_channel = MOBILENET_V3[arch]
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's, matching TF's
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, setting[0][0], 3, 2, norm_layer=norm_layer, activation_layer=nn.Hardswish)
        ]
        layers += [InvertedResidual(s, norm_layer) for s in setting]
        c_last = setting[-1][3]
        layers.append(ConvNormActivation(c_last, 6 * c_last, 1, norm_layer=norm_layer, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * c_last, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self, mobilenet_head_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = self.avgpool(self.features(x))  # (B, 6 * c_last, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (B, K)


def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV3:
    """MobileNetV3-Small, torchvision's ``mobilenet_v3_small`` layout.

    >>> mobilenet_v3_small(10).eval()(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    return MobileNetV3("small", num_classes, in_channels)


def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV3:
    """MobileNetV3-Large, torchvision's ``mobilenet_v3_large`` layout.

    >>> mobilenet_v3_large(10, in_channels=1).eval()(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 10])
    """
    return MobileNetV3("large", num_classes, in_channels)


@dataclass
class MBConvSetting:
    """One EfficientNet stage (Table 1 of the paper): expansion, kernel, first stride, widths, repeats."""

    expand_ratio: float
    kernel: int
    stride: int
    c_in: int
    c_out: int
    num_layers: int


class MBConv(nn.Module):
    """EfficientNet block: [1x1 expand] -> depthwise kxk -> SE -> 1x1 project, residual through stochastic depth."""

    def __init__(self, s: MBConvSetting, sd_prob: float, norm_layer: Layer) -> None:
        super().__init__()
        self.use_res_connect = s.stride == 1 and s.c_in == s.c_out
        c_exp = make_divisible(s.c_in * s.expand_ratio)
        layers: list[nn.Module] = []
        if c_exp != s.c_in:
            layers.append(ConvNormActivation(s.c_in, c_exp, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(
            ConvNormActivation(c_exp, c_exp, s.kernel, s.stride, c_exp, norm_layer=norm_layer, activation_layer=nn.SiLU)
        )
        # squeeze from the block's input width, not the expanded one, as torchvision (and the paper) do
        layers.append(SqueezeExcitation(c_exp, max(1, s.c_in // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(ConvNormActivation(c_exp, s.c_out, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")
        self.out_channels = s.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


EFFICIENTNET_B0 = [
    MBConvSetting(1, 3, 1, 32, 16, 1),
    MBConvSetting(6, 3, 2, 16, 24, 2),
    MBConvSetting(6, 5, 2, 24, 40, 2),
    MBConvSetting(6, 3, 2, 40, 80, 3),
    MBConvSetting(6, 5, 1, 80, 112, 3),
    MBConvSetting(6, 5, 2, 112, 192, 4),
    MBConvSetting(6, 3, 1, 192, 320, 1),
]


class EfficientNet(nn.Module):
    """EfficientNet (v1) with torchvision's layout: ``features.0..8``, ``avgpool``, ``classifier.0/.1``."""

    def __init__(
        self,
        setting: list[MBConvSetting],
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
    ) -> None:
        super().__init__()
        norm_layer: Layer = nn.BatchNorm2d  # B0-B4 keep PyTorch's defaults; only B5-B7 use eps=1e-3
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, setting[0].c_in, 3, 2, norm_layer=norm_layer, activation_layer=nn.SiLU)
        ]
        total = sum(s.num_layers for s in setting)
        block_id = 0
        for s in setting:
            stage: list[nn.Module] = []
            for _ in range(s.num_layers):
                cfg = copy.copy(s)
                if stage:  # later blocks of a stage keep the width and the resolution
                    cfg.c_in, cfg.stride = cfg.c_out, 1
                # the drop rate grows linearly with depth (same expression as torchvision: same floats)
                stage.append(MBConv(cfg, stochastic_depth_prob * float(block_id) / total, norm_layer))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        c_last = setting[-1].c_out
        layers.append(ConvNormActivation(c_last, 4 * c_last, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(4 * c_last, num_classes))
        _init_weights(self, efficientnet_head_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = self.avgpool(self.features(x))  # (B, 4 * c_last, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (B, K)


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3) -> EfficientNet:
    """EfficientNet-B0, torchvision's ``efficientnet_b0`` layout (dropout 0.2, stochastic depth 0.2).

    >>> efficientnet_b0(10).eval()(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    return EfficientNet(EFFICIENTNET_B0, num_classes, in_channels)
