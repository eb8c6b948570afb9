"""Run one `datamoat` command in this process and print its peak memory as JSON on the last line:
`python _peak_rss.py ARGS...` (for bench_memory.py). Children are the photo decode workers."""

from __future__ import annotations

import json
import resource
import sys
import time

from datamoat.cli import main

sys.argv = ["datamoat", *sys.argv[1:]]
t0 = time.perf_counter()
code = 0
try:
    main()
except SystemExit as e:
    code = int(e.code or 0)
wall = time.perf_counter() - t0
peak = {
    "rc": code,
    "wall_s": wall,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}
print("\n" + json.dumps(peak), file=sys.__stderr__)
