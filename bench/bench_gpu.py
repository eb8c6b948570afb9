"""GPU training on the photo benchmark (issue 18): ResNet-50's training samples per second in fp32 and
with AMP (bf16 autocast, channels-last), and the photo loader's images per second against what the
GPU consumes. Needs CUDA: `python bench/run.py gpu` on a GPU machine (it is not part of `make bench`,
which runs on CPUs).

Set: the SYNTHETIC photo benchmark (`make_photos` defaults: Fashion-MNIST items on photo crops and
textures, JPEG, longer side 120-480 px), `PER_CLASS` photos per class, imported as shards and
rendered at `SIZE` px. Fashion-MNIST comes from `DM_GPU_FASHION` (a folder with its four IDX
files) or Debian's package path.

Measured, each in this process:
- `gpu step`: the bare training step (forward, loss, backward, AdamW) on batches already on the GPU,
  the ceiling the GPU sets; median over `STEPS` timed steps after warm-up.
- `loader`: one pass of the training stream (`photo_loader`: read from the shards, decode, random
  resized crop, flip, jitter, normalise) in `WORKERS` processes, no model.
- `train()`: what a user gets from `datamoat train --arch resnet50 --device cuda`, streaming from the
  shards (and once from the rendered pixels in memory), samples per second of the last epoch
  (the first pays cuDNN's autotuning and the workers' start).
- `train --nproc N`: on a machine with N > 1 GPUs, DDP on all of them through the CLI, the same
  per-GPU batch, so its rate over the 1-GPU row is the scaling.

Scale with environment variables: ``DM_GPU_PER_CLASS``, ``DM_GPU_SIZE``, ``DM_GPU_BATCH``,
``DM_GPU_EPOCHS``, ``DM_GPU_WORKERS``, ``DM_GPU_STEPS``, ``DM_GPU_ARCH``; ``DM_GPU_DRY=1`` runs the script on
a CPU (fp32 for train()) only to check it before GPU time is spent.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PER_CLASS = int(os.environ.get("DM_GPU_PER_CLASS", 800))
SIZE = int(os.environ.get("DM_GPU_SIZE", 224))
BATCH = int(os.environ.get("DM_GPU_BATCH", 128))
EPOCHS = int(os.environ.get("DM_GPU_EPOCHS", 2))
WORKERS = int(os.environ.get("DM_GPU_WORKERS", max(1, (os.cpu_count() or 2) - 1)))
STEPS = int(os.environ.get("DM_GPU_STEPS", 20))
ARCH = os.environ.get("DM_GPU_ARCH", "resnet50")
DRY = bool(os.environ.get("DM_GPU_DRY"))  # check the script on a CPU at a tiny size: its numbers mean nothing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_step(data: Any, precision: str, channels_last: bool) -> float:
    """Samples per second of bare training steps on random batches already on the GPU."""
    from datamoat.models.model import new_model
    from datamoat.train.device import autocast

    dev = torch.device("cpu" if DRY else "cuda")
    net = new_model(ARCH, data).net.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(BATCH, *data.input_shape, device=dev)  # (B, C, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, data.num_classes, (BATCH,), device=dev)
    times = []
    for i in range(5 + STEPS):
        _sync()
        t0 = time.perf_counter()
        with autocast(dev, precision):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return BATCH / statistics.median(times)


def loader_pass(data: Any, rows: np.ndarray, workers: int) -> float:
    """Images per second of one pass of the training stream, no model."""
    from datamoat.data.photo_render import photo_loader

    stream = photo_loader(data, rows, batch_size=BATCH, workers=workers, seed=0)
    assert stream is not None
    samples, loader = stream
    it = iter(loader)
    next(it)  # the workers' start-up is not the steady state
    t0, n = time.perf_counter(), 0
    for xb, _ in it:
        n += len(xb)
    return n / (time.perf_counter() - t0)


def train_run(data: Any, precision: str, stream: bool) -> dict[str, Any]:
    from datamoat.models.model import new_model
    from datamoat.train.loop import TrainConfig, train

    cfg = TrainConfig(
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=1e-3,
        patience=0,
        device="cpu" if DRY else "cuda",
        precision="fp32" if DRY else precision,
        photo_stream=stream,
        workers=WORKERS,
    )
    t0 = time.perf_counter()
    m = train(new_model(ARCH, data), data, cfg, progress=False)
    last = m.history["curve"][-1]
    return {
        "samples_per_s": last["samples_per_s"],
        "val_accuracy": m.history["val_accuracy"],
        "seconds": time.perf_counter() - t0,
        "precision": m.history["precision"],
    }


def ddp_run(ws: Any, data_id: str, gpus: int) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    args = ["--home", str(ws.root), "train", "--data", data_id, "--arch", ARCH, "--epochs", str(EPOCHS)]
    args += ["--batch-size", str(BATCH * gpus), "--lr", "1e-3", "--patience", "0", "--device", "cuda"]
    args += ["--precision", "bf16", "--workers", str(max(1, WORKERS // gpus)), "--nproc", str(gpus), "--json"]
    t0 = time.perf_counter()
    out = json.loads(subprocess.run([sys.executable, "-m", "datamoat", *args], check=True, capture_output=True).stdout)
    return {
        "samples_per_s": out["curve"][-1]["samples_per_s"],
        "val_accuracy": out["val_accuracy"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> dict:
    from datamoat.data.dataset import SPLITS
    from datamoat.data.photo_render import render_photos
    from datamoat.data.photo_transforms import PhotoTransformConfig
    from datamoat.data.photos import import_photos
    from datamoat.data.synth import SynthConfig, load_fashion_mnist, make_photos
    from datamoat.workspace import Workspace

    if not torch.cuda.is_available() and not DRY:
        raise SystemExit("bench_gpu needs a CUDA GPU; this machine has none (run it on the GPU machine)")
    torch.backends.cudnn.benchmark = True
    gpu = "none (DM_GPU_DRY)" if DRY else torch.cuda.get_device_name(0)
    root = Path(tempfile.mkdtemp(prefix="dm-gpu-"))
    ws = Workspace.init(root / "ws")
    src = load_fashion_mnist(os.environ.get("DM_GPU_FASHION", "/usr/share/datasets/fashion-mnist"))
    t0 = time.perf_counter()
    synth = make_photos(root / "photos", SynthConfig(n_per_class=PER_CLASS, test_fraction=0.0, seed=0), source=src)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    photos = import_photos(ws, root / "photos" / "train")
    t_import = time.perf_counter() - t0
    cfg = PhotoTransformConfig(size=(SIZE, SIZE), brightness=0.2, contrast=0.2, saturation=0.2)
    t0 = time.perf_counter()
    data = render_photos(ws, photos, cfg, workers=WORKERS)
    t_render = time.perf_counter() - t0
    rows_train = np.flatnonzero(data.split == SPLITS["train"])

    rows: list[dict[str, Any]] = []
    for precision, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        rows.append(
            {
                "what": "gpu step (batches on the GPU)",
                "precision": precision,
                "layout": "channels_last" if cl else "contiguous",
                "samples_per_s": gpu_step(data, precision, cl),
            }
        )
    for w in sorted({WORKERS, max(1, WORKERS // 2)}):
        rows.append({"what": f"loader, {w} workers, no model", "samples_per_s": loader_pass(data, rows_train, w)})
    for precision, stream in (("fp32", True), ("bf16", True), ("bf16", False)):
        r = train_run(data, precision, stream)
        rows.append(
            {
                "what": "train() " + ("streaming from the shards" if stream else "on rendered pixels in memory"),
                "precision": r["precision"],
                "layout": "channels_last",
                "samples_per_s": r["samples_per_s"],
                "val_accuracy": r["val_accuracy"],
                "seconds": r["seconds"],
            }
        )
    gpus = 0 if DRY else torch.cuda.device_count()
    if gpus > 1:  # DDP on every GPU: `datamoat train --nproc N` (torchrun, NCCL), BATCH per GPU
        r = ddp_run(ws, data.id, gpus)
        rows.append(
            {
                "what": f"train --nproc {gpus} (DDP, streaming), {BATCH} per GPU",
                "precision": "bf16",
                "layout": "channels_last",
                "samples_per_s": r["samples_per_s"],
                "val_accuracy": r["val_accuracy"],
                "seconds": r["seconds"],
            }
        )
    step = {(r["precision"], r["layout"]): r["samples_per_s"] for r in rows if r["what"].startswith("gpu step")}
    best_loader = max(r["samples_per_s"] for r in rows if r["what"].startswith("loader"))
    for r in rows:
        if r["what"].startswith("train()"):
            r["vs_gpu_step"] = r["samples_per_s"] / step.get((r["precision"], "channels_last"), float("nan"))
    amp = step["bf16", "channels_last"] / step["fp32", "contiguous"]
    notes = [
        f"GPU: {gpu}; {os.cpu_count()} CPU cores; {ARCH} at {SIZE}x{SIZE}, batch {BATCH}, AdamW. "
        f"{synth['images']} SYNTHETIC photos ({PER_CLASS} per class, {len(rows_train)} in the train split): "
        f"made in {t_synth:.1f} s, imported in {t_import:.1f} s, rendered in {t_render:.1f} s "
        f"({WORKERS} workers).",
        f"AMP (bf16, channels-last) against fp32 (contiguous) on the bare step: {amp:.2f}x. "
        f"The loader's best pass: {best_loader:.0f} images/s against the bf16 step's "
        f"{step['bf16', 'channels_last']:.0f} samples/s "
        f"({best_loader / step['bf16', 'channels_last']:.2f}x): "
        + (
            "the loader keeps up."
            if best_loader >= step["bf16", "channels_last"]
            else "the CPU side (decode and augmentation) is the bound, not the GPU."
        ),
        "train() rows: the last of "
        f"{EPOCHS} epochs (validation excluded); vs_gpu_step is that rate over the bare step's at the same "
        "precision. "
        + (
            f"DDP: {gpus} GPUs, one process each (NCCL), {BATCH} samples per GPU per step."
            if gpus > 1
            else "One GPU: DDP across GPUs was not measured (the machine has one)."
        ),
    ]
    return {
        "title": f"GPU training: {ARCH} on the synthetic photo benchmark, fp32 and AMP, loader against GPU",
        "columns": ["what", "precision", "layout", "samples_per_s", "vs_gpu_step", "val_accuracy", "seconds"],
        "rows": rows,
        "notes": notes,
        "summary": {"gpu": gpu, "amp_speedup_step": amp, "loader_images_per_s": best_loader},
    }
