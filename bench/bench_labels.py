"""Labels saved: test accuracy against labels for random labelling, active learning, self-supervised
pretraining plus active learning, and both plus semi-supervised training (FixMatch).

Fashion-MNIST. The pool is its 60,000 training images (the train and val splits) with every label
hidden; the official 10,000 test images are the test split, which no method sees. An oracle (the
hidden true label) stands in for the person: each labelled batch becomes a new dataset version
through `datamoat.data.pool.label_rows`, as `datamoat label loop` makes it.

- random: the first n rows of a seeded permutation of the pool (nested: 250 holds the 100), a model
  trained from scratch on them;
- active learning: the same first 100, then each round trains on the labels so far, scores the
  unlabeled rest and asks for the next batch by the strategy (`STRATEGY`), up to the next count;
- pretrain + active learning: the same loop, every training starting from a SimCLR backbone
  pretrained on the whole unlabeled pool (`datamoat pretrain`);
- + semi-supervised: on the label sets the previous loop chose, FixMatch training from the same
  backbone with the unlabeled pool (`train --unlabeled`).

Every training is the same recipe (ARCH, `RECIPE`, epochs raised at small label counts so that each
training sees at least MIN_SAMPLES samples) without a validation split: a label-scarce user has no
labels to spare for one. Seeds change the permutation, the models' initialisation and the strategy's
draws. Intervals are Student-t 95% over the seeds. Wall-clock seconds are on this machine's cores.

Scale with environment variables for a quick check, e.g.
``DM_LB_SEEDS=1 DM_LB_COUNTS=100,250 DM_LB_PRETRAIN_EPOCHS=1 python bench/run.py labels``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.data import SPLITS, import_fashion_mnist, make_dataset
from datamoat.data.dataset import POOL, UNLABELED, Dataset
from datamoat.data.pool import label_rows, pool_rows
from datamoat.models import new_model
from datamoat.models.model import Model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

ARCH = os.environ.get("DM_LB_ARCH", "cnn_small")
SEEDS = [int(s) for s in os.environ.get("DM_LB_SEEDS", "0,1,2").split(",") if s]
COUNTS = [int(c) for c in os.environ.get("DM_LB_COUNTS", "100,250,500,1000,2500,5000").split(",") if c]
STRATEGY = os.environ.get("DM_LB_STRATEGY", "")  # "": AcquireConfig's default, what `label suggest` uses
MIN_SAMPLES = int(os.environ.get("DM_LB_MIN_SAMPLES", 30_000))
MIN_EPOCHS = int(os.environ.get("DM_LB_MIN_EPOCHS", 10))
PRETRAIN_EPOCHS = int(os.environ.get("DM_LB_PRETRAIN_EPOCHS", 0))  # 0: PretrainConfig's default
THREADS = int(os.environ.get("DM_LB_THREADS", 2))
# The strategy ablation: every strategy's active-learning curve up to STRATEGY_MAX labels, first seed only.
STRATEGIES = [
    v for v in os.environ.get("DM_LB_STRATEGIES", "random,margin,entropy,kcenter,badge,hybrid").split(",") if v
]
STRATEGY_MAX = int(os.environ.get("DM_LB_STRATEGY_MAX", 1000))
REUSE = os.environ.get("DM_LB_REUSE", "")
# One SimCLR backbone for every seed (pretrained with the first): pretraining takes most of a seed's time on 2
# cores, so the interval over seeds then covers labelling and fine-tuning, not pretraining.
SHARED_PRETRAIN = os.environ.get("DM_LB_SHARED_PRETRAIN", "1") == "1"
SEMI_MAX = int(os.environ.get("DM_LB_SEMI_MAX", 0))  # FixMatch only up to this many labels (0: every count)
SEMI_MIN = int(os.environ.get("DM_LB_SEMI_MIN", 0))  # and only from this many
# A variant may name its strategy, e.g. "al@hybrid"; without one it uses STRATEGY.
VARIANTS = [v for v in os.environ.get("DM_LB_VARIANTS", "random,al,ssl_al,ssl_al_fixmatch").split(",") if v]
RECIPE = TrainConfig(augment="crop", patience=0, threads=THREADS)
NAMES = {
    "random": "random labels, from scratch",
    "al": "active learning",
    "ssl_al": "pretraining + active learning",
    "ssl_al_fixmatch": "pretraining + active learning + FixMatch",
}


def default_strategy() -> str:
    from datamoat.train.acquire import AcquireConfig

    return STRATEGY or AcquireConfig().strategy


def variant_key(v: str) -> str:
    """`v` with its strategy spelt out ("al" -> "al@margin"); random labelling has none."""
    base = v.split("@")[0]
    return v if "@" in v or base == "random" else f"{v}@{default_strategy()}"


def variant_name(key: str) -> str:
    base, _, strategy = key.partition("@")
    return NAMES[base] + (f" ({strategy})" if strategy else "")


def recipe(n: int, seed: int) -> TrainConfig:
    """The one recipe, with enough epochs that n labels give at least MIN_SAMPLES samples seen."""
    epochs = max(MIN_EPOCHS, math.ceil(MIN_SAMPLES / n))
    return dataclasses.replace(RECIPE, epochs=epochs, seed=seed, batch_size=min(RECIPE.batch_size, n))


def hidden_pool(ws: Workspace) -> tuple[Dataset, np.ndarray]:
    """Fashion-MNIST with every train and val label hidden (the pool) and the test split kept; and
    the hidden labels, the oracle's answers."""
    fm = import_fashion_mnist(ws)
    test = fm.split == SPLITS["test"]
    y = np.where(test, fm.y, UNLABELED)
    split = np.where(test, SPLITS["test"], POOL).astype(np.uint8)
    ds = make_dataset(
        ws,
        np.asarray(fm.x),
        y,
        fm.classes,
        name="fmnist-pool",
        source={"kind": "bench"},
        split=split,
        preprocess=dict(fm.preprocess),
    )
    return ds, np.asarray(fm.y)


