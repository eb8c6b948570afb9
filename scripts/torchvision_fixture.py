"""Regenerate tests/models/torchvision_shapes.json from torchvision's own model source.

torchvision cannot be installed beside this project's torch, so this script
executes the model files of a torchvision source tree (a git checkout, or an
unpacked wheel: the folder that holds ``torchvision/``) with the installed
torch, builds resnet18, resnet50, mobilenet_v3_small, mobilenet_v3_large and
efficientnet_b0 (num_classes=1000, no weights) and records, per model, every
state_dict entry as [name, shape] in order, every leaf module with the
settings that shapes do not show (conv stride/padding/groups, BatchNorm
eps/momentum, dropout and stochastic-depth rates), the parameter count, and a
forward probe: logits on a fixed input under deterministic synthetic weights.
`datamoat.models.backbones` is tested against that file.

Executed as torchvision ships them: models/resnet.py, mobilenetv3.py,
efficientnet.py, _api.py, _meta.py, _utils.py, ops/misc.py,
ops/stochastic_depth.py, utils.py, _utils.py, _internally_replaced_utils.py.
Stubbed, and nothing else: the ``__init__`` of the packages torchvision,
torchvision.models, torchvision.ops and torchvision.transforms (they load the
compiled extension, datasets, io and every other model; here they are empty
packages over the real folders, and torchvision.ops re-exports the real
StochasticDepth as its ``__init__`` does), and torchvision.transforms._presets,
whose ImageClassification/InterpolationMode only describe the preprocessing
attached to the pretrained-weights enums.

The committed fixture was derived from torchvision 0.29.1, git commit
1f1a920d685d46dfbe187934b785b7ecb7a182f2 (the source files of the PyPI wheel
torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl, whose
torchvision/version.py names that commit), with torch 2.13.0+cpu.

    python scripts/torchvision_fixture.py /path/to/vision            # writes the fixture
    python scripts/torchvision_fixture.py /path/to/vision --check    # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "models" / "torchvision_shapes.json"


def _round(x: float) -> float:
    # Both sides compute rates the same way; rounding keeps JSON round trips exact.
    return round(float(x), 9)


def leaf(name: str, m: nn.Module) -> list[Any]:
    """[name, type, settings...] for one leaf module: what state_dict shapes do not pin down."""
    kind = type(m).__name__
    if isinstance(m, nn.Conv2d):
        extra: list[Any] = [m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride)]
        extra += [list(m.padding) if not isinstance(m.padding, str) else m.padding, list(m.dilation), m.groups]
        return [name, kind, *extra, m.bias is not None]
    if isinstance(m, nn.BatchNorm2d):
        return [name, kind, m.num_features, _round(m.eps), _round(m.momentum or 0.0), m.affine]
    if isinstance(m, nn.Linear):
        return [name, kind, m.in_features, m.out_features, m.bias is not None]
    if isinstance(m, nn.Dropout):
        return [name, kind, _round(m.p)]
    if isinstance(m, nn.MaxPool2d):
        return [name, kind, m.kernel_size, m.stride, m.padding]
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size
        return [name, kind, list(size) if isinstance(size, tuple) else [size, size]]
    if kind == "StochasticDepth":
        return [name, kind, _round(m.p), m.mode]  # type: ignore[arg-type]
    return [name, kind]  # activations: the type is the setting


def describe(net: nn.Module) -> dict[str, Any]:
    """The fixture entry for one network: ordered state_dict [name, shape], leaf modules, parameter count."""
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "state": [[k, list(v.shape)] for k, v in net.state_dict().items()],
        "modules": [leaf(n, m) for n, m in net.named_modules() if n and not any(True for _ in m.children())],
    }


def synthetic_state(state: list[list[Any]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled weights for the ordered [name, shape] list `state` (no real weights needed)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in state:
        if name.endswith("num_batches_tracked"):
            t = torch.tensor(0)
        elif name.endswith("running_var") or (len(shape) == 1 and name.endswith(".weight")):
            t = torch.rand(shape, generator=g) * 0.5 + 0.75  # BatchNorm variances and scales near 1
        elif len(shape) == 1:  # BatchNorm means and every bias: small, or they drown the input's signal
            t = torch.randn(shape, generator=g) * 0.01
        else:  # conv / linear weights: He scale keeps the input visible in the logits of all five nets
            t = torch.randn(shape, generator=g) * (2.0 / math.prod(shape[1:])) ** 0.5
        out[name] = t
    return out


def probe(net: nn.Module, state: list[list[Any]]) -> list[list[float]]:
    """Logits (every 25th class) of `net` in eval mode, given `synthetic_state(state)` and a fixed
    (2, 3, 64, 64) input: two implementations that compute the same function give the same numbers."""
    net.load_state_dict(synthetic_state(state), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # (B, C, H, W)
    with torch.no_grad():
        out = net.eval()(x)  # (B, K)
    return [[float(f"{v:.7g}") for v in row] for row in out[:, ::25].tolist()]


def _package(name: str, path: Path) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]  # submodules load from the real files
    sys.modules[name] = mod
    return mod


def load_torchvision_models(root: Path) -> dict[str, Any]:
    """Builders from the torchvision source under `root` (the folder holding ``torchvision/``)."""
    pkg = root / "torchvision"
    if not (pkg / "models" / "resnet.py").is_file():
        raise SystemExit(f"{root} has no torchvision/models/resnet.py: give a torchvision checkout")
    if "torchvision" in sys.modules:
        raise SystemExit("torchvision is already imported: run this script in a fresh process")
    _package("torchvision", pkg)
    _package("torchvision.models", pkg / "models")
    ops = _package("torchvision.ops", pkg / "ops")
    _package("torchvision.transforms", pkg / "transforms")

    presets = types.ModuleType("torchvision.transforms._presets")

    class ImageClassification:  # preprocessing metadata of the weights enums only
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    presets.ImageClassification = ImageClassification  # type: ignore[attr-defined]
    presets.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")  # type: ignore[attr-defined]
    sys.modules[presets.__name__] = presets

    sd = importlib.import_module("torchvision.ops.stochastic_depth")
    ops.StochasticDepth, ops.stochastic_depth = sd.StochasticDepth, sd.stochastic_depth  # type: ignore[attr-defined]
    ops.misc = importlib.import_module("torchvision.ops.misc")  # type: ignore[attr-defined]

    resnet = importlib.import_module("torchvision.models.resnet")
    mobilenetv3 = importlib.import_module("torchvision.models.mobilenetv3")
    efficientnet = importlib.import_module("torchvision.models.efficientnet")
    return {
        "resnet18": resnet.resnet18,
        "resnet50": resnet.resnet50,
        "mobilenet_v3_small": mobilenetv3.mobilenet_v3_small,
        "mobilenet_v3_large": mobilenetv3.mobilenet_v3_large,
        "efficientnet_b0": efficientnet.efficientnet_b0,
    }


def source_info(root: Path) -> dict[str, str]:
    """torchvision's version and git commit: version.py in a wheel, git in a checkout."""
    info = {"version": "unknown", "commit": "unknown"}
    version_py = root / "torchvision" / "version.py"
    if version_py.is_file():
        for line in version_py.read_text().splitlines():
            key, _, value = line.partition(" = ")
            if key in ("__version__", "git_version"):
                info["version" if key == "__version__" else "commit"] = value.strip().strip("'\"")
    elif (root / "version.txt").is_file():
        info["version"] = (root / "version.txt").read_text().strip()
    if info["commit"] == "unknown" and (root / ".git").exists():
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        info["commit"] = out.stdout.strip() or "unknown"
    return info


