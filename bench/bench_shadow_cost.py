"""The shadow's CPU cost per input: the off-path runner's process CPU seconds per shadowed input.

The model is bench_serving's and bench_releases' (cnn_medium, Fashion-MNIST, one epoch); the shadow
is its untrained twin of the same size. Three measurements:

1. In isolation: a `ShadowRunner` (its own spawned process at nice 10, one ONNX Runtime thread and a
   queue of 1024 inputs: the server's defaults) is given N single-input jobs, as a server queues one
   per released request, paced at a few rates and as one burst. Its process CPU time (utime + stime
   from /proc) is read once it is warm and again when it is idle, divided by N; the median of three
   rounds that alternate the feeds (the machine is shared). The primary's CPU per
   input on the same model is the ONNX call in this process at batch 1 and at the server's batch cap.
2. What the runner spends it on, timed in this process on the same model and rows, per input at the
   model-call sizes the runner formed at each rate: unpickling the queued jobs, the ONNX call, the
   answers and pair rows, and the SQLite write of the pair log (one transaction per runner loop, as
   the runner writes whenever its queue is empty). The rest is the queue's pipe reads and the loop.
3. In a real server: `datamoat serve` with bench_serving's settings under open-loop load at about a
   quarter and a half of bench_releases' maximum rate, without and with the shadow; the server's CPU
   per answer (its runner left out) against the runner it spawned, per logged pair.
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _serving_util import Server, _proc_cpu_s, _tree, metric_sum
from bench_serving import ARCH, BATCH_ON, ORT_THREADS

from datamoat.data import SPLITS, import_default
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry
from datamoat.registry.pairs import ensure_pairs, pair_row, write_pairs
from datamoat.registry.register import load_version, register_model
from datamoat.serve.config import ServeConfig
from datamoat.serve.control import ServingState
from datamoat.serve.loadtest import LoadTestConfig, loadtest
from datamoat.serve.shadow import ShadowRunner, top_answers
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

N = int(os.environ.get("DATAMOAT_BENCH_SHADOW_INPUTS", "3000"))
ROUNDS = 3
RATES = (150.0, 600.0)  # inputs/s, one job each; bench_releases ran at about 340 and 670 requests/s
SECONDS = float(os.environ.get("DATAMOAT_BENCH_SERVING_SECONDS", "10"))
SERVER_RATES = (300.0, 600.0)  # bench_releases: about a quarter and a half of the max


def _setup(root: Path) -> tuple[Workspace, Registry, str, str, str, np.ndarray]:
    """bench_serving's served model (v1, production) and its untrained twin (v2); test images."""
    ws = Workspace.init(root / "ws")
    data = import_default(ws)
    cfg = TrainConfig(epochs=1, max_train_samples=10000, patience=0)
    save_model(ws, train(new_model(ARCH, data, seed=0), data, cfg, progress=False), name="served")
    save_model(ws, new_model(ARCH, data, seed=1), name="candidate")
    url = f"sqlite:///{(root / 'registry.db').resolve()}"
    reg = Registry(url)
    v1 = register_model(ws, reg, "served", actor="bench")
    v2 = register_model(ws, reg, "candidate", actor="bench")
    reg.promote(v1, "production", actor="bench")
    ensure_pairs(reg.engine)
    x = np.asarray(data.x[data.split == SPLITS["test"]])  # (M, 1, 28, 28) uint8
    return ws, reg, url, v1, v2, x


def _answers(v1: Any, x: np.ndarray) -> list[dict[str, Any]]:
    """The served answers a server would pass to `submit`, one per input (fresh prediction ids)."""
    probs = v1.probabilities(x)  # (n, K)
    best = probs.argmax(1)
    return [
        {
            "prediction_id": uuid.uuid4().hex,
            "label": v1.classes[b],
            "abstained": False,
            "top_k": [{"label": v1.classes[b], "probability": float(p[b])}],
        }
        for p, b in zip(probs, best, strict=True)
    ]


