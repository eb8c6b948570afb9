"""Does the order in which an import reads its files cost time at a million? Files per second
reading `bench_import_scale`'s stamped JPEGs front to back (the listing's order, as the import's
first pass reads them) against in a shuffled order (as its second pass reads them: in content-hash
order, which is random with respect to where the files lie).

Needs the stamped photos under DM_MEM_ROOT (`bench_import_scale` writes them). Two disjoint samples of
DM_RO_N files each, so neither order reads files the other just brought into the page cache; what
the cache already held from earlier runs is the same for both.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from bench_import_scale import SMALL

N = int(os.environ.get("DM_RO_N", "60000"))


def rate(paths: list[Path]) -> tuple[float, float]:
    t0, size = time.perf_counter(), 0
    for p in paths:
        size += len(p.read_bytes())
    dt = time.perf_counter() - t0
    return len(paths) / dt, size / dt / 1e6


def main() -> dict:
    n = 10 * SMALL
    root = Path(os.environ.get("DM_MEM_ROOT", "/tmp/imps")) / f"stamped-{n}"
    if not (root.parent / f"stamped-{n}.done").exists():
        raise SystemExit(f"no stamped photos at {root}: run `python bench/run.py import_scale` with this DM_MEM_ROOT")
    names = [root / f"class{i % 10}" / f"{i:07d}.jpg" for i in range(n)]  # bench_import_scale's layout
    half = n // 2
    orders = {
        "listing order (consecutive names)": names[:half][:N],
        "shuffled (as content-hash order reads)": random.Random(0).sample(names[half:], N),
    }
    rows = []
    for name, paths in orders.items():
        files_s, mb_s = rate(paths)
        rows.append({"order": name, "files": len(paths), "files_per_s": files_s, "mb_per_s": mb_s})
    ratio = rows[0]["files_per_s"] / rows[1]["files_per_s"]
    return {
        "title": f"Reading {N:,} of {n:,} SYNTHETIC stamped JPEGs in listing order against shuffled",
        "columns": list(rows[0]),
        "rows": rows,
        "summary": {"listing_over_shuffled": ratio},
        "notes": [
            f"Listing order read {ratio:.2f}x the files per second of the shuffled order. The import's second pass "
            "(writing the shards) reads in content-hash order, which is the shuffled case.",
            "The page cache is not dropped first (that needs root and a quiet machine): both samples start from "
            "whatever it held, and the two samples share no file.",
        ],
    }
