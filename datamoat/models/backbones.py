"""Photo backbones whose state_dicts are torchvision's, name for name and shape for shape.

torchvision cannot be installed beside this project's torch (and timm needs
it), so the five backbones a photo model usually starts from are written here
with torchvision's attribute structure: a checkpoint saved from
``torchvision.models.resnet18()`` (or fetched from its weight URLs) loads into
``build_backbone("resnet18")`` with ``load_state_dict(strict=True)``, or with
`load_weights`, which also checks it and skips the classifier when fine-tuning
to other classes. tests/models/torchvision_shapes.json, derived from
torchvision's own source, pins the layout.

>>> net = build_backbone("resnet18", num_classes=10)
>>> head_name("resnet18"), net.fc.out_features
('fc', 10)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput
from datamoat.models.backbones_mobile import (
    efficientnet_b0,
    efficientnet_head_init,
    mobilenet_head_init,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from datamoat.models.weights import load_weights

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "build_backbone",
    "head_name",
    "load_weights",
    "replace_head",
    "resnet18",
    "resnet50",
]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); ``downsample`` = 1x1 conv + BN when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride: "ResNet v1.5", as torchvision) -> 1x1 expand by 4."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, 4 * planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet ("Deep Residual Learning"): conv1, bn1, maxpool, layer1..4, avgpool, fc."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's init; the Linear keeps PyTorch's default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512 * expansion, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512 * expansion)
        return self.fc(x)  # (B, K)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18, torchvision's ``resnet18`` layout.

    >>> resnet18(10).eval()(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50, torchvision's ``resnet50`` layout (stride on the 3x3 conv).

    >>> resnet50(10, in_channels=1).eval()(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 10])
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


Builder = Callable[[int, int], nn.Module]
# name -> (builder(num_classes, in_channels), state_dict prefix of the final classifier Linear)
_ZOO: dict[str, tuple[Builder, str]] = {
    "resnet18": (resnet18, "fc"),
    "resnet50": (resnet50, "fc"),
    "mobilenet_v3_small": (mobilenet_v3_small, "classifier.3"),
    "mobilenet_v3_large": (mobilenet_v3_large, "classifier.3"),
    "efficientnet_b0": (efficientnet_b0, "classifier.1"),
}
BACKBONES: dict[str, Builder] = {name: builder for name, (builder, _) in _ZOO.items()}


def build_backbone(name: str, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """A freshly initialised backbone `name` (a key of `BACKBONES`) with torchvision's state_dict layout.

    `in_channels` other than 3 changes only the first conv's weight shape, so
    an RGB checkpoint no longer fits it there (load it with strict checks off
    for that key, or average its first conv over the colour axis yourself).

    >>> net = build_backbone("resnet18", num_classes=10).eval()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> build_backbone("vgg16")
    Traceback (most recent call last):
    ...
    datamoat.errors.BadInput: unknown backbone 'vgg16': choose one of resnet18, resnet50, mobilenet_v3_small, ...
    """
    check_choice("backbone", name, tuple(BACKBONES))
    check(num_classes >= 1, f"num_classes must be at least 1, got {num_classes}")
    check(in_channels >= 1, f"in_channels must be at least 1, got {in_channels}")
    return BACKBONES[name](num_classes, in_channels)


def head_name(name: str) -> str:
    """The state_dict prefix of backbone `name`'s final classifier layer (what `load_weights(head=...)` skips).

    >>> [head_name(n) for n in ("resnet50", "mobilenet_v3_small", "efficientnet_b0")]
    ['fc', 'classifier.3', 'classifier.1']
    """
    check_choice("backbone", name, tuple(BACKBONES))
    return _ZOO[name][1]


def replace_head(net: nn.Module, name: str, num_classes: int) -> nn.Module:
    """Swap backbone `name`'s final Linear in `net` for a fresh one with `num_classes` outputs; returns `net`.

    The new layer is initialised as the architecture initialises it and sits
    on the old one's device and dtype; everything else is untouched.

    >>> net = replace_head(build_backbone("resnet18"), "resnet18", 5).eval()
    >>> net.fc, net(torch.zeros(1, 3, 32, 32)).shape
    (Linear(in_features=512, out_features=5, bias=True), torch.Size([1, 5]))
    """
    check(num_classes >= 1, f"num_classes must be at least 1, got {num_classes}")
    path = head_name(name)
    parent_path, _, attr = path.rpartition(".")
    try:
        parent = net.get_submodule(parent_path)
        old = parent.get_submodule(attr)
    except AttributeError as e:
        raise BadInput(f"the network has no {path!r} layer: give the backbone name it was built as") from e
    if not isinstance(old, nn.Linear):
        raise BadInput(f"{path!r} is a {type(old).__name__}, not a Linear: give the backbone name it was built as")
    new = nn.Linear(old.in_features, num_classes)
    if name.startswith("mobilenet"):
        mobilenet_head_init(new)
    elif name.startswith("efficientnet"):
        efficientnet_head_init(new)
    setattr(parent, attr, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return net
