"""Does reading ahead pay on a cold disk? `datamoat data import-photos` of DM_RA_N SYNTHETIC stamped
JPEGs (40,000 by default) with `--read-ahead 0` against `--read-ahead` DM_RA_DEPTH (256, the default).

Each import reads its own slice of `bench_import_scale`'s million stamped files, through a manifest,
from the end of the set backwards (past DM_RA_SKIP files, which a second run sets to the first's
DM_RA_ROUNDS * 2 * DM_RA_N), so no import reads a file an earlier one brought into a cache:
the guest's page cache is dropped before each (that needs root, `/proc/sys/vm/drop_caches`; the
notes say whether it was), but a virtual machine's host keeps a cache of its own that no guest can
drop. The two settings alternate over DM_RA_ROUNDS rounds (2 by default), the first setting of each
round taking turns, so a neighbour's load falls on both; the ratio is of their summed times.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_import_scale import SMALL, drop_page_cache
from bench_memory import CLASSES, dm

N = int(os.environ.get("DM_RA_N", "40000"))
ROUNDS = int(os.environ.get("DM_RA_ROUNDS", "2"))
DEPTH = int(os.environ.get("DM_RA_DEPTH", "256"))
SKIP = int(os.environ.get("DM_RA_SKIP", "0"))  # files left out at the end: an earlier run's slices


def main() -> dict:
    root = Path(os.environ.get("DM_MEM_ROOT") or tempfile.mkdtemp(prefix="dm-bench-read-ahead-"))
    total = 10 * SMALL
    photos = root / f"stamped-{total}"
    if not (root / f"stamped-{total}.done").exists():
        raise SystemExit(f"no stamped photos at {photos}: run `python bench/run.py import_scale` with this DM_MEM_ROOT")
    depths, dropped, runs, k = (0, DEPTH), True, {}, 0
    for r in range(ROUNDS):
        for depth in depths if r % 2 == 0 else depths[::-1]:
            k += 1
            first = total - SKIP - k * N  # bench_import_scale's layout: file i is class{i % 10}/{i:07d}.jpg
            manifest = root / f"read-ahead-{k}.csv"
            manifest.write_text(
                "path,label\n"
                + "".join(
                    f"{photos.name}/class{i % CLASSES}/{i:07d}.jpg,class{i % CLASSES}\n"
                    for i in range(first, first + N)
                )
            )
            home = root / f"ws-read-ahead-{depth}"
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "datamoat", "init", str(home)], check=True, capture_output=True)
            dropped = drop_page_cache() and dropped
            out = dm(home, "data", "import-photos", str(manifest), "--name", "p", "--read-ahead", str(depth))
            assert out["out"]["imported"] == N, out["out"]
            runs.setdefault(depth, []).append(out)
            shutil.rmtree(home, ignore_errors=True)
            manifest.unlink()
    rows = [
        {
            "read_ahead": depth,
            "rounds": len(rs),
            "wall_s_each": " / ".join(f"{x['wall_s']:.1f}" for x in rs),
            "wall_s_total": sum(x["wall_s"] for x in rs),
            "images_per_s": N * len(rs) / sum(x["wall_s"] for x in rs),
            "peak_rss_mib_max": max(x["peak_rss_mib"] for x in rs),
        }
        for depth, rs in runs.items()
    ]
    speedup = rows[0]["wall_s_total"] / rows[1]["wall_s_total"]
    return {
        "title": f"Import of {N:,} SYNTHETIC stamped 64x48 JPEGs read from the disk, without and with read-ahead",
        "columns": list(rows[0]),
        "rows": rows,
        "summary": {"speedup": speedup, "page_cache_dropped": dropped},
        "notes": [
            f"Reading {DEPTH} files ahead made the import {speedup:.2f}x as fast as reading none. "
            "Every import read its own files (slices of the million, no file twice).",
            "The page cache was dropped before each import."
            if dropped
            else "The page cache could NOT be dropped (not root): the imports after the first read warm files.",
        ],
    }
