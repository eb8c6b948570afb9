"""Anonymous memory of `evaluate` batch by batch: `python bench/trace_eval.py WS [MODEL] [DATASET]`
(bench_memory's workspace: model "m", dataset "r"). Prints RssAnon every 10 batches of the val split
and at the end; a pass whose memory follows the batch stays level after the first batches."""

from __future__ import annotations

import sys


def anon_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def main() -> None:
    import datamoat.data.photo_render as render
    from datamoat.data import load_dataset
    from datamoat.evaluate import metrics
    from datamoat.models import load_model
    from datamoat.workspace import Workspace

    ws = Workspace.open(sys.argv[1])
    model = load_model(ws, sys.argv[2] if len(sys.argv) > 2 else "m")
    data = load_dataset(ws, sys.argv[3] if len(sys.argv) > 3 else "r")
    batches = render.pixel_batches

    def traced(*args, **kw):  # evaluate's own batches, counted
        for i, out in enumerate(batches(*args, **kw)):
            if i % 10 == 0:
                print(f"batch {i:4d} anon {anon_mib():7.1f} MiB", flush=True)
            yield out

    render.pixel_batches = traced  # evaluate imports it when it runs
    print(f"start      anon {anon_mib():7.1f} MiB", flush=True)
    ev = metrics.evaluate(model, data, metrics.EvalConfig(split="val"))
    print(f"end        anon {anon_mib():7.1f} MiB ({ev.n} samples)", flush=True)


if __name__ == "__main__":
    main()
