"""`improve`'s label lever: "label N more, chosen by a strategy", priced in labels.

A user with an unlabeled pool can spend people's time on labels instead of on code or on
cleaning. What N labels are worth cannot be measured on the pool itself (nobody knows its labels
yet), so the lever measures it on the labels the user already has, the way `improve` measures
the data lever: the train rows the baseline did not see are held back as if unlabeled
(`datamoat.data.pool.hide_labels`), the baseline model ranks them by the strategy
(`datamoat.train.acquire`), their stored labels stand in for the people (an oracle), and the
baseline recipe retrains on the baseline's rows plus the N picks. A second training on N rows
drawn at random from the same held-back rows is the control: the strategy is worth its
difference, and labelling at all is worth the control's gain.

Where the dataset has a real pool, the result also says how to spend the same N there
(`datamoat label suggest`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from datamoat.data.dataset import SPLITS, Dataset
from datamoat.data.pool import hide_labels, label_rows, pool_rows
from datamoat.models.model import Model, new_model
from datamoat.train.acquire import AcquireConfig, rank_pool
from datamoat.train.loop import TrainConfig, subsample, train
from datamoat.workspace import Workspace

__all__ = ["label_lever", "LABEL_STRATEGIES"]

LABEL_STRATEGIES = ("margin", "entropy", "kcenter", "badge", "random", "hybrid")  # disagreement needs a committee


def label_lever(
    ws: Workspace,
    data: Dataset,
    base: Model,
    recipe: TrainConfig,
    *,
    budget: int,
    strategy: str,
    share_s: float,
    base_train_s: float,
    test_accuracy: Any,
) -> dict[str, Any]:
    """Label `budget` more train rows the baseline `base` (trained by `recipe` on its
    ``max_train_samples`` subsample) did not see, chosen by `strategy`, and a random control;
    skipped when its two trainings would not fit `share_s`. `test_accuracy(model, data)` scores.

    >>> out = label_lever(ws, ds, base, recipe, budget=500, strategy="hybrid", share_s=60,
    ...                   base_train_s=8.0, test_accuracy=accuracy_on_test)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    train_rows = np.flatnonzero(data.split == SPLITS["train"])
    seen = train_rows[subsample(data.y[train_rows], recipe.max_train_samples, recipe.seed)]  # the baseline's rows
    held = np.setdiff1d(train_rows, seen)
    n = min(budget, len(held))
    out: dict[str, Any] = {"kind": f"label {n} more, chosen by {strategy}", "labels": n, "strategy": strategy}
    real_pool = len(pool_rows(data))
    if real_pool:
        out["pool"] = {
            "unlabeled": real_pool,
            "next": f"datamoat label suggest {data.id} --model {base.id} --budget {min(n, real_pool)} "
            f"--strategy {strategy}",
        }
    # Two trainings on about len(seen) + n rows, and one pass over the held-back rows.
    est = 2 * base_train_s * (len(seen) + n) / max(1, len(seen))
    if n == 0 or est > share_s:
        why = "no train rows left to hold back" if n == 0 else f"it would take ~{est:.0f}s of a {share_s:.0f}s share"
        return {**out, "skipped": why, "test_accuracy": None, "seconds": round(time.perf_counter() - t0, 3)}
    hidden = hide_labels(ws, data, held, name=f"{data.name}-improve-held")
    picked, _ = rank_pool(
        hidden,
        held,
        base,
        AcquireConfig(strategy=strategy, budget=n, seed=recipe.seed, device=recipe.device),
        labelled=seen,
    )
    control = np.random.default_rng(recipe.seed).choice(held, n, replace=False)
    results, ids = {}, {}
    for key, rows in (("chosen", picked), ("random", control)):
        labelled = label_rows(
            ws,
            hidden,
            rows,
            data.y[rows],
            origin="import",
            actor="improve: labels held back",
            name=f"{data.name}-improve-{key}",
        )
        full = recipe.replace(max_train_samples=0)  # every labelled row
        m = train(new_model(base.config.arch, labelled, seed=recipe.seed), labelled, full, progress=False)
        results[key], ids[key] = float(test_accuracy(m, data)), labelled.id
    return {
        **out,
        "test_accuracy": round(results["chosen"], 6),
        "random_control_accuracy": round(results["random"], 6),
        "strategy_gain_over_random": round(results["chosen"] - results["random"], 6),
        "held_back": int(len(held)),
        "dataset_id": ids["chosen"],  # the baseline's rows plus the picks, the rest held back
        "control_dataset_id": ids["random"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
