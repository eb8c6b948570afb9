"""Photo input pipeline: training samples per second with decoding and augmentation in DataLoader
workers against the same model fed the same images already decoded in memory.

Issue 17's "input pipeline" target: for a dataset rendered from photos, `train` streams the train
split from the original JPEGs (decode, random resized crop, flip, colour jitter, normalise) in
`TrainConfig.workers` processes (``photo_stream=True``); ``photo_stream=False`` trains on the rendered
pixels held in memory. Target: the stream's steady-state samples per second >= 0.9x the in-memory
run's, same model, images, batch size and threads.

Set: the SYNTHETIC photo benchmark at its default sizes (`make_photos`: Fashion-MNIST items on photo
crops and textures, JPEG, longer side 120-480 px), every class, all in the train split, rendered at
`SIZE` px. Models: resnet (the zoo's small ResNet, the model `datamoat demo --photos` trains),
mobilenet_v3_small (a photo backbone) and cnn_small (a small model, so the input
side shows). Each configuration trains a fresh model for 1 + `MEASURED` epochs; samples per second
come from ``model.history["curve"][i]["samples_per_s"]`` (train phase only; the workers persist
across epochs), the median over the epochs after the first. Every side runs at torch's default
threads (one per core) and at one thread. Configurations run in up to `ROUNDS` rounds, each in a
rotated order, while they fit in `BUDGET_S`; a ratio is the median of the ratios within a round, as
the cores are shared with other jobs. A run past `RUN_CAP_S` stops at its next step.

To find what bounds the stream, the bench also times, in this process on one thread (as in a
worker): reading, decoding as the stream does (a JPEG DCT-scaled to what its crops need) and in
full as `fit` does, the training transform of each photo, and a DataLoader's start-up; and, in fresh processes, a bare training step of the model
at each thread setting, with OpenMP's passive wait policy too.

Scale with environment variables for a quick check, e.g.
``DM_PP_PER_CLASS=6 DM_PP_EPOCHS=2 DM_PP_ROUNDS=1 python bench/run.py photo_pipeline``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.data.dataset import SPLITS, Dataset
from datamoat.data.photo_render import default_workers, photo_loader, render_photos
from datamoat.data.photo_transforms import PhotoTransformConfig, decode, train_min_side, train_transform
from datamoat.data.photos import PhotoImportConfig, import_photos
from datamoat.data.synth import SynthConfig, make_photos
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

PER_CLASS = int(os.environ.get("DM_PP_PER_CLASS", 48))
SIZE = int(os.environ.get("DM_PP_SIZE", 64))
MEASURED = int(os.environ.get("DM_PP_EPOCHS", 3))  # measured epochs, after one warm-up epoch
ROUNDS = int(os.environ.get("DM_PP_ROUNDS", 3))  # at most; see BUDGET_S
BUDGET_S = float(os.environ.get("DM_PP_BUDGET_S", 300))  # for the timed rounds
RUN_CAP_S = 20.0  # a run slower than this (a contended machine) stops early
PROBE_CAP_S = 6.0
REPEATS = 3  # passes over the photos per input step timed; the best counts
MAX_SHIFT = 0.3  # cores of other jobs' load between a stream run and its memory run: beyond, no verdict
BATCH = 32
TARGET = 0.9
MODELS = ("mobilenet_v3_small", "resnet", "cnn_small")
TRANSFORM = PhotoTransformConfig(size=(SIZE, SIZE), scale=(0.25, 1.0), brightness=0.2, contrast=0.2, saturation=0.2)


def configs(threads: int, workers: int) -> list[dict[str, Any]]:
    """Each side's TrainConfig fields, at torch's default threads and at one thread. Threads are explicit,
    since `train` leaves torch's setting as the last run set it. workers=-1 is every core but one
    (`workers`), so the explicit count equal to it is left out at the default threads."""
    sides: list[dict[str, Any]] = []
    for t in dict.fromkeys((threads, 1)):
        sides.append({"side": "memory", "threads": t, "photo_stream": False})
        counts = (-1, *(w for w in (1, 2) if w != workers)) if t == threads else (1, 2)
        for w in counts:
            side = f"stream w=-1 (={workers})" if w < 0 else f"stream w={w}"
            sides.append({"side": side, "threads": t, "photo_stream": True, "workers": w})
    return sides


def machine_busy() -> float:
    """CPU-seconds every core of the machine has spent busy since boot (Linux; 0 elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class _PastCap(Exception):
    pass


def run(arch: str, data: Dataset, side: dict[str, Any]) -> dict[str, float]:
    """Steady-state samples/s of one configuration, with the CPU time it and everything else used.
    A run past `RUN_CAP_S` stops at its next step: it is scored on the epochs it finished after the
    warm-up, or, with none, on the samples it trained over the time it took (setup included)."""
    fields = {k: v for k, v in side.items() if k != "side"}
    cfg = TrainConfig(epochs=1 + MEASURED, batch_size=BATCH, patience=0, seed=0, **fields)
    curve: list[dict[str, Any]] = []
    seen = 0
    t0, busy0 = os.times(), machine_busy()

    def loss_fn(out: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        nonlocal seen
        if os.times().elapsed - t0.elapsed > RUN_CAP_S:
            raise _PastCap
        seen += len(yb)
        return F.cross_entropy(out, yb)  # what `train` computes without label smoothing

    with contextlib.suppress(_PastCap):
        train(new_model(arch, data, seed=0), data, cfg, progress=False, on_epoch=curve.append, loss_fn=loss_fn)
    t1, busy1 = os.times(), machine_busy()
    ours = sum(t1[:4]) - sum(t0[:4])  # this process and its finished workers, user + system
    wall = t1.elapsed - t0.elapsed
    measured = [p["samples_per_s"] for p in curve[1:]]
    return {
        "samples_per_s": statistics.median(measured) if measured else seen / wall,
        "epochs": len(measured),
        "cpu_ms_per_sample": 1000 * ours / max(seen, 1),
        "main_cpu_ms_per_sample": 1000 * (sum(t1[:2]) - sum(t0[:2])) / max(seen, 1),
        "worker_cpu_ms_per_sample": 1000 * (sum(t1[2:4]) - sum(t0[2:4])) / max(seen, 1),
        "cores_used": ours / wall,
        "others_cores": max(0.0, busy1 - busy0 - ours) / wall if busy1 else float("nan"),
    }


_STEP = """
import sys, time, torch, torch.nn.functional as F
from datamoat.models.backbones import build_backbone
arch, size, batch, threads, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = build_backbone(arch, 10)
opt = torch.optim.AdamW(net.parameters())
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
times, start = [], time.perf_counter()
while len(times) < 22 and (len(times) < 5 or time.perf_counter() - start < cap):
    t0 = time.perf_counter()
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
steady = sorted(times[2:])
print(batch / steady[len(steady) // 2], len(steady))
"""


def omp_probe(arch: str, threads: int, passive: bool) -> dict[str, float]:
    """A bare `arch` training step in a fresh process: median samples/s over up to 20 steps (after 2
    untimed) within `PROBE_CAP_S`, at `threads` and OpenMP's default or passive wait policy."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # idle OpenMP threads sleep instead of spinning for a core
    args = [sys.executable, "-c", _STEP, arch, str(SIZE), str(BATCH), str(threads), str(PROBE_CAP_S)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20 * PROBE_CAP_S, check=True)
    sps, steps = out.stdout.split()
    return {"samples_per_s": float(sps), "steps": int(steps)}


def input_costs(data: Dataset) -> dict[str, float]:
    """Milliseconds per image of each input step on one thread (as in a worker), no model running; each
    the best of `REPEATS` passes over every photo."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    rows = np.flatnonzero(data.split == SPLITS["train"])
    samples = photo_loader(data, rows, batch_size=BATCH, workers=0, seed=0)[0]  # type: ignore[index]
    raws = [samples.raw(i) for i in range(len(samples))]
    side = train_min_side(TRANSFORM)  # the stream decodes JPEGs no larger than its smallest crop needs
    imgs = [decode(r, min_side=side) for r in raws]  # also loads the codecs and kernels before any timing
    g = torch.Generator().manual_seed(0)

    def loader_epoch(workers: int) -> float:
        # the whole loader, no model: batching and each item's seeding; through a fresh worker, also its
        # start-up and the batches' trip between processes
        loader = photo_loader(data, rows, batch_size=BATCH, workers=workers, seed=0)[1]  # type: ignore[index]
        t0 = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - t0

    steps = {
        "read": lambda: [samples.raw(i) for i in range(len(samples))],  # a seek, a read and a sha256 each
        "decode": lambda: [decode(r, min_side=side) for r in raws],  # as the stream does (JPEG DCT scaling)
        "augment": lambda: [train_transform(img, TRANSFORM, g) for img in imgs],
        "full_decode": lambda: [decode(r) for r in raws],  # as fit (render, server, device) does
    }
    best = {}
    for name, fn in steps.items():
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    best["loader"] = min(loader_epoch(0) for _ in range(REPEATS))
    best["loader_1_worker"] = min(loader_epoch(1) for _ in range(REPEATS))
    # a fresh worker's start-up: from the iterator's creation to its first batch
    t0 = time.perf_counter()
    next(iter(photo_loader(data, rows, batch_size=BATCH, workers=1, seed=0)[1]))  # type: ignore[index]
    first = time.perf_counter() - t0
    torch.set_num_threads(threads)
    n = len(raws)
    return {
        **{f"{k}_ms": 1000 * v / n for k, v in best.items()},
        "first_batch_s": first,
        "mean_source_kb": sum(map(len, raws)) / n / 1000,
        "images": n,
    }


def main() -> dict:
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-photo-pipeline-"))
    try:
        ws = Workspace.init(tmp / "ws")
        make_photos(tmp / "set", SynthConfig(n_per_class=PER_CLASS, test_fraction=0, seed=0), progress=False)
        photos = import_photos(ws, tmp / "set" / "train", PhotoImportConfig(val_fraction=0, test_fraction=0))
        data = render_photos(ws, photos, TRANSFORM, workers=1)
        costs = input_costs(data)
        sides = configs(default_threads, default_workers())
        runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        t0 = time.perf_counter()
        for r in range(ROUNDS):  # a further round only if it fits in the budget at the pace so far
            if r and (time.perf_counter() - t0) * (r + 1) / r > BUDGET_S:
                break
            for arch in MODELS:
                for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                    key = (arch, side["side"], side["threads"])
                    runs.setdefault(key, []).append(run(arch, data, side))
        torch.set_num_threads(default_threads)
        probe = {
            f"{MODELS[0]}, {t} thread(s){', passive' if passive else ''}": omp_probe(MODELS[0], t, passive)
            for t, passive in ((default_threads, False), (default_threads, True), (1, False))
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for (arch, name, threads), got in runs.items():
        base = runs[arch, "memory", threads]
        ratio = statistics.median(s["samples_per_s"] / m["samples_per_s"] for s, m in zip(got, base, strict=True))
        # how far other jobs' load moved between this side's runs and memory's, in cores
        shift = statistics.median(abs(s["others_cores"] - m["others_cores"]) for s, m in zip(got, base, strict=True))
        verdict = "yes" if ratio >= TARGET else "NO"
        rows.append(
            {
                "model": arch,
                "side": name,
                "threads": threads,
                "epochs": min(r["epochs"] for r in got),
                "samples_per_s": statistics.median(r["samples_per_s"] for r in got),
                "ms_per_sample": 1000 / statistics.median(r["samples_per_s"] for r in got),
                **{
                    k: statistics.median(r[k] for r in got)
                    for k in ("cpu_ms_per_sample", "main_cpu_ms_per_sample", "worker_cpu_ms_per_sample")
                },
                **{k: statistics.median(r[k] for r in got) for k in ("cores_used", "others_cores")},
                "vs_memory": round(ratio, 3),
                "load_shift": round(shift, 2),
                "met": "" if name == "memory" else verdict if shift <= MAX_SHIFT else f"{verdict}, load moved",
            }
        )
    rows.sort(key=lambda r: (MODELS.index(r["model"]), -r["threads"]))  # each model's default threads first
    columns = ["model", "side", "threads", "epochs", "samples_per_s", "cpu_ms_per_sample"]
    return {
        "title": "Photo input pipeline: streamed JPEG decoding in workers against decoded images in memory",
        "columns": [*columns, "cores_used", "others_cores", "load_shift", "vs_memory", "met"],
        "rows": rows,
        "notes": notes(rows, costs, probe, cores, len(next(iter(runs.values())))),
        "summary": {
            "costs": costs,
            "omp_probe": probe,
            "runs": {" | ".join(map(str, k)): v for k, v in runs.items()},
        },
    }


def notes(
    rows: list[dict[str, Any]], costs: dict[str, float], probe: dict[str, dict[str, float]], cores: int, rounds: int
) -> list[str]:
    row = {(r["model"], r["side"], r["threads"]): r for r in rows}
    top = max(r["threads"] for r in rows)
    auto = next(r["side"] for r in rows if r["side"].startswith("stream w=-1"))
    t_in = costs["read_ms"] + costs["decode_ms"] + costs["augment_ms"]
    others = statistics.median(r["others_cores"] for r in rows)
    out = [
        f"{costs['images']} SYNTHETIC photos (`make_photos` defaults: JPEG, longer side 120-480 px, "
        f"{costs['mean_source_kb']:.1f} KB on average), every class, rendered at {SIZE}x{SIZE}; batch {BATCH}; "
        "the stream's transform: random resized crop (25-100% of the area), flip, brightness/contrast/saturation "
        f"jitter 0.2. 1 warm-up + {MEASURED} measured epochs per configuration, {rounds} round(s) in rotated "
        f"order, each side at torch's default threads ({top}) and at one. {cores} cores, shared: other jobs kept "
        f"{others:.2f} cores busy (median over the runs; others_cores: the machine's busy CPU time less this "
        "process's and its workers', per wall second). cpu_ms_per_sample and cores_used: this process and its "
        f"workers over the whole call. A run past {RUN_CAP_S:.0f} s stops at its next step; epochs counts its "
        "measured epochs (0: none finished after the warm-up, scored on samples over the call's time). "
        f"Target: stream >= {TARGET}x memory at the same threads (vs_memory).",
    ]
    for arch in MODELS:
        parts = []
        for t in sorted({r["threads"] for r in rows}):
            streams = [r for r in rows if r["model"] == arch and r["threads"] == t and r["side"] != "memory"]
            fair = [r for r in streams if r["load_shift"] <= MAX_SHIFT]
            met = ("met" if any(r["vs_memory"] >= TARGET for r in fair) else "MISSED") if fair else "no verdict"
            listed = ", ".join(
                f"{r['side']} {r['vs_memory']}x" + ("" if r in fair else " (load moved)") for r in streams
            )
            parts.append(f"{met} at {t} thread(s): {listed}")
        slow = row[arch, "memory", 1]["samples_per_s"] / row[arch, "memory", top]["samples_per_s"]
        tail = (
            f". At {top} threads even the memory side ran {slow:.1f}x slower than at one (see Threads)"
            if slow > 1.5
            else ""
        )
        out.append(f"{arch}: " + "; ".join(parts) + tail + ".")
    t_load = costs["loader_ms"]
    out.append(
        f"The input, on one thread as in a worker (best of {REPEATS} passes): {t_in:.2f} ms per image in steps (read + "
        f"sha256 {costs['read_ms']:.2f}, decode {costs['decode_ms']:.2f}, crop + resize + flip + jitter + normalise "
        f"{costs['augment_ms']:.2f}); the whole loader in one process {t_load:.2f} ms, through one fresh worker "
        f"{costs['loader_1_worker_ms']:.2f} ms (its start-up, {costs['first_batch_s']:.2f} s to the first batch, "
        "and the batches' trip between processes). Decoding is "
        f"{100 * costs['decode_ms'] / t_in:.0f}% of the input's steps.",
    )
    for a in MODELS:
        mem, one, two = row[a, "memory", 1], row[a, "stream w=1", 1], row[a, "stream w=2", 1]
        held = statistics.median(r["others_cores"] for r in (mem, one, two))
        main, worker, mem_ms = (
            one["main_cpu_ms_per_sample"],
            one["worker_cpu_ms_per_sample"],
            1000 / mem["samples_per_s"],
        )
        side = (
            "the main process (the model's step and the stream's overhead there)"
            if main >= worker
            else "the worker, the input"
        )
        text = (
            f"Which side bounds {a}, at one thread: memory takes {mem_ms:.2f} ms per sample. Streaming with one "
            f"worker, the main process spent {main:.2f} ms of CPU per sample "
            f"({main - mem['main_cpu_ms_per_sample']:+.2f} against memory: receiving the batches "
            "from the worker) and the worker "
            f"{worker:.2f} ms (the loader alone in one process: {t_load:.2f}). With a core each, the larger bounds "
            f"it: {side}, for a ceiling of {mem_ms / max(main, worker):.2f}x"
        )
        if held > cores - 1.5:  # no core of its own for the worker: the two share what is left
            text += (
                f"; but other jobs held {held:.2f} of {cores} cores, so the two shared one: "
                f"{mem_ms / (main + worker):.2f}x"
            )
        out.append(
            text + f". Measured: {one['vs_memory']}x with one worker, {two['vs_memory']}x with two (other jobs held "
            f"{held:.2f} cores)."
        )
    spin, passive = (probe[f"{MODELS[0]}, {top} thread(s){p}"]["samples_per_s"] for p in ("", ", passive"))
    out.append(
        f"Threads: at torch's default ({top}, one per core) the runs swing with what else runs, worst when a "
        "decode worker or another job holds a core: OpenMP's threads then wait for each other. The stream with "
        f"workers=-1 at {top} threads ran at "
        + ", ".join(
            f"{row[a, auto, top]['samples_per_s'] / row[a, 'stream w=1', 1]['samples_per_s']:.2f}x its one-thread "
            f"rate for {a}"
            for a in MODELS
        )
        + f". A bare {MODELS[0]} training step in a fresh process (random {SIZE} px batches of {BATCH}, median "
        f"of up to 20 steps within {PROBE_CAP_S:.0f} s, no decoding) ran at "
        + ", ".join(
            f"{v['samples_per_s']:.0f} samples/s with {k.split(', ', 1)[1]} ({v['steps']} steps)"
            for k, v in probe.items()
        )
        + " (passive: OMP_WAIT_POLICY=PASSIVE, waiting threads sleep instead of spinning). Passive waiting "
        + ("helped" if passive > spin else "cost")
        + f" here ({passive / spin:.2f}x the default policy): it can pay only while other work holds the cores.",
    )
    fixes = []
    for a in MODELS:
        mem, one = row[a, "memory", 1], row[a, "stream w=1", 1]
        main, worker, mem_ms = (
            one["main_cpu_ms_per_sample"],
            one["worker_cpu_ms_per_sample"],
            1000 / mem["samples_per_s"],
        )
        if main >= worker:
            fixes.append(
                f"{a} is bound by the main process: the stream's overhead there "
                f"({main - mem['main_cpu_ms_per_sample']:.2f} ms per sample) caps it at {mem_ms / main:.2f}x even "
                "with a core per worker"
            )
        else:
            fixes.append(
                f"{a} is bound by the input: a worker spends {worker:.2f} ms per image against a step of "
                f"{mem_ms:.2f} ms, so it needs {int(np.ceil(worker / mem_ms))} workers with a core each, or a cheaper "
                "input (below)"
            )
    side_px = train_min_side(TRANSFORM)
    out.append(
        "What would meet it: "
        + "; ".join(fixes)
        + ". On two cores nothing is spare once the math takes one and a worker the other, so every millisecond "
        "the input costs is paid in samples per second. datamoat already decodes JPEGs at 1/2-1/8 size when "
        f"the crops allow (to no less than {side_px} px here: {costs['decode_ms']:.2f} ms against "
        f"{costs['full_decode_ms']:.2f} for a full decode), keeps its workers across epochs, and by default "
        "(--threads 0) gives the math the cores the workers leave. Left: caching decoded, downscaled photos "
        "(the memory rows are that cache taken to the limit, without random crops), or more cores; and a "
        "compute-heavy model (resnet here) streams faster with the math on every core (--threads N, the "
        "stream rows at the default threads) than with the split, which suits light models."
    )
    return out
