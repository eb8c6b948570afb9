"""Random photo reads from cold shards, with and without reading the shards ahead first:
`python bench/shard_warm_reads.py WS [N]` (root: it drops the page cache; bench_memory's workspace,
dataset "r"). Times N random photos of the train split read one by one as a training epoch's
decode workers read them, from a dropped page cache; then drops it again, reads the shards front to
back (`warm_shards`) and reads the same photos. Prints one JSON object. Its epoch estimates multiply
the time a photo by the photos of an epoch, which leaves out the kernel's read-ahead (a whole epoch
caches the neighbours of what it reads): `warm_epoch_ab.py` times real epochs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from datamoat.data import load_dataset
from datamoat.data.photo_render import photo_refs, warm_shards
from datamoat.data.shards import read_record
from datamoat.workspace import Workspace


def drop() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


ws = Workspace.open(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
data = load_dataset(ws, "r")
refs = photo_refs(data)
assert refs is not None, "dataset r was not rendered from photos"
train = np.flatnonzero(data.split == 0)
pick = np.random.default_rng(0).choice(len(train), n, replace=False)
objects = ws.object_root


def read(rows: np.ndarray) -> float:
    t0 = time.perf_counter()
    for i in rows:
        shard, offset, size, _ = refs[int(train[i])]
        read_record(f"{objects}/{shard[:2]}/{shard[2:]}", offset, size)
    return time.perf_counter() - t0


drop()
cold = read(pick)
drop()
t0 = time.perf_counter()
warmed = warm_shards(objects, refs.take(train))
warm_s = time.perf_counter() - t0
after = read(pick)
per_photo_cold = cold / n
print(
    json.dumps(
        {
            "photos": len(train),
            "sample": n,
            "cold_reads_s": cold,
            "cold_ms_per_photo": 1000 * per_photo_cold,
            "warm_bytes": warmed,
            "warm_s": warm_s,
            "warm_mb_per_s": warmed / warm_s / 1e6,
            "reads_after_warm_s": after,
            "epoch_reads_cold_s_estimate": per_photo_cold * len(train),
            "epoch_reads_warmed_s_estimate": warm_s + after / n * len(train),
        }
    )
)
