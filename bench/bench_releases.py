"""Releases and protocols on the serving benchmark's model, in one run on one machine:

1. the shadow's cost to the primary path: p50 and p99 of `/v1/predict` at half the maximum rate
   (open loop, Poisson arrivals), without and with a shadow candidate of the same size, alternated
   `ROUNDS` times so a drift of the machine hits both alike; the target is within 10%. The same at
   a quarter of the maximum shows where the machine has room for the shadow;
2. the share of production requests the shadow kept up with (pairs logged over answers) and the
   pairs dropped when its queue was full;
3. the Open Inference Protocol against `/v1`: closed-loop throughput on the same server with JSON
   (`/v1` nested lists), v2 JSON tensors and the v2 binary extension, and the round trip of one
   request through `tritonclient.http` against `httpx` on `/v1`.

Servers are `datamoat serve` subprocesses with bench_serving's settings (batching on, one ONNX
Runtime thread: the 2-core machine), the shadow's own defaults (one thread, a queue of 1024
inputs). The load generator shares the machine. `DATAMOAT_BENCH_SERVING_SECONDS` sets each window.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _serving_util import CpuMeter, Server, metric_sum
from bench_serving import BATCH_ON, CONCURRENCY, ORT_THREADS, _setup

from datamoat.serve.loadtest import LoadTestConfig, loadtest

SECONDS = float(os.environ.get("DATAMOAT_BENCH_SERVING_SECONDS", "10"))
ROUNDS = int(os.environ.get("DATAMOAT_BENCH_RELEASE_ROUNDS", "3"))
TARGET = 1.10


def _open(url: str, rate: float) -> Any:
    return loadtest(LoadTestConfig(url=url, concurrency=64, rate=rate, duration_s=SECONDS, warmup_s=1.0))


def _round_trips(url: str, shape: tuple[int, ...], n: int = 200) -> dict[str, float]:
    """Median ms of one sequential request: httpx on /v1 (JSON) and tritonclient on v2 (binary)."""
    import httpx
    import tritonclient.http as tc

    x = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)  # (1, C, H, W)
    body = {"inputs": x[0].tolist()}
    out: dict[str, list[float]] = {"httpx /v1 json": [], "tritonclient v2 binary": [], "tritonclient v2 json": []}
    host = url.removeprefix("http://")
    with httpx.Client(base_url=url, trust_env=False) as h, tc.InferenceServerClient(host) as t:
        for binary in (True, False):
            inp = tc.InferInput("input", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=binary)
            key = f"tritonclient v2 {'binary' if binary else 'json'}"
            for i in range(n + 20):
                t0 = time.perf_counter()
                t.infer("production", [inp])
                if i >= 20:  # warm connections first
                    out[key].append(1000 * (time.perf_counter() - t0))
        for i in range(n + 20):
            t0 = time.perf_counter()
            assert h.post("/v1/predict", json=body).status_code == 200
            if i >= 20:
                out["httpx /v1 json"].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> dict:
    root = Path(tempfile.mkdtemp(prefix="dm-releases-"))
    _, reg, url, v1, v2, _ = _setup(root)  # v1 serves production; v2 is an untrained twin of the same size
    args = [*BATCH_ON, "--ort-threads", str(ORT_THREADS), "--open", "/metrics"]
    rows: list[dict[str, Any]] = []
    with Server(url, args, root, "rel") as srv:
        closed = {}
        for payload in ("json", "v2", "v2-binary", "npy"):
            cfg = LoadTestConfig(url=srv.url, concurrency=CONCURRENCY, payload=payload, duration_s=SECONDS)
            closed[payload] = loadtest(cfg)
            rows.append(
                {
                    "what": f"closed loop, {CONCURRENCY} clients, payload {payload}",
                    "rps": closed[payload].throughput_rps,
                    "vs_v1_json": closed[payload].throughput_rps / closed["json"].throughput_rps,
                    "p50_ms": closed[payload].p50_ms,
                    "p99_ms": closed[payload].p99_ms,
                }
            )
        trips = _round_trips(srv.url, tuple(closed["json"].input_shape))
        for k, ms in trips.items():
            rows.append({"what": f"one request, sequential: {k}", "p50_ms": ms})

        rate = 0.5 * closed["json"].throughput_rps
        labels = ("without shadow", "with shadow", "without shadow, quarter rate", "with shadow, quarter rate")
        runs: dict[str, list[Any]] = {k: [] for k in labels}
        cpu: dict[str, list[float]] = {k: [] for k in labels}
        pairs = dropped = answers = 0.0
        for _ in range(ROUNDS):
            for label in labels:
                if label.startswith("with shadow"):
                    out = reg.start_release(v2, "production", "shadow", actor="bench")
                else:
                    out = reg.end_release("production", "shadow", actor="bench") if reg.releases() else None
                if out is not None:
                    reg.wait_for_acks(out["generation"], timeout=5)
                before = srv.metrics()
                with CpuMeter([srv]) as meter:
                    runs[label].append(_open(srv.url, rate / 2 if "quarter" in label else rate))
                after = srv.metrics()
                cpu[label].append(meter.server)
                if label.startswith("with shadow"):
                    time.sleep(1.0)  # let the runner finish what the window queued
                    after = srv.metrics()
                    d = {k: metric_sum(after, k) - metric_sum(before, k) for k in
                         ("datamoat_release_pairs_total", "datamoat_shadow_dropped_total",
                          "datamoat_release_answers_total")}  # fmt: skip
                    pairs += d["datamoat_release_pairs_total"]
                    dropped += d["datamoat_shadow_dropped_total"]
                    answers += d["datamoat_release_answers_total"]
    med = {k: {q: statistics.median(getattr(r, q) for r in v) for q in ("p50_ms", "p99_ms")} for k, v in runs.items()}
    ratio = {q: med["with shadow"][q] / med["without shadow"][q] for q in ("p50_ms", "p99_ms")}
    quarter = {
        q: med["with shadow, quarter rate"][q] / med["without shadow, quarter rate"][q] for q in ("p50_ms", "p99_ms")
    }
    for label in runs:
        at = (
            f"{rate / 2:.0f} req/s (a quarter of the max)" if "quarter" in label else f"{rate:.0f} req/s (half the max)"
        )
        rows.append(
            {
                "what": f"open loop at {at}, {label.removesuffix(', quarter rate')}, median of {ROUNDS}",
                "rps": statistics.median(r.throughput_rps for r in runs[label]),
                "p50_ms": med[label]["p50_ms"],
                "p99_ms": med[label]["p99_ms"],
                "server_cores": statistics.median(cpu[label]),
            }
        )
    for q in ("p50_ms", "p99_ms"):
        rows.append(
            {
                "what": f"shadow / no shadow, {q[:3]}",
                "ratio": ratio[q],
                "target": f"<= {TARGET}",
                "met": "yes" if ratio[q] <= TARGET else "NO",
            }
        )
    for q in ("p50_ms", "p99_ms"):
        rows.append({"what": f"shadow / no shadow at a quarter of the max, {q[:3]}", "ratio": quarter[q]})
    coverage = pairs / max(answers, 1)
    per_round = [
        (round(a.p99_ms, 1), round(b.p99_ms, 1))
        for a, b in zip(runs["without shadow"], runs["with shadow"], strict=True)
    ]
    notes = [
        f"Model: bench_serving's ({os.environ.get('DATAMOAT_BENCH_MODEL_ARCH', 'cnn_medium')}, Fashion-MNIST, one "
        "epoch), the shadow an untrained twin of the same size; server: batching on (max batch 16, 2 ms), one ORT "
        f"thread; the shadow's defaults (ServeConfig.shadow_threads 1, shadow_queue 1024). {SECONDS:g} s windows, "
        f"{ROUNDS} rounds alternating without and with the shadow; p99 per round (without, with): {per_round}.",
        f"The shadow ran on {coverage:.1%} of the answered requests ({pairs:.0f} pairs of {answers:.0f} answers); "
        f"{dropped:.0f} inputs were dropped because its queue was full.",
        "Round trips: sequential single requests on a warm connection, median of 200; tritonclient is the Triton "
        "project's own HTTP client, pointed at datamoat unchanged.",
    ]
    return {
        "title": "Shadow releases and the Open Inference Protocol on the serving model",
        "columns": ["what", "rps", "vs_v1_json", "p50_ms", "p99_ms", "server_cores", "ratio", "target", "met"],
        "rows": rows,
        "notes": notes,
        "summary": {
            "shadow_p50_ratio": ratio["p50_ms"],
            "shadow_p99_ratio": ratio["p99_ms"],
            "quarter_rate_ratios": quarter,
            "server_cores": {k: statistics.median(v) for k, v in cpu.items()},
            "coverage": coverage,
        },
    }