def _feed(runner: ShadowRunner, state: Any, x: np.ndarray, answers: list, rate: float | None) -> float:
    """Submit one job per input, paced at `rate` inputs/s (None: as fast as the queue takes them);
    wait until the runner is idle. Returns the runner's CPU seconds over the feed."""
    version = state.shadow.model.version_id
    pid = runner._proc.pid if runner._proc is not None else None
    before = _proc_cpu_s(pid) if pid else 0.0
    t0 = time.perf_counter()
    for i in range(len(x)):
        if rate is not None:
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        while not runner.submit("shadow", state, version, None, x[i : i + 1], answers[i : i + 1]):  # type: ignore[arg-type]
            time.sleep(0.001)  # queue full: the burst waits, as a server would have dropped
        pid = pid or runner._proc.pid
    runner.idle.wait(60)
    return _proc_cpu_s(pid) - before


def _cpu_per_call(fn: Any, repeat: int) -> float:
    """CPU seconds of this process per call of `fn` (median of three timings of `repeat` calls)."""
    fn()
    times = []
    for _ in range(3):
        c0 = time.process_time()
        for _ in range(repeat):
            fn()
        times.append((time.process_time() - c0) / repeat)
    return statistics.median(times)


def _parts(reg: Registry, v2: Any, state: Any, x: np.ndarray, answers: list, b: int) -> dict[str, float]:
    """CPU seconds per input of each part of one runner loop over `b` single-input jobs."""
    alias, served_v = state.alias, state.model.version_id
    msgs = [
        ("job", "shadow", alias, served_v, v2.version_id, x[i : i + 1].copy(), [(a["prediction_id"], a["label"], 0.9)])
        for i, a in enumerate(answers[:b])
    ]
    blobs = [pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL) for m in msgs]
    batch = np.concatenate([m[5] for m in msgs])  # (b, 1, 28, 28)
    probs, _ = v2.run(batch)

    def rows() -> list[dict[str, Any]]:
        labels, conf = top_answers(probs, v2.classes, {})
        out = []
        for m, label, c in zip(msgs, labels, conf, strict=True):
            pid, s_label, s_conf = m[6][0]
            ans = {"prediction_id": pid, "label": s_label, "abstained": False, "top_k": [{"probability": s_conf}]}
            out.append(pair_row("shadow", alias, served_v, ans, v2.version_id, label, c))
        return out

    def write() -> None:
        r = rows()
        for row in r:
            row["prediction_id"] = uuid.uuid4().hex  # a fresh key each time: the table's primary key
        write_pairs(reg.engine, r)

    repeat = max(1, 512 // b)
    t_rows = _cpu_per_call(rows, repeat)
    return {
        "unpickle jobs": _cpu_per_call(lambda: [pickle.loads(s) for s in blobs], repeat) / b,
        "ONNX call": _cpu_per_call(lambda: v2.run(batch), repeat) / b,
        "answers and pair rows": t_rows / b,
        "SQLite write": (_cpu_per_call(write, max(1, repeat // 4)) - t_rows) / b,
    }


def _runner_pid(server: Server) -> int | None:
    """The server's off-path runner: its spawned child (not multiprocessing's resource tracker)."""
    for p in _tree(server.proc.pid)[1:]:
        cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        if b"spawn_main" in cmd:
            return p
    return None


def _in_server(reg: Registry, url: str, v2: str, root: Path) -> dict[str, dict[str, Any]]:
    """Open loop at each of SERVER_RATES without, then with the shadow: the server's CPU per answer
    (its runner left out) and the runner's CPU per logged pair."""
    out: dict[str, dict[str, Any]] = {}
    args = [*BATCH_ON, "--ort-threads", str(ORT_THREADS), "--open", "/metrics"]
    with Server(url, args, root, "cost") as srv:
        for label in ("without shadow", "with shadow"):
            if label == "with shadow":
                reg.wait_for_acks(reg.start_release(v2, "production", "shadow", actor="bench")["generation"], timeout=5)
            for rate in SERVER_RATES:
                cfg = LoadTestConfig(url=srv.url, concurrency=64, rate=rate, duration_s=2.0, warmup_s=0.5)
                loadtest(cfg)  # warm: the runner starts with the first released request
                time.sleep(1.0)
                runner = _runner_pid(srv)
                main0, run0, m0 = _proc_cpu_s(srv.proc.pid), _proc_cpu_s(runner) if runner else 0.0, srv.metrics()
                res = loadtest(cfg.replace(duration_s=SECONDS, warmup_s=0.0))
                main1 = _proc_cpu_s(srv.proc.pid)
                time.sleep(1.0)  # let the runner finish what the window queued
                run1, m1 = _proc_cpu_s(runner) if runner else 0.0, srv.metrics()
                name = "datamoat_release_pairs_total"
                pairs = metric_sum(m1, name) - metric_sum(m0, name)
                out[f"{rate:.0f} requests/s, {label}"] = {
                    "answers": res.successes,
                    "rps": res.throughput_rps,
                    "p50_ms": res.p50_ms,
                    "p99_ms": res.p99_ms,
                    "server_ms_per_answer": 1000 * (main1 - main0) / max(res.successes, 1),
                    "pairs": pairs,
                    "runner_ms_per_pair": 1000 * (run1 - run0) / pairs if pairs else None,
                }
    return out


def main() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dm-shadow-cost-"))
    _, reg, url, v1_id, v2_id, x_test = _setup(root)
    cfg = ServeConfig()  # the shadow's defaults: its ORT threads and queue
    v1, v2 = load_version(reg, v1_id, ORT_THREADS), load_version(reg, v2_id, cfg.shadow_threads)
    side = ServingState(1, "production", v2, "", {}, v1_id, {}, role="shadow")
    state = ServingState(1, "production", v1, "", {}, v1_id, {}, shadow=side)
    calls: list[int] = []
    runner = ShadowRunner(
        url, lambda: state, cfg.shadow_queue, cfg.shadow_threads, on_pairs=lambda r, n: calls.append(n)
    )
    x = x_test[np.random.default_rng(0).integers(0, len(x_test), N)]  # (N, 1, 28, 28)
    _feed(runner, state, x[:200], _answers(v1, x[:200]), None)  # warm: start the process, load the model
    primary = {b: _cpu_per_call(lambda b=b: v1.run(x[:b]), max(1, 1000 // b)) / b for b in (1, 16)}
    feeds: dict[str, dict[str, Any]] = {}
    for _ in range(ROUNDS):  # rounds alternate the feeds, so a busier spell of the shared machine hits each alike
        for rate in (*RATES, None):
            name = f"paced at {rate:.0f} inputs/s" if rate else "one burst (as fast as the queue takes them)"
            f = feeds.setdefault(name, {"per_round": [], "calls": Counter()})
            calls.clear()
            f["per_round"].append(_feed(runner, state, x, _answers(v1, x), rate) / N)
            f["calls"].update(calls)
    runner.stop()
    for f in feeds.values():
        f["per_input"] = statistics.median(f["per_round"])
        f["mean_call"] = sum(b * k for b, k in f["calls"].items()) / sum(f["calls"].values())
    rows = [
        {
            "feed": name,
            "inputs": N,
            "mean_model_call": f["mean_call"],
            "runner_ms_per_input": 1000 * f["per_input"],
            "rounds_ms": ", ".join(f"{1000 * v:.3f}" for v in f["per_round"]),
            "vs_primary_onnx_b1": f["per_input"] / primary[1],
            "vs_primary_onnx_b16": f["per_input"] / primary[16],
        }
        for name, f in feeds.items()
    ]
    parts_rows = []
    for name, f in feeds.items():
        # Each part timed at every model-call size the runner formed, weighted by the inputs it ran at that size.
        parts: Counter[str] = Counter()
        for b, k in f["calls"].items():
            for part, v in _parts(reg, v2, state, x, _answers(v1, x[:b]), b).items():
                parts[part] += v * b * k / sum(c * n for c, n in f["calls"].items())
        total = sum(parts.values())
        parts_rows.append(
            {
                "feed": name,
                "mean_model_call": f["mean_call"],
                **{f"{k} ms": 1000 * v for k, v in parts.items()},
                "sum ms": 1000 * total,
                "measured ms": 1000 * f["per_input"],
                "rest ms": 1000 * (f["per_input"] - total),
            }
        )
    server = _in_server(reg, url, v2_id, root)
    server_rows: list[dict[str, Any]] = [{"run": k, **v} for k, v in server.items()]
    for rate in SERVER_RATES:
        without, with_s = (
            server[f"{rate:.0f} requests/s, without shadow"],
            server[f"{rate:.0f} requests/s, with shadow"],
        )
        server_rows.append(
            {
                "run": f"{rate:.0f} requests/s: the runner per pair / the server per answer without shadow",
                "ratio": (with_s["runner_ms_per_pair"] or float("nan")) / without["server_ms_per_answer"],
            }
        )
        server_rows.append(
            {
                "run": f"{rate:.0f} requests/s: the server per answer, with / without shadow (queueing the jobs)",
                "ratio": with_s["server_ms_per_answer"] / without["server_ms_per_answer"],
            }
        )
    return {
        "title": "The shadow's CPU cost per input (bench_releases' model, the shadow runner's defaults)",
        "columns": [
            "feed",
            "inputs",
            "mean_model_call",
            "runner_ms_per_input",
            "rounds_ms",
            "vs_primary_onnx_b1",
            "vs_primary_onnx_b16",
        ],  # fmt: skip
        "rows": rows,
        "tables": [
            {
                "title": "Where the runner's CPU goes, per input (timed in-process at the runner's model-call sizes)",
                "columns": ["feed", "mean_model_call", *(f"{k} ms" for k in parts), "sum ms", "measured ms", "rest ms"],
                "rows": parts_rows,
            },
            {
                "title": f"In a real server (the runner the server spawned): open loop, {SECONDS:g} s windows",
                "columns": [
                    "run",
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "answers",
                    "server_ms_per_answer",
                    "pairs",
                    "runner_ms_per_pair",
                    "ratio",
                ],  # fmt: skip
                "rows": server_rows,
            },
        ],
        "summary": {
            "primary_onnx_ms_per_input": {b: 1000 * v for b, v in primary.items()},
            "runner_ms_per_input": {k: [1000 * v for v in f["per_round"]] for k, f in feeds.items()},
            "model_call_sizes": {k: dict(f["calls"]) for k, f in feeds.items()},
            "server": server,
        },
        "notes": [
            f"Model: bench_serving's ({ARCH}, Fashion-MNIST, one epoch), the shadow its untrained twin of the same "
            f"size; the runner with ServeConfig's defaults (shadow_threads {cfg.shadow_threads}, shadow_queue "
            f"{cfg.shadow_queue}), the primary's ONNX call with --ort-threads {ORT_THREADS}, as bench_serving's "
            f"server. Runner CPU: utime + stime of its process from /proc, from warm to idle, over the inputs fed; "
            f"median of {ROUNDS} rounds (each round's in rounds_ms). "
            f"Primary ONNX call in this process: {1000 * primary[1]:.3f} ms an input at batch 1, "
            f"{1000 * primary[16]:.3f} ms at batch 16 (the server's cap).",
            "Breakdown: CPU of this process per input for each part of one runner loop, timed at each model-call "
            "size the runner formed at that rate and weighted by the inputs it ran at that size (one SQLite "
            "transaction per loop); 'rest' is what the parts leave out (the queue's pipe reads and wake-ups, the "
            "report back to the server, the loop) and the timings' noise.",
            "Server rows: the server process alone (its runner left out) per answer, and the runner per logged "
            "pair; the load generator shares the machine.",
        ],
    }
