"""Where ONNX Runtime runs a model, and what that machine is, for the server and its capacity plans.

`datamoat serve --device auto|cpu|cuda` picks ONNX Runtime's execution provider: auto takes CUDA
where the installed onnxruntime offers it (the `onnxruntime-gpu` package, on a machine with an
NVIDIA GPU), else the CPU. The lock installs the CPU package, so auto is the CPU unless an image
swaps it. `describe_hardware` is what a server reports on `/v1/model`; `datamoat loadtest` records
it with its measurement, so `datamoat capacity` plans replicas of the hardware that was measured and
refuses to mix measurements of different hardware.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput

__all__ = [
    "ORT_DEVICES",
    "resolve_ort_device",
    "providers_for",
    "describe_hardware",
    "hardware_label",
    "hardware_from_info",
]

ORT_DEVICES = ("auto", "cpu", "cuda")
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def resolve_ort_device(device: str) -> str:
    """ "cpu" or "cuda" for `device`; a device the installed onnxruntime cannot use is refused in one line.

    >>> resolve_ort_device("cpu")
    'cpu'
    """
    import onnxruntime as ort

    if device not in ORT_DEVICES:
        raise BadInput(f"unknown device {device!r}: choose one of {', '.join(ORT_DEVICES)}")
    has_cuda = _CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise BadInput(
            "--device cuda: this onnxruntime has no CUDA execution provider: install onnxruntime-gpu in place of "
            "onnxruntime on a machine with an NVIDIA GPU, or serve on the CPU (--device cpu)"
        )
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's providers for a resolved device, in order of preference: on CUDA the CPU still
    runs what CUDA has no kernel for.

    >>> providers_for("cpu")
    ['CPUExecutionProvider']
    """
    return [_CUDA, _CPU] if device == "cuda" else [_CPU]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_quota() -> float | None:
    """The cores a cgroup (v2) lets this process use, as a Kubernetes CPU limit sets it; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else round(int(quota) / int(period), 2)


def _gpu_names() -> list[str]:
    """The names of the GPUs CUDA_VISIBLE_DEVICES leaves visible, from nvidia-smi (empty if there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = [line.split(",", 1) for line in out.splitlines() if "," in line]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = None if visible is None else {v.strip() for v in visible.split(",")}
    return [name.strip() for i, name in gpus if keep is None or i.strip() in keep]


def describe_hardware(device: str) -> dict[str, Any]:
    """What a replica serving on the resolved `device` runs on: the execution provider, the CPU, the
    cores it may use (its affinity, and a cgroup's CPU limit where one is set) and, on CUDA, the GPUs.

    >>> sorted(describe_hardware("cpu"))
    ['cores', 'cpu', 'cpu_limit', 'device', 'gpus', 'onnxruntime', 'provider']
    """
    import onnxruntime as ort

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "device": device,
        "provider": providers_for(device)[0],
        "onnxruntime": ort.__version__,
        "cpu": _cpu_model(),
        "cores": cores,
        "cpu_limit": _cpu_quota(),
        "gpus": _gpu_names() if device == "cuda" else [],
    }


def hardware_label(hw: dict[str, Any]) -> str:
    """One line naming the hardware, as capacity plans print it.

    >>> hardware_label({"device": "cpu", "cpu": "Xeon", "cores": 16, "cpu_limit": 2.0, "gpus": []})
    'CPU: Xeon, 16 cores, limited to 2 (cgroup)'
    """
    cpu = f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores"
    if hw.get("cpu_limit"):
        cpu += f", limited to {hw['cpu_limit']:g} (cgroup)"
    if hw.get("device") == "cuda":
        gpus = [str(g) for g in hw.get("gpus") or ["a GPU"]]
        names = f"{len(gpus)} x {gpus[0]}" if len(set(gpus)) == 1 else ", ".join(gpus)
        return f"CUDA: {names}; CPU: {cpu}"
    return f"CPU: {cpu}"


def hardware_from_info(info: Any) -> dict[str, Any] | None:
    """A server's `hardware` from its model info (what `datamoat loadtest` records), kept only as a small flat JSON object (scalars and
    lists of strings, 2 KB at most); anything else is None, as a server that does not report it.

    >>> hardware_from_info({"hardware": {"device": "cpu", "cores": 2}})
    {'device': 'cpu', 'cores': 2}
    >>> hardware_from_info({"hardware": "x" * 10}) is None
    True
    """
    hw = info.get("hardware") if isinstance(info, dict) else None
    if not isinstance(hw, dict) or len(json.dumps(hw, default=str)) > 2048:
        return None

    def flat(v: Any) -> bool:
        if isinstance(v, list):
            return all(isinstance(e, str) for e in v)
        return v is None or isinstance(v, str | int | float)

    return hw if all(isinstance(k, str) and flat(v) for k, v in hw.items()) else None
