"""The active-learning loop: pick, label, retrain, repeat.

Each round `label_loop` picks `budget` unlabeled rows of the pool
(`datamoat.train.acquire.rank_pool`; the first round, with no model yet, a
seeded random sample), has them labelled, makes the labelled version
(`datamoat.data.pool.label_rows`), and trains a fresh model of the same
architecture on it (`datamoat.train.loop.train`: from scratch each round, as
a warm start carries the earlier rounds' biased sample into the next model).
Each round records the labels used, the test accuracy where the version has a
test split, and the seconds it took. Every version keeps the pool's name, so the
name resolves to the newest one and a later call continues where this one stopped.

Labels come from an `oracle` (rows -> labels: in a benchmark, the true labels;
they are recorded as origin "import" by actor "oracle") or, without one, from
people: the loop then runs one step and returns, having applied the review
labels decided since the last call (`apply_labels`), retrained on them, and
queued the next picks on ``/review`` (`suggest`). The next call continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from datamoat.data.dataset import SPLITS, Dataset
from datamoat.data.pool import label_rows, pool_rows
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import check_model_fits
from datamoat.feedback.suggest import apply_labels, suggest
from datamoat.models.model import Model, load_model, new_model, save_model
from datamoat.models.zoo import build
from datamoat.registry.core import Registry
from datamoat.train.acquire import AcquireConfig, rank_pool
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

__all__ = ["label_loop", "fit_round"]

Oracle = Callable[[np.ndarray], np.ndarray]  # global rows (B,) -> class indices (B,)


def fit_round(
    ws: Workspace,
    ds: Dataset,
    base: Model,
    train_config: TrainConfig,
    *,
    members: int = 1,
    tag: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[Model]:
    """`members` fresh models of `base`'s architecture trained on `ds` (seeds seed, seed+1, ...), saved;
    the first is the round's model, the rest complete a committee for disagreement."""
    labelled = int((ds.split == SPLITS["train"]).sum())
    if labelled < 2:
        raise BadInput(f"dataset {ds.name} has {labelled} labelled train item(s): label at least 2 to train")
    out = []
    for i in range(members):
        cfg = train_config.replace(seed=train_config.seed + i)
        torch.manual_seed(cfg.seed)
        lineage = {"dataset_id": ds.id, "label_loop": {**(tag or {}), "member": i, "base_model": base.id}}
        fresh = Model(build(base.config), base.config, list(ds.classes), dict(base.preprocess), lineage)
        trained = train(fresh, ds, cfg, progress=progress)
        name = f"{ds.name}-al{'' if i == 0 else f'-m{i}'}-r{(tag or {}).get('round', 0)}"
        out.append(save_model(ws, trained, name=name))
    return out


def _test_accuracy(model: Model, ds: Dataset) -> float | None:
    x, y = ds.subset("test")
    if len(y) == 0:
        return None
    return float((model.predict_proba(x).argmax(1) == y).mean())


def _oracle_labels(oracle: Oracle, rows: np.ndarray, k: int) -> np.ndarray:
    labels = np.asarray(oracle(rows)).astype(np.int64).reshape(-1)
    if len(labels) != len(rows) or (len(labels) and (labels.min() < 0 or labels.max() >= k)):
        raise BadInput(f"the oracle gave {len(labels)} labels for {len(rows)} rows, or labels outside 0..{k - 1}")
    return labels


def _latest_committee(ws: Workspace, ds: Dataset) -> list[Model]:
    """The models of the newest round a loop trained on `ds`, its round model first (a loop without
    an oracle resumes from them)."""
    rows = [r for r in ws.rows("models", "WHERE dataset_id = ?", (ds.id,)) if "label_loop" in r["meta"]["lineage"]]
    if not rows:
        return []
    last = rows[-1]["meta"]["lineage"]["label_loop"].get("round")
    same = [r for r in rows if r["meta"]["lineage"]["label_loop"].get("round") == last]
    same.sort(key=lambda r: r["meta"]["lineage"]["label_loop"].get("member", 0))
    return [load_model(ws, r["id"]) for r in same]