def accuracy(model: Model, data: Dataset) -> float:
    x, y = data.subset("test")
    return float((model.logits(x).argmax(1) == y).mean())


def fit(ws: Workspace, data: Dataset, n: int, seed: int, backbone: str | None, unlabeled: Dataset | None) -> Model:
    """A model trained on `data`'s labels by the recipe; from `backbone` (a pretrained checkpoint)
    when given; with FixMatch on `unlabeled` when given."""
    from datamoat.train.pretrained import start_from

    model = new_model(ARCH, data, seed=seed)
    if backbone is not None:
        model = start_from(model, ARCH, backbone, keep_head=False, ws=ws)
    cfg = recipe(n, seed)
    if unlabeled is None:
        return train(model, data, cfg, progress=False)
    from datamoat.train.semisup import FixMatchConfig

    cfg = dataclasses.replace(cfg, semisup=FixMatchConfig())
    return train(model, data, cfg, progress=False, unlabeled=unlabeled)


def choose(model: Model, data: Dataset, k: int, seed: int, strategy: str) -> np.ndarray:
    """The k pool rows `strategy` asks labels for, ranked by `model`."""
    from datamoat.train.acquire import AcquireConfig, rank_pool

    labelled = np.flatnonzero(data.split == SPLITS["train"])
    cfg = AcquireConfig(strategy=strategy, budget=k, seed=seed)
    return rank_pool(data, pool_rows(data), model, cfg, labelled=labelled)[0]


