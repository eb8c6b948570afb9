"""Where a training run's memory goes: peak, anonymous and file-backed RSS before the run, after its
epoch and at the end. `python bench/_rss_probe_train.py WORKSPACE`, on a workspace bench_memory.py
built (its rendered dataset is named r)."""

from __future__ import annotations

import resource
import sys

from datamoat.data.dataset import load_dataset
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


def show(tag: str) -> None:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"{tag}: peak {peak} MiB, anon {status['RssAnon'].strip()}, file {status['RssFile'].strip()}", flush=True)


data = load_dataset(Workspace.open(sys.argv[1]), "r")
model = new_model("cnn_small", data)
show("before train")
train(model, data, TrainConfig(epochs=1), progress=False, on_epoch=lambda point: show("after the epoch"))
show("after train")
