"""Serving on Fashion-MNIST, in one run: server throughput against raw ONNX
Runtime, batching on against off, p99 at half the maximum throughput, and
how fast a rollback and a takedown reach two running servers under load.

Servers are real `datamoat serve` subprocesses on loopback ports, sharing a
SQLite registry; the load comes from `datamoat.serve.loadtest` in this process
(one JSON image per request), so the load generator shares the 2 cores with
the server, and its CPU use is reported. `DATAMOAT_BENCH_MODEL_ARCH` picks
another architecture; `DATAMOAT_BENCH_SERVING_SECONDS` the length of each
measured window (default 10).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _serving_util import CpuMeter, Recorder, Server, metric_sum, ort_throughput

from datamoat.data import import_default
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry
from datamoat.registry.register import register_model
from datamoat.serve.engine import load_version
from datamoat.serve.loadtest import LoadTestConfig, loadtest
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

ARCH = os.environ.get("DATAMOAT_BENCH_MODEL_ARCH", "cnn_medium")
SECONDS = float(os.environ.get("DATAMOAT_BENCH_SERVING_SECONDS", "10"))
CONCURRENCY = 32
ORT_THREADS = 1  # see the settings note: one ORT thread leaves the other core to HTTP and the client
# Half the concurrency: one batch fills while the other runs. With a cap of 32 at 32 clients every client sits
# in the same batch, so the model idles while answers go out and new requests come in (the 'tried' row).
BATCH_ON = ["--max-batch-size", "16", "--max-wait-ms", "2"]
BATCH_OFF = ["--max-batch-size", "1"]
# Other served models, each with batching on and off against its own raw ORT: where the tiny Fashion-MNIST CNN
# spends most of a request in HTTP and JSON, these spend it in the model. Untrained weights: dense ONNX Runtime
# does the same arithmetic whatever their values. Set DATAMOAT_BENCH_SERVING_VARIANTS=0 to skip them.
VARIANTS = {
    "mlp 4096x3 (37M weights, weight-bound)": ("mlp", {"hidden": (4096, 4096, 4096), "dropout": 0.0}),
    "resnet (compute-bound conv)": ("resnet", {}),
}
RUN_VARIANTS = os.environ.get("DATAMOAT_BENCH_SERVING_VARIANTS", "1") != "0"
ALTERNATIVES = {
    "--ort-threads 2 (= 0, ORT's default here)": [*BATCH_ON, "--ort-threads", "2"],
    "--max-batch-size 32": ["--max-batch-size", "32", "--max-wait-ms", "2", "--ort-threads", str(ORT_THREADS)],
    "--max-wait-ms 5": ["--max-batch-size", "16", "--max-wait-ms", "5", "--ort-threads", str(ORT_THREADS)],
    # Two processes, two event loops: HTTP work on both cores (mean batch: each worker has its own metrics).
    "--workers 2": [*BATCH_ON, "--ort-threads", str(ORT_THREADS), "--workers", "2"],
}


def _row(what: str, value: Any, target: str = "", met: bool | None = None, unit: str = "") -> dict[str, Any]:
    shown = f"{value:.3g}" if isinstance(value, float) else str(value)
    return {
        "what": what,
        "value": f"{shown} {unit}".strip(),
        "target": target,
        "met": "" if met is None else ("yes" if met else "NO"),
    }


def _setup(root: Path) -> tuple[Workspace, Registry, str, str, str, dict[str, str]]:
    """Train the served model, register it (v1) and an untrained twin (v2, same compute) as the bad release."""
    ws = Workspace.init(root / "ws")
    data = import_default(ws)
    good = train(
        new_model(ARCH, data, seed=0), data, TrainConfig(epochs=1, max_train_samples=10000, patience=0), progress=False
    )
    save_model(ws, good, name="served")
    save_model(ws, new_model(ARCH, data, seed=1), name="regressed")
    url = f"sqlite:///{(root / 'registry.db').resolve()}"
    reg = Registry(url)
    v1 = register_model(ws, reg, "served", actor="bench")
    v2 = register_model(ws, reg, "regressed", actor="bench")
    reg.promote(v1, "production", actor="bench")
    reg.promote(v2, "production", actor="bench", reason="bench: a release to roll back")
    reg.rollback("production", actor="bench")  # throughput runs serve v1; v2 comes back for the control part
    aliases = {}
    for i, (label, (arch, overrides)) in enumerate(VARIANTS.items() if RUN_VARIANTS else ()):
        save_model(ws, new_model(arch, data, seed=0, **overrides), name=f"variant-{i}")
        aliases[label] = f"variant-{i}"
        reg.promote(register_model(ws, reg, f"variant-{i}", actor="bench"), f"variant-{i}", actor="bench")
    return ws, reg, url, v1, v2, aliases


def _closed(server: Server, seconds: float, payload: str = "json") -> tuple[Any, CpuMeter, float]:
    """Warm up, then a closed-loop run at CONCURRENCY; (result, CPU shares, mean formed batch)."""
    cfg = dict(url=server.url, concurrency=CONCURRENCY, payload=payload)
    loadtest(LoadTestConfig(**cfg, duration_s=1.5, warmup_s=0.5))
    before = server.metrics()
    with CpuMeter([server]) as cpu:
        res = loadtest(LoadTestConfig(**cfg, duration_s=seconds, warmup_s=0.0))
    after = server.metrics()
    if "--workers" in server.cmd:  # each worker keeps its own metrics, and a GET reaches any one of them
        return res, cpu, float("nan")
    n = metric_sum(after, "datamoat_batch_size_count") - metric_sum(before, "datamoat_batch_size_count")
    s = metric_sum(after, "datamoat_batch_size_sum") - metric_sum(before, "datamoat_batch_size_sum")
    return res, cpu, s / max(n, 1)


def _control(reg: Registry, rec: Recorder, action, is_new, is_old, n_servers: int) -> dict[str, Any]:
    """Run one operator command under `rec`'s load; time it against the answers recorded."""
    time.sleep(1.0)  # steady load before
    t0 = time.perf_counter()
    out = action()
    acks = reg.wait_for_acks(out["generation"], timeout=5)
    t1 = time.perf_counter()
    time.sleep(1.0)  # answers after the command returned
    recs = [r for r in list(rec.records) if r[1] >= t0]  # (sent, received, server, status, version)
    firsts = [
        min((got for _, got, i, s, v in recs if i == k and is_new(s, v)), default=float("inf")) - t0
        for k in range(n_servers)
    ]
    late = [(sent, got) for sent, got, _, s, v in recs if got > t1 and is_old(s, v)]
    return {
        "first_new_s": max(firsts),
        "first_new_per_server_s": firsts,
        "command_s": t1 - t0,
        "stale_after_return": len(late),
        "stale_sent_after_return": sum(1 for sent, _ in late if sent > t1),
        "stale_latest_ms": max((1000 * (got - t1) for _, got in late), default=0.0),
        "answers_after_return": sum(1 for r in recs if r[1] > t1),
        "acked": acks["acked"],
        "missing": acks["missing"],
    }