def curve(
    ws: Workspace,
    pool: Dataset,
    truth: np.ndarray,
    seed: int,
    *,
    active: bool,
    backbone: str | None,
    strategy: str = "",
    counts: list[int] = COUNTS,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Test accuracy at each count, and the labelled rows at each count."""
    order = np.random.default_rng(seed).permutation(pool_rows(pool))
    data, out, sets = pool, [], []
    model = None
    have = np.zeros(0, np.int64)
    for n in counts:
        t0 = time.perf_counter()
        if not active or model is None:
            new = order[len(have) : n] if not active else order[:n]
        else:
            new = choose(model, data, n - len(have), seed, strategy or default_strategy())
        data = label_rows(ws, data, new, truth[new], origin="human", actor="oracle", name=f"lb-{seed}-{n}")
        have = np.concatenate([have, new])
        model = fit(ws, data, n, seed, backbone, None)
        acc = accuracy(model, data)
        out.append({"labels": n, "accuracy": acc, "seconds": time.perf_counter() - t0})
        sets.append(have.copy())
    return out, sets


def semisup_curve(
    ws: Workspace, pool: Dataset, truth: np.ndarray, seed: int, sets: list[np.ndarray], backbone: str | None
) -> list[dict[str, Any]]:
    out = []
    for n, rows in zip(COUNTS, sets):
        if (SEMI_MAX and n > SEMI_MAX) or n < SEMI_MIN:
            continue
        t0 = time.perf_counter()
        data = label_rows(ws, pool, rows, truth[rows], origin="human", actor="oracle", name=f"lbs-{seed}-{n}")
        model = fit(ws, data, n, seed, backbone, data)
        out.append({"labels": n, "accuracy": accuracy(model, data), "seconds": time.perf_counter() - t0})
    return out


def pretrained(ws: Workspace, pool: Dataset, seed: int) -> tuple[str, float]:
    from datamoat.train.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(seed=seed, threads=THREADS)
    if PRETRAIN_EPOCHS:
        cfg = dataclasses.replace(cfg, epochs=PRETRAIN_EPOCHS)
    t0 = time.perf_counter()
    run = pretrain(ws, pool, ARCH, cfg)
    return run.ref, time.perf_counter() - t0


def interval(v: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a Student-t 95% interval over seeds (0 for one seed)."""
    t975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}
    m = statistics.fmean(v)
    return m, (t975.get(len(v), 2.0) * statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0)


