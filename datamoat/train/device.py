"""Where a model runs, and in which precision: `--device auto|cpu|cuda|mps`, `--precision`.

`auto` takes CUDA where present, else Apple's MPS, else the CPU; on the CPU everything stays fp32
and deterministic, exactly as before accelerators were supported. On CUDA, `precision="auto"` trains
in bf16 autocast where the GPU has bf16 (Ampere and later), else fp16 with a gradient scaler;
bench/results/gpu.md measures what each pays.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from datamoat.errors import BadInput

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "resolve_precision", "autocast"]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _mps() -> bool:
    mps = getattr(torch.backends, "mps", None)  # absent from some builds
    return mps is not None and mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device `name` asks for; a one-line error when this machine has none of it.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA GPU is visible to this torch (a CPU build?): use --device cpu or auto")
    if name == "mps" and not _mps():
        raise BadInput("--device mps: Apple's Metal backend is not available here: use --device cpu or auto")
    if name not in DEVICES:
        raise BadInput(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for `name` on `device` (auto: fp32 on the CPU and MPS; on CUDA bf16 where
    the GPU supports it, else fp16).

    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    """
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name in ("bf16", "fp16") and device.type == "cpu":
        raise BadInput(f"--precision {name} is for accelerators; the CPU trains in fp32: use --precision auto")
    return name


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context for `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
