"""Is memory flat in the data? Peak RSS and wall time of each stage on a SYNTHETIC photo set and on
one ten times larger.

The issue's target is 100k against 1M photos: peak RSS at 1M at most 1.25x that at 100k, and wall
time at most 1.1x linear. Generating and importing a million photos does not fit in a session on
these 2 cores, so this measures the same ratio one decade lower (DM_MEM_SMALL photos against ten
times as many; the defaults are 2,000 and 20,000): a stage whose memory grows with the data shows it
here just as well. Each stage is a fresh `datamoat` process (`_peak_rss.py`), so a peak belongs to
one command; decode workers are reported apart. The photos are `datamoat data synth`'s (JPEG,
120-480 px), rendered at 32 px; training is one epoch of cnn_small.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = int(os.environ.get("DM_MEM_SMALL", "2000"))
CLASSES = 10


def dm(home: Path, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, str(HERE / "_peak_rss.py"), "--home", str(home), *args, "--json"],
        capture_output=True,
        text=True,
    )
    peak = json.loads(r.stderr.strip().splitlines()[-1])
    if peak["rc"]:
        raise RuntimeError(f"datamoat {' '.join(args)} failed: {r.stderr[-2000:]}")
    return {**peak, "out": json.loads(r.stdout)}


def stages(root: Path, n: int) -> dict[str, dict]:
    home, photos = root / f"ws-{n}", root / f"photos-{n}"
    if not (root / f"photos-{n}.done").exists():  # a DM_MEM_ROOT of an earlier run keeps its photos
        subprocess.run(
            [sys.executable, "-m", "datamoat", "data", "synth", str(photos), "--n-per-class", str(n // CLASSES),
             "--test-fraction", "0.1", "--json"],
            check=True, capture_output=True,
        )  # fmt: skip
        (root / f"photos-{n}.done").touch()
    shutil.rmtree(home, ignore_errors=True)
    (root / f"p-{n}.parquet").unlink(missing_ok=True)  # an earlier run's predictions: predict refuses to overwrite
    subprocess.run([sys.executable, "-m", "datamoat", "init", str(home)], check=True, capture_output=True)
    out = {"data import-photos": dm(home, "data", "import-photos", str(photos / "train"), "--name", "p")}
    out["data render"] = dm(home, "data", "render", "p", "--size", "32", "--name", "r")
    out["train (1 epoch)"] = dm(home, "train", "--data", "r", "--arch", "cnn_small", "--epochs", "1", "--name", "m")
    out["train (rendered arrays, 1 epoch)"] = dm(
        home, "train", "--data", "r", "--arch", "cnn_small", "--epochs", "1", "--no-photo-stream", "--name", "ma"
    )
    out["eval"] = dm(home, "eval", "m", "--data", "r", "--split", "val")
    out["predict"] = dm(home, "predict", "r", "--model", "m", "--output", str(root / f"p-{n}.parquet"))
    out["data issues"] = dm(home, "data", "issues", "r", "--folds", "2", "--epochs", "1", "--arch", "cnn_small")
    return out


def main() -> dict:
    root = Path(os.environ.get("DM_MEM_ROOT") or tempfile.mkdtemp(prefix="dm-bench-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    small, large = (stages(root, n) for n in (SMALL, 10 * SMALL))
    rows, flat = [], {}
    for name in small:
        a, b = small[name], large[name]
        mem = b["peak_rss_mib"] / a["peak_rss_mib"]
        time_ratio = b["wall_s"] / a["wall_s"]
        flat[name] = {"memory_ratio": mem, "memory_met": mem <= 1.25, "time_ratio": time_ratio,
                      "time_met": time_ratio <= 11.0}  # fmt: skip
        rows.append(
            {
                "stage": name,
                f"peak_rss_mib_{SMALL}": a["peak_rss_mib"],
                f"peak_rss_mib_{10 * SMALL}": b["peak_rss_mib"],
                "memory_ratio": mem,
                f"peak_anon_mib_{SMALL}": a["peak_anon_mib"],
                f"peak_anon_mib_{10 * SMALL}": b["peak_anon_mib"],
                "worker_peak_mib_large": b["worker_peak_rss_mib"],
                f"wall_s_{SMALL}": a["wall_s"],
                f"wall_s_{10 * SMALL}": b["wall_s"],
                "time_ratio": time_ratio,
            }
        )
    met = [k for k, v in flat.items() if v["memory_met"]]
    return {
        "title": f"Memory and time against the data: {SMALL:,} against {10 * SMALL:,} SYNTHETIC photos",
        "columns": list(rows[0]),
        "rows": rows,
        "summary": {"small": SMALL, "large": 10 * SMALL, "stages": flat},
        "notes": [
            f"Targets (the issue's are 100k against 1M): memory ratio <= 1.25 (met by: "
            f"{', '.join(met) or 'none'}; missed by: {', '.join(k for k in flat if k not in met) or 'none'}), "
            "time ratio <= 11 for 10x the photos.",
            "peak_rss is the datamoat process's own maximum resident set (file-backed pages it mapped and "
            "touched included); peak_anon is its anonymous memory (what the kernel cannot drop), sampled every "
            "20 ms; decode workers are separate processes, their largest peak in its own column.",
        ],
    }
