"""Synthetic photo generation (datamoat.data.synth): images per second and bytes per image.

The same set (default config, seed 0, Fashion-MNIST where installed, else scikit-learn's digits)
is made once with one worker and once with every core; the two folders must be byte-identical.
Each run includes everything `make_photos` does: choosing items, rendering, JPEG encoding,
writing the files, the manifest and the README. Per background kind, the mean bytes per image.

Scale with an environment variable for a quick check, e.g.
``DM_SYNTH_PER_CLASS=20 python bench/run.py synth``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from datamoat.data import FASHION_MNIST_DIR
from datamoat.data.synth import PhotoSource, SynthConfig, load_fashion_mnist, make_photos

PER_CLASS = int(os.environ.get("DM_SYNTH_PER_CLASS", 300))


def source() -> PhotoSource | tuple:
    if FASHION_MNIST_DIR.is_dir():
        return load_fashion_mnist()
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target, [str(c) for c in d.target_names]


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def main() -> dict:
    src = source()
    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-synth-"))
    rows, outs = [], []
    try:
        for workers in (1, 0):
            out = tmp / f"w{workers}"
            s = make_photos(out, SynthConfig(n_per_class=PER_CLASS, workers=workers), source=src)
            outs.append(out)
            rows.append(
                {
                    "workers": s["workers"],
                    "images": s["images"],
                    "seconds": s["seconds"],
                    "images_per_s": s["images_per_s"],
                    "images_per_min": round(s["images_per_s"] * 60),
                    "kb_per_image": s["bytes"] / s["images"] / 1000,
                    "mb_total": s["bytes"] / 1e6,
                }
            )
        identical = files(outs[0]) == files(outs[1])
        manifest = [json.loads(line) for line in (outs[0] / "manifest.jsonl").read_text().splitlines()]
        sizes: dict[str, list[int]] = {}
        for r in manifest:
            sizes.setdefault(r["background"], []).append((outs[0] / r["path"]).stat().st_size)
        sides = [max(r["width"], r["height"]) for r in manifest]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_kind = {k: {"images": len(v), "kb_per_image": statistics.mean(v) / 1000} for k, v in sorted(sizes.items())}
    source_name = "fashion-mnist" if isinstance(src, PhotoSource) else "digits"
    return {
        "title": "Synthetic photo generation: images per second and bytes per image",
        "columns": ["workers", "images", "seconds", "images_per_s", "images_per_min", "kb_per_image", "mb_total"],
        "rows": rows,
        "summary": {
            "source": source_name,
            "per_class": PER_CLASS,
            "identical_across_workers": identical,
            "by_background": by_kind,
            "median_long_side": statistics.median(sides),
        },
        "notes": [
            f"SynthConfig defaults (longer side 120-480 px, aspect 3:4 to 16:9, JPEG quality 75-95), seed 0, "
            f"{PER_CLASS} images per class from {source_name}; wall time of the whole `make_photos` call. "
            f"Outputs with 1 worker and with every core byte-identical: {identical}. Mean KB per image by "
            "background: "
            + ", ".join(f"{k} {v['kb_per_image']:.1f} ({v['images']})" for k, v in by_kind.items())
            + ".",
        ],
    }
