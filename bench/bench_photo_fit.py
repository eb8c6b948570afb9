"""The deterministic photo geometry: `photo_fit.fit` on numpy against the torch path it replaced.

Before photo_fit, `photo_transforms.fit` resized with `F.interpolate(mode="bilinear", antialias=True)`
on float32 tensors, then rounded, clamped and cropped (or letterboxed). That path is copied here as
the reference. Both run on the same decoded uint8 (C, H, W) arrays:

- the synthetic photos (`make_photos`, seed 0, digits, longer side 120-480 px), fitted to 32x32 and
  to 224x224 (shorter side plus centre crop, the default) and letterboxed to 224x224: the render path;
- one 4000x3000 photo (a synthetic photo scaled up by Pillow: photo-like content) fitted to 224x224,
  what a phone upload to the server costs.

Each side runs once untimed, then `REPEATS` timed rounds alternating which goes first; times are
medians. numpy is single-threaded; torch is timed at 1 thread (a render worker's share of a core),
and for the large photo also at its default thread count (on small photos more threads only add
their start-up). Also the pixels where numpy and torch differ, and by how much.

Scale for a quick check: ``DM_PF_PER_CLASS=2 DM_PF_REPEATS=1 python bench/run.py photo_fit``.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datamoat.data.photo_fit import PhotoTransformConfig, fit, from_pil
from datamoat.data.synth import SynthConfig, make_photos

PER_CLASS = int(os.environ.get("DM_PF_PER_CLASS", 10))
REPEATS = int(os.environ.get("DM_PF_REPEATS", 5))


def torch_fit(img: torch.Tensor, cfg: PhotoTransformConfig) -> torch.Tensor:
    """The torch path as it was (datamoat/data/photo_transforms.py before photo_fit)."""

    def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        y = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return y[0].round().clamp(0, 255).to(torch.uint8)

    th, tw = cfg.size
    h, w = img.shape[-2:]
    if cfg.resize == "letterbox":
        s = min(th / h, tw / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        top, left = (th - nh) // 2, (tw - nw) // 2
        return F.pad(resize(img, nh, nw), (left, tw - nw - left, top, th - nh - top), value=0)
    size = int(round(min(cfg.size) / cfg.crop_fraction))
    img = resize(img, size, max(1, int(size * w / h))) if h <= w else resize(img, max(1, int(size * h / w)), size)
    h, w = img.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = img.shape[-2:]
    top, left = int(round((h - th) / 2)), int(round((w - tw) / 2))
    return img[..., top : top + th, left : left + tw]


def photos() -> tuple[list[bytes], list[np.ndarray], np.ndarray]:
    """The synthetic photos' JPEG bytes and decoded uint8 (3, H, W), and one of them at 4000x3000."""
    from sklearn.datasets import load_digits

    d = load_digits()
    src = (np.round(d.images * (255 / 16)).astype(np.uint8), d.target, [str(c) for c in d.target_names])
    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-photofit-"))
    try:
        make_photos(tmp, SynthConfig(n_per_class=PER_CLASS, test_fraction=0.0, seed=0, workers=1), source=src)
        files = sorted(tmp.rglob("*.jpg"))
        jpegs = [p.read_bytes() for p in files]
        arrs = [from_pil(Image.open(io.BytesIO(b))) for b in jpegs]
        big = Image.open(files[0]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=90)  # through JPEG, as a phone's photo arrives
        large = from_pil(Image.open(io.BytesIO(buf.getvalue())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return jpegs, arrs, large


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(arrs: list[np.ndarray], cfg: PhotoTransformConfig, threads: list[int]) -> dict:
    tensors = [torch.from_numpy(a) for a in arrs]

    def run_numpy() -> list[np.ndarray]:
        return [fit(a, cfg) for a in arrs]

    def run_torch(n: int) -> Callable[[], list[torch.Tensor]]:
        def go() -> list[torch.Tensor]:
            torch.set_num_threads(n)
            return [torch_fit(t, cfg) for t in tensors]

        return go

    sides = {"numpy": run_numpy, **{f"torch_{n}": run_torch(n) for n in threads}}
    ours, ref = run_numpy(), [t.numpy() for t in run_torch(threads[0])()]  # untimed: warm, and the pixels
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(REPEATS):
        order = list(sides)[r % len(sides) :] + list(sides)[: r % len(sides)]
        for k in order:
            times[k].append(timed(sides[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    d = np.concatenate(
        [np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel() for a, b in zip(ours, ref, strict=True)]
    )
    row = {
        "images": len(arrs),
        "numpy_ms_per_image": 1000 * med["numpy"] / len(arrs),
        **{f"torch_{n}t_ms_per_image": 1000 * med[f"torch_{n}"] / len(arrs) for n in threads},
        **{f"numpy_vs_torch_{n}t": med["numpy"] / med[f"torch_{n}"] for n in threads},
        "max_diff": int(d.max()),
        "pixels_differing": int((d > 0).sum()),
        "pixels": int(d.size),
    }
    return row


def main() -> dict:
    jpegs, arrs, large = photos()
    decode = [timed(lambda: [from_pil(Image.open(io.BytesIO(b))) for b in jpegs]) for _ in range(REPEATS)]
    default_threads = torch.get_num_threads()
    threads = sorted({1, default_threads})
    rows = []
    sides = [min(a.shape[1:]) for a in arrs]
    for label, data, cfg, n in (
        ("synthetic -> 32x32", arrs, PhotoTransformConfig(size=(32, 32)), [1]),
        ("synthetic -> 224x224", arrs, PhotoTransformConfig(size=(224, 224)), [1]),
        ("synthetic -> 224x224 letterbox", arrs, PhotoTransformConfig(size=(224, 224), resize="letterbox"), [1]),
        ("4000x3000 -> 224x224", [large], PhotoTransformConfig(size=(224, 224)), threads),
    ):
        rows.append({"case": label, **compare(data, cfg, n)})
    torch.set_num_threads(default_threads)
    cols = ["case", "images", "numpy_ms_per_image"]
    cols += [f"torch_{n}t_ms_per_image" for n in threads] + [f"numpy_vs_torch_{n}t" for n in threads]
    cols += ["max_diff", "pixels_differing", "pixels"]
    return {
        "title": "Photo fit: numpy (photo_fit) against the torch path it replaced",
        "columns": cols,
        "rows": rows,
        "summary": {
            "synthetic_photos": len(arrs),
            "shorter_side_px": [min(sides), max(sides)],
            "repeats": REPEATS,
            "torch_default_threads": default_threads,
            "decode_ms_per_synthetic_photo": 1000 * statistics.median(decode) / len(jpegs),
        },
        "notes": [
            "numpy_vs_torch_Nt: numpy's median time over torch's at N threads (above 1: numpy is slower).",
            "max_diff and pixels_differing compare numpy's output with the torch path's (grey levels).",
            "For scale: decoding a synthetic JPEG (Pillow, `from_pil`) takes "
            f"{1000 * statistics.median(decode) / len(jpegs):.2f} ms per photo here; rendering is decode plus fit.",
        ],
    }
