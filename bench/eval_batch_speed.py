"""eval speed by batch size: `python bench/eval_batch_speed.py WS` (bench_memory's workspace: model
"m", dataset "r"). Times `evaluate` on the val split at 1024 and 256, alternating, in one process."""

from __future__ import annotations

import sys
import time

from datamoat.data import load_dataset
from datamoat.evaluate.metrics import EvalConfig, evaluate
from datamoat.models import load_model
from datamoat.workspace import Workspace

ws = Workspace.open(sys.argv[1])
model, data = load_model(ws, "m"), load_dataset(ws, "r")
for batch in (1024, 256, 1024, 256):
    t0 = time.perf_counter()
    ev = evaluate(model, data, EvalConfig(split="val", batch_size=batch))
    print(batch, f"{time.perf_counter() - t0:.1f}s", ev.n, flush=True)
