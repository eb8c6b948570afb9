"""Memory of label issues as a list of dicts (as `data issues` held them) against `LabelIssues`
columns: `python bench/issue_dict_size.py [N]` (default 277,612, the million-photo run's count)."""

from __future__ import annotations

import sys

import numpy as np

from datamoat.train.cleaning import LabelIssues


def anon_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


n = int(sys.argv[1]) if len(sys.argv) > 1 else 277_612
rng = np.random.default_rng(0)
cols = LabelIssues(
    rng.integers(0, 10**6, n), rng.integers(0, 10**6, n), rng.integers(0, 10, n), rng.integers(0, 10, n),
    rng.random(n), rng.random(n), [f"class{i}" for i in range(10)],
)  # fmt: skip
before = anon_mib()
as_dicts = list(cols)  # the dicts `find_issues` used to build, one per issue
grew = anon_mib() - before
col_bytes = sum(
    a.nbytes for a in (cols.rows, cols.train_index, cols.given, cols.suggested, cols.quality, cols.confidence)
)
print(f"{n} issues: dicts {grew:.0f} MiB ({grew * 2**20 / n:.0f} B each), columns {col_bytes / n:.0f} B each")
