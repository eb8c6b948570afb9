"""Run one `datamoat` command in this process and print its peak memory as JSON on the last line:
`python _peak_rss.py ARGS...` (for bench_memory.py). Children are the photo decode workers. With
DM_MEM_TRACE=FILE it also writes the anonymous and file-backed resident memory once a second, so a
peak can be placed in the run, with the process's CPU seconds and bytes read so far and the machine's
steal and I/O-wait seconds, so a slow stretch can be told from a slow machine."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

from datamoat.cli import main

peak_anon = peak_file = 0  # KiB: the kernel keeps no peak of either part, so a thread samples them
peak_at = {"anon": 0.0, "file": 0.0}  # seconds into the run at which each peak was sampled
TICK = os.sysconf("SC_CLK_TCK")


def machine_s() -> dict[str, float]:
    """Seconds the machine's CPUs spent waiting on I/O and stolen by the hypervisor (other guests), since boot."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]  # user nice system idle iowait irq softirq steal ...
    return {"iowait_s": cpu[4] / TICK, "steal_s": cpu[7] / TICK}


def cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def read_mib() -> float:
    with open("/proc/self/io") as f:
        return next(int(line.split(":")[1]) for line in f if line.startswith("rchar")) / 2**20


def top_files(n: int = 3) -> str:
    """The `n` files with the most resident pages mapped into this process, from /proc/self/smaps."""
    rss: dict[str, int] = {}
    name = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header: the file is the 6th field
                name = head[5].strip() if len(head) == 6 else ""
            elif line.startswith("Rss:") and name.startswith("/"):
                rss[name] = rss.get(name, 0) + int(line.split()[1])
    top = sorted(rss.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{path} {kib / 1024:.1f} MiB" for path, kib in top)


def sample() -> None:
    global peak_anon, peak_file
    trace_to = os.environ.get("DM_MEM_TRACE")
    trace = open(trace_to, "w", buffering=1) if trace_to else None  # noqa: SIM115 (open for the run)
    t0, last = time.perf_counter(), -1.0
    while True:
        with open("/proc/self/status") as f:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("RssAnon", "RssFile")}
        now = time.perf_counter() - t0
        if kib["RssAnon"] > peak_anon:
            peak_anon, peak_at["anon"] = kib["RssAnon"], now
        if kib["RssFile"] > peak_file:
            if trace and kib["RssFile"] > peak_file + (32 << 10) and now > 5:
                # A new file-backed peak past the libraries' pages: name the files it maps, as it happens.
                trace.write(f"{now:.2f} new file peak {kib['RssFile'] / 1024:.1f} MiB: {top_files()}\n")
            peak_file, peak_at["file"] = kib["RssFile"], now
        if trace and time.perf_counter() - last >= 1.0:
            last = time.perf_counter()
            m = machine_s()
            trace.write(
                f"{last - t0:.1f} anon_mib {kib['RssAnon'] / 1024:.1f} file_mib {kib['RssFile'] / 1024:.1f}"
                f" cpu_s {cpu_s():.1f} read_mib {read_mib():.1f} steal_s {m['steal_s']:.1f} iowait_s {m['iowait_s']:.1f}\n"
            )
        time.sleep(0.02)


threading.Thread(target=sample, daemon=True).start()
sys.argv = ["datamoat", *sys.argv[1:]]
t0, m0 = time.perf_counter(), machine_s()
code = 0
try:
    main()
except SystemExit as e:
    code = int(e.code or 0)
wall, m1 = time.perf_counter() - t0, machine_s()
with open("/proc/self/io") as f:  # includes the decode workers once they are reaped
    io = {k: int(v) for k, v in (line.split(":", 1) for line in f)}
peak = {
    "rc": code,
    "wall_s": wall,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    "peak_anon_mib": peak_anon / 1024,  # sampled every 20 ms: a shorter spike can be missed
    "peak_file_mib": peak_file / 1024,  # file-backed pages (mapped libraries and data), sampled alike
    "peak_anon_at_s": round(peak_at["anon"], 2),  # when in the run each peak was sampled
    "peak_file_at_s": round(peak_at["file"], 2),
    "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    # Bytes fetched from the disk against bytes asked for: a stage slower than linear in the data
    # may be reading what the page cache could not keep.
    "disk_read_mib": io["read_bytes"] / 2**20,
    "read_call_mib": io["rchar"] / 2**20,
    # CPU time against wall time: a stage that takes longer for the same CPU seconds a photo waited
    # (on the disk, or on a machine whose other guests took its CPUs: steal).
    "cpu_s": cpu_s(),
    "worker_cpu_s": cpu_s(resource.RUSAGE_CHILDREN),
    "machine_steal_s": m1["steal_s"] - m0["steal_s"],
    "machine_iowait_s": m1["iowait_s"] - m0["iowait_s"],
}
print("\n" + json.dumps(peak), file=sys.__stderr__)
