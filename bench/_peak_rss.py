"""Run one `datamoat` command in this process and print its peak memory as JSON on the last line:
`python _peak_rss.py ARGS...` (for bench_memory.py). Children are the photo decode workers. With
DM_MEM_TRACE=FILE it also writes the anonymous and file-backed resident memory once a second, so a
peak can be placed in the run."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

from datamoat.cli import main

peak_anon = peak_file = 0  # KiB: the kernel keeps no peak of either part, so a thread samples them


def sample() -> None:
    global peak_anon, peak_file
    trace_to = os.environ.get("DM_MEM_TRACE")
    trace = open(trace_to, "w", buffering=1) if trace_to else None  # noqa: SIM115 (open for the run)
    t0, last = time.perf_counter(), -1.0
    while True:
        with open("/proc/self/status") as f:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("RssAnon", "RssFile")}
        peak_anon, peak_file = max(peak_anon, kib["RssAnon"]), max(peak_file, kib["RssFile"])
        if trace and time.perf_counter() - last >= 1.0:
            last = time.perf_counter()
            trace.write(f"{last - t0:.1f} anon_mib {kib['RssAnon'] / 1024:.1f} file_mib {kib['RssFile'] / 1024:.1f}\n")
        time.sleep(0.02)


threading.Thread(target=sample, daemon=True).start()
sys.argv = ["datamoat", *sys.argv[1:]]
t0 = time.perf_counter()
code = 0
try:
    main()
except SystemExit as e:
    code = int(e.code or 0)
wall = time.perf_counter() - t0
with open("/proc/self/io") as f:  # includes the decode workers once they are reaped
    io = {k: int(v) for k, v in (line.split(":", 1) for line in f)}
peak = {
    "rc": code,
    "wall_s": wall,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    "peak_anon_mib": peak_anon / 1024,  # sampled every 20 ms: a shorter spike can be missed
    "peak_file_mib": peak_file / 1024,  # file-backed pages (mapped libraries and data), sampled alike
    "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    # Bytes fetched from the disk against bytes asked for: a stage slower than linear in the data
    # may be reading what the page cache could not keep.
    "disk_read_mib": io["read_bytes"] / 2**20,
    "read_call_mib": io["rchar"] / 2**20,
}
print("\n" + json.dumps(peak), file=sys.__stderr__)
