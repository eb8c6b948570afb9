"""One training run for bench_ddp.py, run as `python _ddp_fit.py ...` (one process) or under torchrun
(DDP). Rank 0 writes what it measured as JSON: test accuracy, train-phase samples/s, wall time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from datamoat.configs import config_from_dict
from datamoat.data.dataset import load_dataset
from datamoat.models import new_model
from datamoat.train import distributed
from datamoat.train.loop import train
from datamoat.workspace import Workspace

root, data_id, arch, cfg_json, out = sys.argv[1:6]
data = load_dataset(Workspace.open(root), data_id)
cfg = config_from_dict(json.loads(cfg_json))
t0 = time.perf_counter()
m = train(new_model(arch, data, seed=cfg.seed), data, cfg, progress=False)
wall = time.perf_counter() - t0
if distributed.is_main():
    x, y = data.subset("test")
    acc = float((m.logits(x).argmax(1) == y).mean())
    curve = m.history["curve"]
    sps = float(np.mean([p["samples_per_s"] for p in curve]))
    result = {"test_accuracy": acc, "samples_per_s": sps, "wall_s": wall, "processes": m.history["processes"]}
    Path(out).write_text(json.dumps(result))
distributed.teardown()
