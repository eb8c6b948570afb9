"""Photo import (datamoat.data.photos.import_photos): speed against a plain Pillow loop, bytes stored.

Issue 17's targets, as ratios measured in one run on one machine:

- speed: images per second of `import_photos` with the default `PhotoImportConfig` at least 0.8x a
  plain "read-verify-write" loop over the same files: read the file, `Image.open` + `load` (a full
  decode), write the bytes to an output folder (no fsync, one file per image);
- bytes: the shards plus the index (``report["stored_vs_source"]``) at most 1.1x the source files.

Scenarios, each a folder of class subfolders written with `make_photos` (seed 0, every image in
one split): the synthetic set at its default sizes (JPEG, longer side 120-480 px), small JPEGs
(longer side 120-240 px, ~5-10 KB: what the defaults were not tuned on), and a PNG-heavy mix (the
default set with two images in three re-encoded as lossless PNG, seeded).

A third side, the same loop without the write ("read_decode"), gives the floor any verifying import
pays, so the import's own overhead shows apart from what the filesystem charges for small files.

Per scenario, each side runs once untimed (to warm the page cache and Pillow), then `REPEATS` timed
rounds of all three, each side first in turn, with ``os.sync()`` between runs. Images per second come
from the median time; ratios are the median of the ratios within a round (the cores are shared). Every
import goes into a fresh workspace, every loop into a fresh folder, removed outside the timing.

Scale with environment variables for a quick check, e.g.
``DM_PI_PER_CLASS=10 DM_PI_REPEATS=1 python bench/run.py photo_import``.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamoat.data import FASHION_MNIST_DIR
from datamoat.data.photos import import_photos
from datamoat.data.synth import PhotoSource, SynthConfig, load_fashion_mnist, make_photos
from datamoat.workspace import Workspace

PER_CLASS = int(os.environ.get("DM_PI_PER_CLASS", 60))  # default and PNG sets; the small set gets 2x
REPEATS = int(os.environ.get("DM_PI_REPEATS", 5))
SPEED_TARGET, BYTES_TARGET = 0.8, 1.1
SEED = 0


def source() -> PhotoSource | tuple:
    if FASHION_MNIST_DIR.is_dir():
        return load_fashion_mnist()
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target, [str(c) for c in d.target_names]


def make_set(out: Path, src: PhotoSource | tuple, per_class: int, png_share: float = 0.0, **sizes: Any) -> Path:
    """A folder of class subfolders; `png_share` of the JPEGs (seeded) re-encoded as PNG."""
    make_photos(out, SynthConfig(n_per_class=per_class, test_fraction=0, seed=SEED, **sizes), source=src)
    root = out / "train"
    rng = np.random.default_rng(SEED)
    for p in sorted(root.rglob("*.jpg")):
        if rng.random() < png_share:
            with Image.open(p) as im:
                im.save(p.with_suffix(".png"), "PNG")
            p.unlink()
    return root


def baseline(files: list[Path], root: Path, out: Path | None) -> None:
    """The plain loop the importer is held to: read, full decode, write the bytes (`out` None: no write)."""
    for d in sorted({p.parent for p in files}) if out is not None else []:
        (out / d.relative_to(root)).mkdir(parents=True)
    for p in files:
        data = p.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        if out is not None:
            (out / p.relative_to(root)).write_bytes(data)


def measure(root: Path, tmp: Path) -> dict[str, Any]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    n = len(files)
    sides = ("baseline", "import", "read_decode")
    times: dict[str, list[float]] = {s: [] for s in sides}
    report: dict[str, Any] = {}

    def run(side: str, timed: bool) -> None:
        dest = Path(tempfile.mkdtemp(dir=tmp))
        ws = Workspace.init(dest / "ws") if side == "import" else None
        t0 = time.perf_counter()
        if ws is not None:
            v = import_photos(ws, root)
        else:
            baseline(files, root, dest / "out" if side == "baseline" else None)
        secs = time.perf_counter() - t0
        if ws is not None:
            blobs = v.manifest["index"]  # the columnar index: one blob per column group (format 2)
            index = b"".join(ws.get_bytes(blobs[k]) for k in sorted(blobs) if isinstance(blobs[k], str))
            report.update(v.report, index=index)
        shutil.rmtree(dest)
        os.sync()  # no side's fsync waits on the writeback another side left behind
        if timed:
            times[side].append(secs)

    for side in sides:  # untimed: the same warm cache for every side
        run(side, False)
    for i in range(REPEATS):  # each side goes first in turn
        for side in sides[i % 3 :] + sides[: i % 3]:
            run(side, True)
    assert report["imported"] == n and report["skipped"] == 0, report
    rate = {s: n / statistics.median(times[s]) for s in sides}

    def paired(other: str) -> float:
        # Ratios within a round, then their median: a load that comes and goes shifts a round's sides alike.
        return round(statistics.median(o / i for o, i in zip(times[other], times["import"], strict=True)), 3)

    src_bytes = sum(p.stat().st_size for p in files)
    index = report["index"]
    ratio = paired("baseline")
    return {
        "files": n,
        "pngs": sum(p.suffix == ".png" for p in files),
        "mean_source_kb": src_bytes / n / 1000,
        "import_img_s": round(rate["import"], 1),
        "baseline_img_s": round(rate["baseline"], 1),
        "speed_ratio": ratio,
        "speed_met": "yes" if ratio >= SPEED_TARGET else "NO",
        "vs_read_decode": paired("read_decode"),
        "stored_vs_source": report["stored_vs_source"],
        "bytes_met": "yes" if report["stored_vs_source"] <= BYTES_TARGET else "NO",
        "_detail": {
            "source_bytes": src_bytes,
            "stored_bytes": report["stored_bytes"],
            "shards": report["shards"],
            "read_decode_img_s": round(rate["read_decode"], 1),
            "tar_overhead_per_image": round((report["stored_bytes"] - len(index) - src_bytes) / n, 1),
            "index_bytes_per_image": round(len(index) / n, 1),
            "index_gzip_bytes_per_image": round(len(gzip.compress(index, mtime=0)) / n, 1),
            "seconds": {s: [round(t, 3) for t in times[s]] for s in sides},
        },
    }


def main() -> dict:
    src = source()
    source_name = "fashion-mnist" if isinstance(src, PhotoSource) else "digits"
    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-photo-import-"))
    scenarios = {
        "synth default (JPEG 120-480 px)": {"per_class": PER_CLASS},
        "small JPEGs (120-240 px)": {"per_class": 2 * PER_CLASS, "max_side": 240},
        "PNG-heavy mix (2/3 PNG)": {"per_class": PER_CLASS, "png_share": 2 / 3},
    }
    rows = []
    try:
        for i, (name, kw) in enumerate(scenarios.items()):
            root = make_set(tmp / f"set{i}", src, **kw)
            rows.append({"scenario": name, **measure(root, tmp)})
            shutil.rmtree(tmp / f"set{i}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    detail = {r["scenario"]: r.pop("_detail") for r in rows}
    fallback = "" if source_name == "fashion-mnist" else ": Fashion-MNIST is not installed, scikit-learn's digits"
    notes = [
        f"Sets from `make_photos` (seed 0, {source_name}{fallback}), every image in one class-subfolder tree. "
        "`import_photos` with the default `PhotoImportConfig` into a fresh workspace against a plain loop "
        "(read, `Image.open` + `load`, write the bytes to a folder, no fsync). Each side runs once untimed, "
        f"then {REPEATS} timed rounds of all three, each side first in turn, with `os.sync()` between runs "
        "so no side pays for another's writeback. Images per second come from the median time; each ratio "
        "is the median of the ratios within a round, as the two cores are shared. Targets: import >= "
        f"{SPEED_TARGET}x the loop's images per second (speed_ratio); shards + index <= {BYTES_TARGET}x "
        "the source bytes (stored_vs_source).",
        "vs_read_decode: the import against the same loop without the write (read and decode only), the "
        "floor any verifying import pays. The rest is the import's own work: a second read and hash of "
        "every file (it holds one file in memory at a time and checks it did not change), writing each "
        "tar member through `tarfile`, and fsyncs of the shard, the index and the version record. The "
        "loop's per-file writes cost what the filesystem charges for small files, so speed_ratio moves "
        "with the disk more than vs_read_decode does.",
        "Stored bytes per image beyond the file itself, tar header + padding to 512 bytes, then the index "
        "row (gzip'd index row in brackets): "
        + "; ".join(
            f"{k}: {d['tar_overhead_per_image']:.0f} + {d['index_bytes_per_image']:.0f} "
            f"({d['index_gzip_bytes_per_image']:.0f})"
            for k, d in detail.items()
        )
        + ".",
    ]
    for r in rows:
        d = detail[r["scenario"]]
        if r["speed_met"] == "NO":
            notes.append(
                f"MISSED, speed, {r['scenario']}: {r['speed_ratio']}x the loop (target {SPEED_TARGET}x); "
                f"against read + decode alone {r['vs_read_decode']}x. See the import's own work above."
            )
        if r["bytes_met"] == "NO":
            tar, idx, gz = (
                d[k] for k in ("tar_overhead_per_image", "index_bytes_per_image", "index_gzip_bytes_per_image")
            )
            limit = BYTES_TARGET - 1
            notes.append(
                f"MISSED, bytes, {r['scenario']}: {r['stored_vs_source']}x the source (target {BYTES_TARGET}x). "
                f"Each image costs {tar + idx:.0f} bytes over its own ({tar:.0f} of tar header and padding, "
                f"{idx:.0f} of index row), so files must average {(tar + idx) / limit / 1000:.1f} KB to stay "
                f"within {BYTES_TARGET}x; these average {r['mean_source_kb']:.1f} KB. The index is already columns (a "
                f"shard number, not its hash, in each row); gzip'd it would lower that to "
                f"{(tar + gz) / limit / 1000:.1f} KB; below about {tar / limit / 1000:.1f} KB tar's 512-byte "
                "header per member alone is over the target, and only a container without per-member blocks "
                "(Parquet: bench/results/shards.md) or several small images per member would meet it. The "
                "import defaults are unchanged."
            )
    return {
        "title": "Photo import: speed against a read-verify-write loop, bytes stored against the source",
        "columns": [
            "scenario",
            "files",
            "pngs",
            "mean_source_kb",
            "import_img_s",
            "baseline_img_s",
            "speed_ratio",
            "speed_met",
            "vs_read_decode",
            "stored_vs_source",
            "bytes_met",
        ],
        "rows": rows,
        "summary": {"source": source_name, "per_class": PER_CLASS, "repeats": REPEATS, "detail": detail},
        "notes": notes,
    }
