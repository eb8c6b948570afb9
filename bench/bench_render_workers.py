"""`data render` with one decode worker (the default before: every core but one) against the default
now (every core), on a workspace that already holds an imported photo version named `p`:

    DM_RW_HOME=/path/to/workspace python bench/run.py render_workers

The page cache is dropped before every run when the process may (root), and the variants alternate
over DM_RW_ROUNDS rounds (2), so a machine that slows down during the run slows both. Each run renders
the same pixels, so each writes the same dataset version; the bench checks that they agree.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from bench_memory import commit, dm, drop_page_cache

HOME = Path(os.environ.get("DM_RW_HOME", ""))
ROUNDS = int(os.environ.get("DM_RW_ROUNDS", "2"))
VARIANTS = {"1 worker (the old default on 2 cores)": "1", "default (-1: every core)": "-1"}


def main() -> dict:
    if not HOME.is_dir():
        raise SystemExit("DM_RW_HOME must name a workspace holding a photo version named p (`data import-photos`)")
    cold = os.geteuid() == 0
    rows, ids = [], set()
    for k in range(ROUNDS):
        for label, workers in VARIANTS.items():
            if cold:
                drop_page_cache()
            r = dm(HOME, "data", "render", "p", "--size", "32", "--name", "rw", "--workers", workers)
            ids.add(r["out"]["dataset_id"])
            rows.append(
                {
                    "round": k,
                    "variant": label,
                    "wall_s": r["wall_s"],
                    "cpu_s": r["cpu_s"] + r["worker_cpu_s"],
                    "peak_rss_mib": r["peak_rss_mib"],
                    "worker_peak_mib": r["worker_peak_rss_mib"],
                    "steal_s": r["machine_steal_s"],
                }
            )
    assert len(ids) == 1, f"the variants rendered different versions: {ids}"
    wall = {v: statistics.median(r["wall_s"] for r in rows if r["variant"] == v) for v in VARIANTS}
    old, new = wall.values()
    return {
        "title": "data render: decode workers, one against every core",
        "columns": list(rows[0]),
        "rows": rows,
        "summary": {"median_wall_s": wall, "speedup": old / new, "cold_cache": cold, "commit": commit()},
        "notes": [
            f"Median wall time: {old:.1f} s with one worker, {new:.1f} s with the default, "
            f"{old / new:.2f}x faster. The same version ({ids.pop()}) each time. "
            f"Page cache dropped before each run: {cold}. Commit: {commit()}.",
            "cpu_s is the render's and its decode workers' CPU seconds; worker_peak the largest worker's "
            "peak RSS (the default runs more of them at once); steal_s CPU time the hypervisor gave "
            "other guests during the run.",
            f"Workspace: {HOME}.",
        ],
    }
