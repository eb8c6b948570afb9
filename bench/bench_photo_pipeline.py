"""Photo input pipeline: training samples per second with decoding and augmentation in DataLoader
workers against the same model fed the same images already decoded in memory.

Issue 17's "input pipeline" target: for a dataset rendered from photos, `train` streams the train
split from the original JPEGs (decode, random resized crop, flip, colour jitter, normalise) in
`TrainConfig.workers` processes (``photo_stream=True``); ``photo_stream=False`` trains on the rendered
pixels held in memory. Target: the stream's steady-state samples per second >= 0.9x the in-memory
run's, same model, images, batch size and threads.

Set: the SYNTHETIC photo benchmark at its default sizes (`make_photos`: Fashion-MNIST items on photo
crops and textures, JPEG, longer side 120-480 px), every class, all in the train split, rendered at
`SIZE` px. Models: mobilenet_v3_small (a photo backbone) and cnn_small (a small model, so the input
side shows). Each configuration trains a fresh model for 1 + `MEASURED` epochs; samples per second
come from ``model.history["curve"][i]["samples_per_s"]`` (train phase only, the epoch's fresh
workers included), the median over the epochs after the first. Every side runs at torch's default
threads (one per core) and at one thread. Configurations run in up to `ROUNDS` rounds, each in a
rotated order, while they fit in `BUDGET_S`; a ratio is the median of the ratios within a round, as
the cores are shared with other jobs. A run past `RUN_CAP_S` stops at its next step.

To find what bounds the stream, the bench also times, in this process on one thread (as in a
worker): reading, decoding and the training transform of each photo, decoding with Pillow's JPEG
draft mode, and a DataLoader's start-up; and, in fresh processes, a bare training step of the model
at each thread setting, with OpenMP's passive wait policy too.

Scale with environment variables for a quick check, e.g.
``DM_PP_PER_CLASS=6 DM_PP_EPOCHS=2 DM_PP_ROUNDS=1 python bench/run.py photo_pipeline``.
"""

from __future__ import annotations

import contextlib
import io
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
from PIL import Image

from datamoat.data.dataset import SPLITS, Dataset
from datamoat.data.photo_render import default_workers, photo_loader, render_photos
from datamoat.data.photo_transforms import PhotoTransformConfig, decode, train_transform
from datamoat.data.photos import PhotoImportConfig, import_photos
from datamoat.data.synth import SynthConfig, make_photos
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

