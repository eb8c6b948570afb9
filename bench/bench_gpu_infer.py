"""Evaluation and batch inference on a GPU (issue 18): `evaluate` and `predict` with `device="cuda"`
against `device="cpu"` on the same photo version and model, streamed from the shards. Needs CUDA:
`python bench/run.py gpu_infer` on a GPU machine (not part of `make bench`, which runs on CPUs).

Set: the SYNTHETIC photo benchmark (`make_photos` defaults), `PER_CLASS` photos per class, imported
as shards and rendered at `SIZE` px; `ARCH` trained for `EPOCHS` epochs on the GPU (bf16) so its answers
are not uniform. Then, each in this process:
- `evaluate` on the test split, CUDA and CPU: accuracy, ECE and samples per second (decoding in
  `WORKERS` processes, the same on both);
- `predict` over every sample, CUDA and CPU: how many predicted classes agree, the largest
  difference in confidence, samples per second;
- the GPU's peak memory during `predict` at two batch sizes over the same data: it follows the
  batch, not the dataset.

Scale with ``DM_GPU_PER_CLASS``, ``DM_GPU_SIZE``, ``DM_GPU_WORKERS``, ``DM_GPU_ARCH``, ``DM_GPU_EPOCHS``,
``DM_GPU_FASHION``; ``DM_GPU_DRY=1`` runs it on a CPU (CPU against CPU) only to check the script.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PER_CLASS = int(os.environ.get("DM_GPU_PER_CLASS", 300))
SIZE = int(os.environ.get("DM_GPU_SIZE", 160))
WORKERS = int(os.environ.get("DM_GPU_WORKERS", max(1, (os.cpu_count() or 2) - 1)))
ARCH = os.environ.get("DM_GPU_ARCH", "resnet18")
EPOCHS = int(os.environ.get("DM_GPU_EPOCHS", 8))
DRY = bool(os.environ.get("DM_GPU_DRY"))  # check the script on a CPU at a tiny size: its numbers mean nothing
GPU = "cpu" if DRY else "cuda"


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> dict:
    import pyarrow.parquet as pq

    from datamoat.data.photo_render import render_photos
    from datamoat.data.photo_transforms import PhotoTransformConfig
    from datamoat.data.photos import import_photos
    from datamoat.data.synth import SynthConfig, load_fashion_mnist, make_photos
    from datamoat.evaluate.metrics import EvalConfig, evaluate
    from datamoat.evaluate.predict import PredictConfig, predict
    from datamoat.models.model import new_model
    from datamoat.train.loop import TrainConfig, train
    from datamoat.workspace import Workspace

    if not torch.cuda.is_available() and not DRY:
        raise SystemExit("bench_gpu_infer needs a CUDA GPU; this machine has none (run it on the GPU machine)")
    gpu = "none (DM_GPU_DRY)" if DRY else torch.cuda.get_device_name(0)
    root = Path(tempfile.mkdtemp(prefix="dm-gpu-infer-"))
    ws = Workspace.init(root / "ws")
    src = load_fashion_mnist(os.environ.get("DM_GPU_FASHION", "/usr/share/datasets/fashion-mnist"))
    make_photos(root / "photos", SynthConfig(n_per_class=PER_CLASS, test_fraction=0.0, seed=0), source=src)
    photos = import_photos(ws, root / "photos" / "train")
    data = render_photos(ws, photos, PhotoTransformConfig(size=(SIZE, SIZE)), workers=WORKERS)
    tcfg = TrainConfig(epochs=EPOCHS, batch_size=128, lr=1e-3, patience=0, device=GPU, workers=WORKERS)
    model = train(new_model(ARCH, data), data, tcfg, progress=False)

    evaluate(model, data, EvalConfig(split="test", device=GPU, workers=WORKERS))  # warm-up: CUDA context, cuDNN
    rows: list[dict[str, Any]] = []
    evals = {}
    for dev in (GPU, "cpu"):
        ev, s = _timed(evaluate, model, data, EvalConfig(split="test", device=dev, workers=WORKERS))
        evals[dev] = ev
        rows.append(
            {"what": "evaluate (test split)", "device": dev, "n": ev.n, "accuracy": ev.accuracy, "ece": ev.ece}
            | {"samples_per_s": ev.n / s}
        )
    preds = {}
    for dev in (GPU, "cpu"):
        out = root / f"pred-{dev}.parquet"
        cfg = PredictConfig(device=dev, workers=WORKERS)
        _, s = _timed(predict, model, data, out, cfg, overwrite=True)
        preds[dev] = pq.read_table(out).to_pydict()
        rows.append({"what": "predict (every sample)", "device": dev, "n": len(preds[dev]["predicted"])})
        rows[-1]["samples_per_s"] = rows[-1]["n"] / s
    agree = float(np.mean(np.equal(preds[GPU]["predicted"], preds["cpu"]["predicted"])))
    dconf = float(np.max(np.abs(np.subtract(preds[GPU]["confidence"], preds["cpu"]["confidence"]))))
    peaks = {}
    if not DRY:
        for bs in (64, 512):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            predict(model, data, root / "peak.parquet", PredictConfig(device=GPU, batch_size=bs), overwrite=True)
            peaks[bs] = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append({"what": f"predict, batch {bs}: GPU peak above the weights (MiB)", "device": GPU})
            rows[-1]["gpu_peak_mib"] = peaks[bs]
    notes = [
        f"GPU: {gpu}; {os.cpu_count()} CPU cores; {ARCH} at {SIZE}x{SIZE}, trained {EPOCHS} epochs on the GPU (bf16); "
        f"{len(data.y)} SYNTHETIC photos ({PER_CLASS} per class), decoded from the shards by {WORKERS} workers.",
        f"predict, GPU against CPU: {agree:.4f} of predicted classes agree "
        f"({len(set(preds[GPU]['predicted']))} distinct classes predicted); largest confidence difference "
        f"{dconf:.2e} (both fp32; cuDNN and the CPU sum in different orders).",
        f"evaluate accuracy, GPU {evals[GPU].accuracy:.4f} against CPU {evals['cpu'].accuracy:.4f}.",
    ]
    if peaks:
        notes.append(
            f"GPU peak memory above the weights: {peaks[64]:.0f} MiB at batch 64, {peaks[512]:.0f} MiB at batch 512, "
            "over the same samples: it follows the batch."
        )
    return {
        "title": f"GPU evaluation and batch inference: {ARCH} on the synthetic photo benchmark, against the CPU",
        "columns": ["what", "device", "n", "accuracy", "ece", "samples_per_s", "gpu_peak_mib"],
        "rows": rows,
        "notes": notes,
        "summary": {"gpu": gpu, "predict_agreement": agree, "max_confidence_diff": dconf, "gpu_peak_mib": peaks},
    }