def label_loop(
    ws: Workspace,
    pool_ds: Dataset,
    *,
    acquire_config: AcquireConfig,
    train_config: TrainConfig | None = None,
    arch: str | None = None,
    model: Model | None = None,
    rounds: int = 1,
    oracle: Oracle | None = None,
    registry: Registry | None = None,
    actor: str = "label-loop",
    progress: bool = False,
) -> dict[str, Any]:
    """Run `rounds` of pick -> label -> retrain on `pool_ds`; returns the final model and version
    and one record per round (labels used, test accuracy, seconds).

    Starts from `model` (its picks lead the first round, its architecture retrains) or from `arch`
    (the first round is a seeded random sample of `acquire_config.budget` rows). Without an `oracle`
    it runs one step with people on ``/review`` through `registry` (see the module docstring):
    ``waiting`` in the result says it stopped for them.

    >>> truth = np.load("truth.npy")  # doctest: +SKIP
    >>> out = label_loop(ws, pool, arch="cnn_small", acquire_config=AcquireConfig(budget=100), rounds=5,
    ...                  oracle=lambda rows: truth[rows])  # doctest: +SKIP
    >>> [r["test_accuracy"] for r in out["rounds"]]  # doctest: +SKIP
    """
    if (arch is None) == (model is None):
        raise BadInput("give the loop one starting point: an architecture (--arch) or a model (--model)")
    if rounds < 1:
        raise BadInput(f"rounds must be at least 1, got {rounds}")
    tcfg = train_config or TrainConfig()
    if model is not None:
        check_model_fits(model, pool_ds, "label")
    base = model if model is not None else new_model(str(arch), pool_ds, seed=tcfg.seed)
    if base.id is None:
        base = save_model(ws, base, name=f"{pool_ds.name}-al-init")
    if oracle is None:
        if registry is None:
            raise BadInput(
                "a loop without an oracle queues items for people: give it the registry (or --oracle-labels)"
            )
        return _people_step(ws, registry, pool_ds, base, model, acquire_config, tcfg, actor, progress)
    members = acquire_config.members if acquire_config.strategy == "disagreement" else 1
    ds, current, committee, records = pool_ds, model, [] if model is None else [model], []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        rows = pool_rows(ds)
        b = acquire_config.budget
        if b > len(rows):
            raise BadInput(
                f"round {r} needs {b} unlabeled items but {ds.name} has {len(rows)} left: lower --budget or --rounds"
            )
        if current is None:  # no model yet: a seeded random first sample
            picks = np.sort(np.random.default_rng(acquire_config.seed).choice(rows, size=b, replace=False))
        else:
            labelled = np.flatnonzero(ds.split == SPLITS["train"])
            others = committee[1:] if len(committee) > 1 else None
            cfg_r = acquire_config.replace(seed=acquire_config.seed + r - 1)  # each round its own draws
            picks = rank_pool(ds, rows, current, cfg_r, members=others, labelled=labelled, progress=progress)[0]
        labels = _oracle_labels(oracle, picks, ds.num_classes)
        source = {
            "kind": "label-loop",
            "round": r,
            "acquire": acquire_config.to_dict(),
            "model": getattr(current, "id", None),
        }
        ds = label_rows(ws, ds, picks, labels, origin="import", actor="oracle", name=pool_ds.name, source=source)
        tag = {"round": r, "strategy": acquire_config.strategy if current is not None else "random"}
        committee = fit_round(ws, ds, base, tcfg, members=members, tag=tag, progress=progress)
        current = committee[0]
        records.append(
            {
                "round": r,
                "strategy": tag["strategy"],
                "added": int(b),
                "labels": int((ds.split == SPLITS["train"]).sum()),
                "test_accuracy": _test_accuracy(current, ds),
                "seconds": time.perf_counter() - t0,
                "dataset": ds.id,
                "model": current.id,
            }
        )
    assert current is not None  # rounds >= 1
    return {"dataset": ds, "model": current, "rounds": records, "waiting": False, "queued": []}


def _people_step(
    ws: Workspace,
    reg: Registry,
    pool_ds: Dataset,
    base: Model,
    model: Model | None,
    acquire_config: AcquireConfig,
    tcfg: TrainConfig,
    actor: str,
    progress: bool,
) -> dict[str, Any]:
    """One step with people: apply decided labels, retrain if any came, queue the next picks."""
    t0 = time.perf_counter()
    ds, report = apply_labels(ws, reg, pool_ds)
    records: list[dict[str, Any]] = []
    committee = _latest_committee(ws, ds) or _latest_committee(ws, pool_ds) or ([model] if model is not None else [])
    current = committee[0] if committee else None
    members = acquire_config.members if acquire_config.strategy == "disagreement" else 1
    labelled = int((ds.split == SPLITS["train"]).sum())
    if report["applied"] or (current is None and labelled >= 2):
        last = current.lineage.get("label_loop", {}).get("round", 0) if current is not None else 0
        tag = {"round": int(last) + 1, "strategy": acquire_config.strategy}
        committee = fit_round(ws, ds, base, tcfg, members=members, tag=tag, progress=progress)
        current = committee[0]
        records.append(
            {
                "round": tag["round"],
                "strategy": acquire_config.strategy,
                "added": report["applied"],
                "labels": labelled,
                "test_accuracy": _test_accuracy(current, ds),
                "seconds": time.perf_counter() - t0,
                "dataset": ds.id,
                "model": current.id,
            }
        )
    out = {"dataset": ds, "model": current, "rounds": records, "applied": report, "waiting": True, "queued": []}
    if report["waiting"].get("open", 0) and not report["applied"]:
        return out  # people have not decided the last picks yet: queue no more
    if current is None:  # cold start: a random sample, shown without an untrained model's guesses
        q = suggest(ws, reg, ds, base, acquire_config.replace(strategy="random"), actor=actor, answers=False)
    else:
        q = suggest(ws, reg, ds, current, acquire_config, members=committee[1:] or None, actor=actor, progress=progress)
    out["queued"] = q["queued"]
    out["suggest"] = q
    return out