def _throughput(url: str, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Part 1-3: the closed-loop runs, the open-loop run, the settings tried."""
    threads = ["--ort-threads", str(ORT_THREADS)]
    out: dict[str, Any] = {"tried": {}}
    with Server(url, [*BATCH_ON, *threads], root, "on", env) as srv:
        out["on"] = _closed(srv, SECONDS)
        out["on npy"] = _closed(srv, SECONDS, payload="npy")
        out["rate"] = 0.5 * out["on"][0].throughput_rps
        with CpuMeter([srv]) as cpu:
            cfg = LoadTestConfig(url=srv.url, concurrency=64, rate=out["rate"], duration_s=SECONDS, warmup_s=1)
            out["open"] = (loadtest(cfg), cpu)
    with Server(url, [*BATCH_OFF, *threads], root, "off", env) as srv:
        out["off"] = _closed(srv, SECONDS)
    for label, args in ALTERNATIVES.items():  # shorter windows: what the chosen setting is compared with
        with Server(url, args, root, "alt", env) as srv:
            out["tried"][label] = _closed(srv, SECONDS / 2)
    return out


def _variants(reg: Registry, url: str, root: Path, env: dict[str, str], aliases: dict[str, str]) -> dict[str, Any]:
    """Part 5: other models, batching on and off at CONCURRENCY, npy payloads, each against its raw ORT."""
    threads = ["--ort-threads", str(ORT_THREADS)]
    out = {}
    for label, alias in aliases.items():
        runs = {}
        for mode, args in (("on", BATCH_ON), ("off", BATCH_OFF)):
            with Server(url, [*args, *threads, "--alias", alias], root, f"{alias}-{mode}", env) as srv:
                runs[mode] = _closed(srv, SECONDS, payload="npy")
        _, _, b_mean, raw, raw_cpu = _raw_ort(reg, reg.aliases()[alias], runs["on"][2])
        out[label] = {"runs": runs, "raw": raw, "raw_cpu": raw_cpu, "b_mean": b_mean}
    return out


def _raw_ort(reg: Registry, version_id: str, mean_batch: float) -> tuple[Any, np.ndarray, int, dict, dict]:
    """Raw ORT on the server's own session loader and thread setting, at batch 1, the server's mean formed
    batch and 32: (loaded version, the 32 images (32, C, H, W), mean batch rounded, img/s, img/CPU-s)."""
    lv = load_version(reg, version_id, ORT_THREADS)
    b_mean = max(1, round(mean_batch))
    imgs = np.random.default_rng(0).integers(0, 256, (32, *lv.input_shape), dtype=np.uint8)  # (32, C, H, W)
    raw, raw_cpu = ort_throughput(lv.session, {b: lv.normalize(imgs[:b]) for b in sorted({1, b_mean, 32})}, seconds=3.0)
    return lv, imgs, b_mean, raw, raw_cpu


def _incidents(reg: Registry, url: str, root: Path, env: dict[str, str], v1: str, v2: str, body: bytes) -> dict:
    """Part 4: rollback, takedown with a fallback, takedown to 503, on two servers under load."""
    reg.promote(v2, "production", actor="bench", reason="bench: the release to roll back")  # history: [v1]
    args = [*BATCH_ON, "--ort-threads", str(ORT_THREADS)]
    ok = lambda want: lambda s, v: s == 200 and v == want  # noqa: E731
    with Server(url, args, root, "ctl-a", env) as a, Server(url, args, root, "ctl-b", env) as b:
        with Recorder([a.url, b.url], body, per_server=3) as rec:
            out = {
                "rollback": _control(
                    reg, rec, lambda: reg.rollback("production", actor="bench", reason="bench"), ok(v1), ok(v2), 2
                )
            }
            out["takedown with fallback"] = _control(
                reg, rec, lambda: reg.takedown(v1, actor="bench", reason="bench", fallback=v2), ok(v2), ok(v1), 2
            )
            reg.wait_for_acks(reg.restore(v1, actor="bench", reason="bench")["generation"], timeout=5)
            out["takedown, no fallback (503)"] = _control(
                reg, rec, lambda: reg.takedown(v1, actor="bench", reason="bench"), lambda s, v: s == 503, ok(v1), 2
            )
        out["recorded"] = len(rec.records)
    return out


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dm-bench-serving-", ignore_cleanup_errors=True) as d:
        return _main(Path(d))


def _main(root: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    _, reg, url, v1, v2, aliases = _setup(root)
    setup_s = time.perf_counter() - t_start
    env = {"OMP_NUM_THREADS": "1"}
    t = _throughput(url, root, env)
    (on, cpu_on, mean_batch), (off, cpu_off, _), (opened, cpu_open) = t["on"], t["off"], t["open"]
    npy, cpu_npy, npy_batch = t["on npy"]
    var = _variants(reg, url, root, env, aliases)

    lv, imgs, b_mean, raw, raw_cpu = _raw_ort(reg, v1, mean_batch)  # timed with no server running

    inc = _incidents(reg, url, root, env, v1, v2, json.dumps({"inputs": imgs[0].tolist()}).encode())
    steps = {k: v for k, v in inc.items() if k != "recorded"}

    on_rps, off_rps = on.throughput_rps, off.throughput_rps
    ratio = on_rps / raw[b_mean]
    ms = lambda cpu, res: 1000 * cpu / res.throughput_rps  # noqa: E731  (CPU ms per request)
    rows = [
        _row("raw ORT, batch 1", raw[1], unit="img/s"),
        _row(f"raw ORT, batch {b_mean} (the server's mean formed batch, {mean_batch:.1f})", raw[b_mean], unit="img/s"),
        _row("raw ORT, batch 32", raw[32], unit="img/s"),
        _row("server, batching on, c=32", on_rps, unit="req/s = img/s"),
        _row("server, batching off, c=32", off_rps, unit="req/s = img/s"),
        _row("server on / raw ORT at its mean batch", ratio, ">= 0.7", ratio >= 0.7),
        _row("server on / raw ORT batch 1", on_rps / raw[1]),
        _row("server on / raw ORT batch 32", on_rps / raw[32]),
        _row("batching on / off", on_rps / off_rps, ">= 2", on_rps >= 2 * off_rps),
        _row(
            "server CPU per request, on / off",
            f"{ms(cpu_on.server, on):.2f} / {ms(cpu_off.server, off):.2f}",
            unit="ms",
        ),
        _row(
            "load generator CPU per request, on / off",
            f"{ms(cpu_on.client, on):.2f} / {ms(cpu_off.client, off):.2f}",
            unit="ms",
        ),
        _row(
            "server, batching on, c=32, .npy body instead of JSON",
            f"{npy.throughput_rps:.0f} req/s, mean batch {npy_batch:.1f}, server CPU {ms(cpu_npy.server, npy):.2f} "
            f"ms/req, load generator {ms(cpu_npy.client, npy):.2f} ms/req",
        ),
        _row(
            f"raw ORT per CPU second, batch 1 / {b_mean} / 32",
            " / ".join(f"{raw_cpu[b]:.0f}" for b in (1, b_mean, 32)),
            unit="img/CPU-s",
        ),
        _row(
            "server on per server-CPU second / raw ORT per CPU second at its mean batch",
            on_rps / cpu_on.server / raw_cpu[b_mean],
        ),
        _row(
            f"open loop at {t['rate']:.0f} req/s (0.5x max): p50 / p95 / p99",
            f"{opened.p50_ms:.1f} / {opened.p95_ms:.1f} / {opened.p99_ms:.1f}",
            "reported",
            unit="ms",
        ),
    ]
    for label, v in var.items():
        (von, vcpu_on, vmb), (voff, vcpu_off, _) = v["runs"]["on"], v["runs"]["off"]
        r_on, r_off, vb = von.throughput_rps, voff.throughput_rps, v["b_mean"]
        rows += [
            _row(
                f"{label}: raw ORT, batch 1 / {vb} (the mean formed batch, {vmb:.1f}) / 32",
                " / ".join(f"{v['raw'][b]:.0f}" for b in (1, vb, 32)),
                unit="img/s",
            ),
            _row(f"{label}: server on / off, c=32, .npy", f"{r_on:.0f} / {r_off:.0f}", unit="req/s"),
            _row(
                f"{label}: server on / raw ORT at its mean batch",
                r_on / v["raw"][vb],
                ">= 0.7",
                r_on >= 0.7 * v["raw"][vb],
            ),
            _row(f"{label}: batching on / off", r_on / r_off, ">= 2", r_on >= 2 * r_off),
            _row(
                f"{label}: server CPU per request on / off; cores on: {vcpu_on.line()}",
                f"{ms(vcpu_on.server, von):.2f} / {ms(vcpu_off.server, voff):.2f}",
                unit="ms",
            ),
        ]
    for label, (res, cpu, mb) in t["tried"].items():
        batch = "n/a (per worker)" if mb != mb else f"{mb:.1f}"  # NaN: see _closed
        shown = f"{res.throughput_rps:.0f} req/s, mean batch {batch}, server CPU {ms(cpu.server, res):.2f} ms/req"
        rows.append(_row(f"tried: batching on with {label}", shown))
    for name, r in steps.items():
        rows += [
            _row(
                f"{name}: command start -> first new-state answer (both servers)",
                r["first_new_s"] * 1000,
                "< 1000",
                r["first_new_s"] < 1.0,
                "ms",
            ),
            _row(f"{name}: command returned (write + both acks)", r["command_s"] * 1000, unit="ms"),
            _row(
                f"{name}: old-version answers received after return (of {r['answers_after_return']}; "
                f"requested after return: {r['stale_sent_after_return']})",
                r["stale_after_return"],
                "0",
                r["stale_after_return"] == 0,
            ),
        ]
    total = time.perf_counter() - t_start
    acked = sorted({s for r in steps.values() for s in r["acked"]})
    missing = sorted({s for r in steps.values() for s in r["missing"]})
    notes = [
        f"Model: {ARCH} trained 1 epoch on a 10,000-image stratified Fashion-MNIST subset, fp32 ONNX, input "
        f"{tuple(lv.input_shape)}. Servers: `datamoat serve --no-predict-auth --ort-threads {ORT_THREADS}` "
        f"(batching on: `{' '.join(BATCH_ON)}`; off: `{' '.join(BATCH_OFF)}`), OMP_NUM_THREADS=1, one uvicorn "
        "worker (the 'tried' row runs --workers 2), prediction logging on (the CLI has no switch for it). No predict "
        "token: the server caches an accepted token, so a token would add a dict lookup, not a database read.",
        f"Settings: {ORT_THREADS} ORT thread leaves the other core to the event loop and the load generator; the "
        "'tried' rows run the alternatives for half as long in this run (2 threads = ORT's default on 2 cores).",
        f"Load: `datamoat.serve.loadtest` (an aiohttp client) closed loop, concurrency {CONCURRENCY}, one JSON image per request, "
        f"{SECONDS:g} s after a 2 s warm-up, in this process on the same 2 cores. CPU in cores (CPU s / wall s) "
        f"during batching on: {cpu_on.line()}; off: {cpu_off.line()}; open loop: {cpu_open.line()}.",
        "Raw ORT: `session.run` alone on pre-normalised float32 input (no HTTP, JSON, normalisation or softmax), "
        f"the server's own session loader (`load_version`, {ORT_THREADS} intra-op thread), timed with no server "
        "running, median of 3 interleaved windows. The server also pays HTTP, JSON parsing, normalisation, "
        "softmax, answer building and the prediction log per request, and shares the cores with the load "
        "generator; the rows per CPU second take the CPU split and the other users of the machine out of the "
        "comparison (with 1 intra-op thread ORT runs in the calling thread, so process CPU time is its CPU).",
        "The .npy row is the same server and load as 'batching on' with the image sent as `numpy.save` bytes "
        "(application/x-npy, 912 bytes) instead of JSON (about 3.6 KB).",
        "Other models (rows named by model): the same server settings and load, .npy bodies, each model on its own "
        "alias, against its own raw ORT timed the same way. The 37M-weight MLP streams 147 MB of weights per call, "
        "so one image per call wastes most of it and batching pays; the ResNet's convolutions are already "
        "efficient at batch 1 on a CPU, so batching gains little there, while both spend most of a request in the "
        "model rather than in HTTP. Untrained weights: dense ONNX Runtime does the same work whatever their values.",
        f"Open loop: Poisson arrivals at {t['rate']:.0f} req/s, at most 64 in flight, {opened.successes} answers, "
        f"{opened.errors} errors, {opened.dropped} dropped; latency from the scheduled arrival.",
        f"Control: two servers (batching on) on one SQLite registry, 3 closed-loop clients each in a background "
        f"thread ({inc['recorded']} answers recorded). Steps: rollback production v2 -> v1; takedown v1 with "
        "fallback v2; restore; takedown v1 with no fallback (503). Each is timed from the call of the `Registry` "
        "method to `wait_for_acks(generation, timeout=5)` returning; 'first new-state answer' is the later of the "
        "two servers' first answers from the new state; 'received after return' counts answers the clients "
        "received after the command returned, and 'requested after return' those of them whose request was sent "
        "after it (an answer requested before may have left the server before its acknowledgement and been read "
        "late by a client thread starved of CPU; the latest one came "
        f"{max(r['stale_latest_ms'] for r in steps.values()):.0f} ms after the return). "
        f"Acknowledged by {acked}; missing: {missing or 'none'}.",
        f"Reproduce: `python bench/run.py serving` (whole run {total:.0f} s, setup and training {setup_s:.0f} s). "
        "On a shared machine the numbers are noisy; 'others on the machine' above says how busy it was.",
    ]
    return {
        "title": "Serving: throughput against raw ONNX Runtime, batching, latency, and incident control timing",
        "columns": ["what", "value", "target", "met"],
        "rows": rows,
        "notes": notes,
        "summary": {
            "arch": ARCH,
            "seconds_per_window": SECONDS,
            "ort_threads": ORT_THREADS,
            "batch_on": BATCH_ON,
            "raw_ort_img_s": raw,
            "raw_ort_img_per_cpu_s": raw_cpu,
            "mean_formed_batch": mean_batch,
            "server_on_rps": on_rps,
            "server_off_rps": off_rps,
            "ratio_vs_raw_mean_batch": ratio,
            "on_off_ratio": on_rps / off_rps,
            "closed_on": on.to_dict(),
            "closed_off": off.to_dict(),
            "open_loop": opened.to_dict(),
            "cpu_cores": {
                k: {"client": c.client, "server": c.server, "others": c.others}
                for k, c in (("on", cpu_on), ("off", cpu_off), ("open", cpu_open))
            },
            "npy": {
                "rps": npy.throughput_rps,
                "mean_batch": npy_batch,
                "server_cpu": cpu_npy.server,
                "client_cpu": cpu_npy.client,
            },
            "variants": {
                k: {
                    "on_rps": v["runs"]["on"][0].throughput_rps,
                    "off_rps": v["runs"]["off"][0].throughput_rps,
                    "mean_batch": v["runs"]["on"][2],
                    "raw_ort_img_s": v["raw"],
                    "raw_ort_img_per_cpu_s": v["raw_cpu"],
                    "ratio_vs_raw_mean_batch": v["runs"]["on"][0].throughput_rps / v["raw"][v["b_mean"]],
                    "on_off_ratio": v["runs"]["on"][0].throughput_rps / v["runs"]["off"][0].throughput_rps,
                }
                for k, v in var.items()
            },
            "tried": {
                k: {"rps": r.throughput_rps, "mean_batch": mb, "server_cpu": c.server, "client_cpu": c.client}
                for k, (r, c, mb) in t["tried"].items()
            },
            "control": steps,
        },
    }
