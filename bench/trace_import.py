"""Peak anonymous memory and seconds per phase of one photo import (a thread samples RssAnon every
10 ms): `python bench/trace_import.py PHOTO_FOLDER NEW_WORKSPACE`, printed on stderr. Run it at two
sizes to see which phase grows with the photo count (how the index copy fixed in 7d171bd was found).
Not a benchmark (`run.py` does not run it): the wrappers cost time, and the phases are private."""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

import datamoat.data.index_builder as ib
import datamoat.data.photo_index as pi
import datamoat.data.photos as photos
from datamoat.workspace import Workspace

peak = [0.0]  # MiB, the largest RssAnon sampled since the current phase began


def rss_anon() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def sample() -> None:
    while True:
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.01)


def wrap(owner: Any, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def traced(*a: Any, **k: Any) -> Any:
        start, t0 = rss_anon(), time.perf_counter()
        peak[0] = start
        out = f(*a, **k)
        print(
            f"{label:18s} anon start {start:7.1f}  peak {peak[0]:7.1f}  end {rss_anon():7.1f} MiB"
            f"  {time.perf_counter() - t0:6.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return out

    setattr(owner, name, traced)


def main() -> None:
    threading.Thread(target=sample, daemon=True).start()
    wrap(ib.IndexBuilder, "finish", "builder.finish")
    wrap(photos, "assign_splits", "assign_splits")
    wrap(photos, "write_shards", "write_shards")
    wrap(photos, "tally", "tally")
    wrap(pi.PhotoIndex, "store", "PhotoIndex.store")
    wrap(photos, "_store", "_store (all)")
    ws = Workspace.init(sys.argv[2])
    start, t0 = rss_anon(), time.perf_counter()
    photos.import_photos(ws, sys.argv[1], photos.PhotoImportConfig())
    print(f"whole import: anon start {start:.1f} end {rss_anon():.1f} MiB, {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