PER_CLASS = int(os.environ.get("DM_PP_PER_CLASS", 48))
SIZE = int(os.environ.get("DM_PP_SIZE", 64))
MEASURED = int(os.environ.get("DM_PP_EPOCHS", 3))  # measured epochs, after one warm-up epoch
ROUNDS = int(os.environ.get("DM_PP_ROUNDS", 3))  # at most; see BUDGET_S
BUDGET_S = float(os.environ.get("DM_PP_BUDGET_S", 150))  # for the timed rounds
RUN_CAP_S = 20.0  # a run slower than this (a contended machine) stops early
PROBE_CAP_S = 6.0
BATCH = 32
TARGET = 0.9
MODELS = ("mobilenet_v3_small", "cnn_small")
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
    """Milliseconds per image of each input step, on one thread (as in a worker), no model running."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    rows = np.flatnonzero(data.split == SPLITS["train"])
    stream = photo_loader(data, rows, batch_size=BATCH, workers=0, seed=0)
    assert stream is not None
    samples, _ = stream
    raws = [samples.raw(i) for i in range(len(samples))]
    g = torch.Generator().manual_seed(0)
    for r in raws[:8]:  # first calls load codecs and kernels: untimed
        train_transform(decode(r), TRANSFORM, g)
    t0 = time.perf_counter()
    for i in range(len(samples)):
        samples.raw(i)  # one seek, one read and a sha256 from the shard
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    imgs = [decode(r) for r in raws]
    dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    for img in imgs:
        train_transform(img, TRANSFORM, g)
    aug = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in raws:
        with Image.open(io.BytesIO(r)) as im:
            im.draft("RGB", (2 * SIZE, 2 * SIZE))  # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size
            im.convert("RGB").load()
    draft = time.perf_counter() - t0
    n = len(raws)
    # The whole loader, no model: in this process (adds batching), then through one fresh worker
    # (adds its start-up, till the first batch, and the batches' trip between processes).
    epoch = {}
    for workers in (0, 1):
        loader = photo_loader(data, rows, batch_size=BATCH, workers=workers, seed=0)[1]  # type: ignore[index]
        t0 = time.perf_counter()
        batches = iter(loader)
        next(batches)
        first = time.perf_counter() - t0
        for _ in batches:
            pass
        epoch[workers] = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return {
        "loader_ms": 1000 * epoch[0] / n,
        "loader_1_worker_ms": 1000 * epoch[1] / n,
        "read_ms": 1000 * read / n,
        "decode_ms": 1000 * dec / n,
        "augment_ms": 1000 * aug / n,
        "draft_decode_ms": 1000 * draft / n,
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
        rows.append(
            {
                "model": arch,
                "side": name,
                "threads": threads,
                "epochs": min(r["epochs"] for r in got),
                "samples_per_s": statistics.median(r["samples_per_s"] for r in got),
                "ms_per_sample": 1000 / statistics.median(r["samples_per_s"] for r in got),
                **{
                    k: statistics.median(r[k] for r in got) for k in ("cpu_ms_per_sample", "cores_used", "others_cores")
                },
                "vs_memory": round(ratio, 3),
                "met": "" if name == "memory" else ("yes" if ratio >= TARGET else "NO"),
            }
        )
    rows.sort(key=lambda r: (MODELS.index(r["model"]), -r["threads"]))  # each model's default threads first
    columns = ["model", "side", "threads", "epochs", "samples_per_s", "ms_per_sample", "cpu_ms_per_sample"]
    return {
        "title": "Photo input pipeline: streamed JPEG decoding in workers against decoded images in memory",
        "columns": [*columns, "cores_used", "others_cores", "vs_memory", "met"],
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
    t_draft = costs["loader_ms"] - costs["decode_ms"] + costs["draft_decode_ms"]
    others = statistics.median(r["others_cores"] for r in rows)
    step = {a: row[a, "memory", 1]["ms_per_sample"] for a in MODELS}
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
        streams = [r for r in rows if r["model"] == arch and r["side"] != "memory"]
        best = max(streams, key=lambda r: r["vs_memory"])
        out.append(
            f"{arch}: {'met' if best['vs_memory'] >= TARGET else 'MISSED'} (best {best['vs_memory']}x: "
            f"{best['side']}, {best['threads']} thread(s)); "
            + ", ".join(f"{r['side']} at {r['threads']} thread(s) {r['vs_memory']}x" for r in streams)
            + "."
        )
    t_load = costs["loader_ms"]
    bound = [a for a in MODELS if t_load > step[a]]
    if bound:
        lead = (
            f"The loader costs more per image than the step of {', '.join(bound)}: one worker could not keep up "
            "even with a core to itself. "
        )
    else:
        lead = (
            f"So decoding does not bound either model: a worker with a core to itself feeds {1000 / t_load:.0f} "
            "images/s, more than either step takes. "
        )
    others1 = statistics.median(r["others_cores"] for r in rows if r["threads"] == 1)
    if others1 > cores - 1.5:  # the worker had no core of its own
        lead += (
            f"Here the cores bound it: none was idle (other jobs held {others1:.2f} of {cores} during the "
            "one-thread runs), so the "
            "stream needs the model's CPU plus the loader's, the two add up instead of overlapping, and the "
            "ratio falls to about "
        )
    else:
        lead += (
            f"Other jobs held {others1:.2f} of {cores} cores, so a worker could overlap the step; without overlap "
            "the ratio would be about "
        )
    out.append(
        f"Which side bounds it: on one thread, as in a worker, the input costs {t_in:.2f} ms per image (read + "
        f"sha256 {costs['read_ms']:.2f}, decode {costs['decode_ms']:.2f}, crop + resize + flip + jitter + "
        f"normalise {costs['augment_ms']:.2f}), the whole loader in one process {t_load:.2f} ms (adding each "
        f"item's seeding and the batching), and through one worker process {costs['loader_1_worker_ms']:.2f} ms "
        "(adding the worker's start-up and the batches' trip between processes, with the main process only "
        f"receiving); the model's step takes "
        + " and ".join(f"{step[a]:.2f} ms per sample for {a}" for a in MODELS)
        + " (memory, one thread). "
        + lead
        + "t_step / (t_step + t_loader) = "
        + ", ".join(f"{step[a] / (step[a] + t_load):.2f} for {a}" for a in MODELS)
        + "; measured with one worker at one thread: "
        + ", ".join(f"{row[a, 'stream w=1', 1]['vs_memory']}" for a in MODELS)
        + (
            " (below: the workers' start-up each epoch and the batches' trip)"
            if all(row[a, "stream w=1", 1]["vs_memory"] < step[a] / (step[a] + t_load) for a in MODELS)
            else ""
        )
        + ". A second worker, on the same cores: "
        + ", ".join(
            f"{row[a, 'stream w=2', 1]['samples_per_s'] / row[a, 'stream w=1', 1]['samples_per_s']:.2f}x one "
            f"worker for {a}"
            for a in MODELS
        )
        + ".",
    )
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
        + " (passive: OMP_WAIT_POLICY=PASSIVE, waiting threads sleep instead of spinning).",
    )
    mob = step[MODELS[0]]
    out.append(
        "What would meet it: (1) a core to spare for each worker, so the input overlaps the step (one worker "
        f"feeds {1000 / t_load:.0f} images/s: "
        + ", ".join(f"{max(1, int(np.ceil(t_load / step[a])))} worker(s) for {a}" for a in MODELS)
        + "); (2) a cheaper input, since without spare cores the ratio is t_step / (t_step + t_loader): "
        f"Pillow's JPEG draft mode (DCT scaling by 1/2-1/8, never below {2 * SIZE} px) decodes in "
        f"{costs['draft_decode_ms']:.2f} ms instead of {costs['decode_ms']:.2f} (t_loader {t_draft:.2f} ms: "
        f"expected {mob / (mob + t_draft):.2f} for {MODELS[0]}); the crop's antialiased resize runs on the "
        "full-size photo and would shrink with it; smaller source JPEGs cut both in proportion to their pixels; "
        "caching decoded, downscaled photos leaves only the crop (the memory rows are that cache taken to the "
        "limit, without random crops); (3) threads = cores - workers while streaming (or OMP_WAIT_POLICY="
        "PASSIVE), so the math never waits for a core a decoder holds; (4) persistent workers: each epoch "
        f"starts fresh ones (they seed the crops by epoch), {costs['first_batch_s']:.2f} s to the first batch, "
        f"{100 * costs['first_batch_s'] * row[MODELS[0], 'stream w=1', 1]['samples_per_s'] / costs['images']:.0f}% "
        f"of a {costs['images']}-image epoch of {MODELS[0]} here, less on larger sets. datamoat does none of "
        "these yet.",
    )
    return out
