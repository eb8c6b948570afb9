"""One photo-stream training epoch from a dropped page cache, on two source trees:
`python bench/warm_epoch_ab.py WS TREE_A TREE_B [ROUNDS] [IOPS:MBPS]` (root: it drops the page cache; WS is
bench_memory's workspace, dataset "r"). Runs `datamoat train --data r --arch cnn_small --epochs 1`
as a fresh process with each tree first on PYTHONPATH, alternating A, B for ROUNDS rounds (1), the
page cache dropped before each, so both read the shards from the disk. Prints one JSON object with
each run's wall seconds and what it read from the disk; e.g. TREE_A a worktree of the commit before
`warm_shards`, TREE_B one of the commit after it.

IOPS:MBPS throttles the runs' reads from WS's disk to that many reads a second and MB a second
(cgroup v1 blkio, `blkio.throttle.read_*_device`), so a fast local disk, or one the host caches,
behaves as a slower one does: a cloud volume or a network disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def drop() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def disk_read_mib() -> float:
    # read_bytes of reaped children: the datamoat process and its decode workers
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    return int(io["read_bytes"]) / 2**20


BLKIO = Path("/sys/fs/cgroup/blkio/dm-warm-epoch-ab")


def throttle(ws: str, spec: str) -> None:
    """Reads from the disk holding `ws` capped for the processes in BLKIO."""
    iops, mbps = spec.split(":")
    dev = os.stat(ws).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (block / "partition").exists():  # the throttle takes the whole disk
        block = block.resolve().parent
    disk = (block / "dev").read_text().strip()
    BLKIO.mkdir(exist_ok=True)
    (BLKIO / "blkio.throttle.read_iops_device").write_text(f"{disk} {int(iops)}\n")
    (BLKIO / "blkio.throttle.read_bps_device").write_text(f"{disk} {int(float(mbps) * 1e6)}\n")


def epoch(ws: str, tree: str, name: str, throttled: bool) -> dict:
    drop()
    before = disk_read_mib()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "datamoat", "--home", ws, "train", "--data", "r", "--arch", "cnn_small", "--epochs", "1",
           "--name", name, "--json"]  # fmt: skip
    if throttled:  # the shell joins the cgroup, then becomes the command: its workers inherit it
        cmd = ["sh", "-c", f'echo $$ > {BLKIO}/cgroup.procs && exec "$@"', "sh", *cmd]
    subprocess.run(cmd, env={**os.environ, "PYTHONPATH": tree}, check=True, capture_output=True)
    return {"tree": tree, "wall_s": time.perf_counter() - t0, "disk_read_mib": disk_read_mib() - before}


def main() -> None:
    ws, a, b = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    spec = sys.argv[5] if len(sys.argv) > 5 else None
    if spec:
        throttle(ws, spec)
    runs = [epoch(ws, tree, f"ab-{k}-{r}", spec is not None) for r in range(rounds) for k, tree in (("a", a), ("b", b))]
    print(json.dumps({"command": " ".join(["python", *sys.argv]), "throttle_iops_mbps": spec, "runs": runs}))


if __name__ == "__main__":
    main()