def labels_to_reach(points: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a curve first reaches `target`, interpolated in log(labels); None if never."""
    for (n0, a0), (n1, a1) in zip(points, points[1:]):
        if a0 >= target:
            return float(n0)
        if a1 >= target:
            f = (target - a0) / (a1 - a0)
            return float(math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))))
    return float(points[0][0]) if points and points[0][1] >= target else None


def main() -> dict[str, Any]:
    t_start = time.perf_counter()
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-labels-"))
    pool, truth = hidden_pool(ws)
    keys = [variant_key(v) for v in VARIANTS]
    acc: dict[str, dict[int, list[float]]] = {k: {n: [] for n in COUNTS} for k in keys}
    secs: dict[str, list[float]] = {k: [] for k in keys}
    pre_secs: list[float] = []
    backbone = None
    for seed in SEEDS:
        if any(k.startswith("ssl") for k in keys) and (not SHARED_PRETRAIN or seed == SEEDS[0]):
            backbone, s = pretrained(ws, pool, seed)
            pre_secs.append(s)
        sets: dict[str, list[np.ndarray]] = {}  # the label sets ssl_al chose, by strategy
        for k in keys:
            base, _, strategy = k.partition("@")
            if base == "ssl_al_fixmatch":
                assert strategy in sets, f"{k} trains on the label sets ssl_al@{strategy} chose: run both"
                points = semisup_curve(ws, pool, truth, seed, sets[strategy], backbone)
            else:
                points, chosen = curve(
                    ws,
                    pool,
                    truth,
                    seed,
                    active=base != "random",
                    backbone=backbone if base == "ssl_al" else None,
                    strategy=strategy,
                )
                if base == "ssl_al":
                    sets[strategy] = chosen
            for p in points:
                acc[k][p["labels"]].append(p["accuracy"])
            secs[k].append(sum(p["seconds"] for p in points))
            print(k, seed, [round(p["accuracy"], 4) for p in points], flush=True)
    # Variants measured by an earlier run of this file on the same machine and code (DM_LB_REUSE=its JSON): the
    # accuracies are deterministic given the seeds; the seconds are that run's.
    summary_from = None
    if REUSE and Path(REUSE).exists():
        earlier = json.loads(Path(REUSE).read_text())["summary"]
        # Files written before variants named their strategy used hybrid, then the bench's default.
        was = earlier.get("strategy", "hybrid")
        for v, by_n in earlier["accuracy"].items():
            k = v if "@" in v or v == "random" else f"{v}@{was}"
            if k not in acc:
                acc[k] = {int(n): a for n, a in by_n.items()}
                secs[k] = earlier["seconds"][v]
        summary_from = REUSE
    variants = sorted(acc, key=lambda k: (list(NAMES).index(k.split("@")[0]), k))
    rows = []
    for v in variants:
        row: dict[str, Any] = {"method": variant_name(v)}
        for n in COUNTS:
            if not acc[v].get(n):
                row[str(n)] = "not run"
                continue
            m, h = interval(acc[v][n])
            row[str(n)] = f"{100 * m:.1f} ± {100 * h:.1f}"
        sec = round(statistics.fmean(secs[v]))
        row["seconds per seed"] = sec if v in keys else f"{sec} (earlier run)"  # not this run's machine load
        rows.append(row)
    summary: dict[str, Any] = {
        "accuracy": acc,
        "seconds": secs,
        "pretrain_seconds": pre_secs,
        "reused": summary_from,
        "strategy": default_strategy(),
    }
    notes = [f"Rows of {', '.join(v for v in variants if v not in keys)} from {summary_from}."] if summary_from else []
    if "random" in acc and COUNTS[-1] in acc["random"]:
        target, _ = interval(acc["random"][COUNTS[-1]])
        reach = {}
        for v in variants:
            pts = [(n, statistics.fmean(acc[v][n])) for n in COUNTS if acc[v].get(n)]
            reach[v] = labels_to_reach(pts, target)
        summary["labels_to_reach_random_at_max"] = reach
        for v in variants:
            r = reach[v]
            notes.append(
                f"{variant_name(v)}: reaches random's mean at {COUNTS[-1]} labels ({100 * target:.1f}%) "
                + (f"at about {r:.0f} labels ({COUNTS[-1] / r:.1f}x fewer)" if r else f"nowhere up to {COUNTS[-1]}")
            )
    tables = []
    if not STRATEGIES and REUSE and Path(REUSE).exists() and json.loads(Path(REUSE).read_text()).get("tables"):
        tables = json.loads(Path(REUSE).read_text())["tables"]  # the strategy table of the earlier run
        summary["strategies"] = tables[0]["rows"]
        notes.append(f"The strategy table is from {REUSE}, its seconds that run's.")
    if STRATEGIES:
        counts = [n for n in COUNTS if n <= STRATEGY_MAX]
        srows = []
        for strat in STRATEGIES:
            t0 = time.perf_counter()
            points, _ = curve(ws, pool, truth, SEEDS[0], active=True, backbone=None, strategy=strat, counts=counts)
            srows.append(
                {
                    "strategy": strat,
                    **{str(p["labels"]): f"{100 * p['accuracy']:.1f}" for p in points},
                    "seconds": round(time.perf_counter() - t0),
                }
            )
            print("strategy", strat, [round(p["accuracy"], 4) for p in points], flush=True)
        summary["strategies"] = srows
        tables.append(
            {
                "title": f"Which strategy: active learning from scratch, seed {SEEDS[0]}, test accuracy (%)",
                "columns": ["strategy", *map(str, counts), "seconds"],
                "rows": srows,
            }
        )
    summary["seconds_total"] = time.perf_counter() - t_start
    return {
        "title": "Labels saved on Fashion-MNIST: test accuracy (%) against labels, mean ± t-interval over seeds",
        "columns": ["method", *map(str, COUNTS), "seconds per seed"],
        "rows": rows,
        "tables": tables,
        "summary": summary,
        "notes": [
            *notes,
            f"{ARCH}, TrainConfig {RECIPE.to_dict()} with epochs max({MIN_EPOCHS}, ceil({MIN_SAMPLES} / labels)); "
            f"seeds {SEEDS}; default strategy {default_strategy()}; {THREADS} torch threads.",
            f"Pretraining (SimCLR, PretrainConfig's defaults{f' but {PRETRAIN_EPOCHS} epochs' if PRETRAIN_EPOCHS else ''}"
            f" on the {len(truth) - 10_000} pool images): "
            + ", ".join(f"{s:.0f} s" for s in pre_secs)
            + (" (one backbone shared by every seed)" if SHARED_PRETRAIN else " (one per seed)")
            + "; not in 'seconds per seed', which counts labelling rounds, scoring and training."
            + (f" FixMatch ran up to {SEMI_MAX} labels only (CPU time)." if SEMI_MAX else "")
            + (f" FixMatch ran from {SEMI_MIN} labels only (CPU time)." if SEMI_MIN else ""),
        ],
    }
