"""Run one `datamoat` command in this process and print its peak memory as JSON on the last line:
`python _peak_rss.py ARGS...` (for bench_memory.py). Children are the photo decode workers."""

from __future__ import annotations

import json
import resource
import sys
import threading
import time

from datamoat.cli import main

peak_anon = 0  # KiB: the kernel keeps no peak of anonymous memory, so a thread samples it


def sample_anon() -> None:
    global peak_anon
    while True:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
        peak_anon = max(peak_anon, kib)
        time.sleep(0.02)


threading.Thread(target=sample_anon, daemon=True).start()
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
    "peak_anon_mib": peak_anon / 1024,  # sampled every 20 ms: a shorter spike can be missed
    "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}
print("\n" + json.dumps(peak), file=sys.__stderr__)