def render(fixture: dict[str, Any]) -> str:
    """Compact JSON, one model a line, so a diff names the model that changed."""
    lines = [f'"source":{json.dumps(fixture["source"], sort_keys=True)},', '"models":{']
    names = list(fixture["models"])
    for i, name in enumerate(names):
        body = json.dumps(fixture["models"][name], separators=(",", ":"))
        lines.append(f'"{name}":{body}' + ("," if i < len(names) - 1 else ""))
    return "{\n" + "\n".join(lines) + "\n}}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder holding torchvision/ (a checkout or an unpacked wheel)")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args(argv)
    builders = load_torchvision_models(args.root)
    fixture: dict[str, Any] = {"source": source_info(args.root), "models": {}}
    for n in MODELS:
        net = builders[n]()
        entry = describe(net)
        entry["probe"] = probe(net, entry["state"])
        fixture["models"][n] = entry
    text = render(fixture)
    assert json.loads(text) == fixture
    if args.check:
        same = args.out.is_file() and json.loads(args.out.read_text())["models"] == fixture["models"]
        print(f"{args.out}: {'matches' if same else 'DIFFERS from'} torchvision {fixture['source']}")
        return 0 if same else 1
    args.out.write_text(text)
    for n in MODELS:
        m = fixture["models"][n]
        print(f"{n}: {len(m['state'])} state entries, {len(m['modules'])} leaf modules, {m['params']:,} params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
