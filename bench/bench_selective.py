"""Does the selective-prediction guarantee hold? Repeated draws on Fashion-MNIST.

A cnn_small trained for 2 epochs scores the 10,000 official test images once;
everything after that is numpy. Two protocols, delta 0.05:

- split (the issue's acceptance test): 100 times, split the 10,000 at random
  into 5,000 calibration / 5,000 test images, calibrate on the first half and
  check the accuracy of the accepted predictions of the second half.
- population (exactly what the guarantee states): 1,000 times, draw 5,000
  calibration images with replacement from the 10,000 (i.i.d. from a known
  population) and check the accepted accuracy on all 10,000, the population.

The guarantee bounds the population accuracy at the chosen threshold; the
split protocol adds the sampling noise of a 5,000-image test half (about 0.3
accuracy points, the same size as the method's margin), which is anti-
correlated with the calibration half's because both come from one fixed set.
`calibrate_threshold(..., batch_size=m)` guarantees the accepted accuracy
of the next m items instead, the statement the split protocol checks.
The plug-in rule (lowest threshold whose calibration accuracy reaches the
target) is shown for contrast: it has no guarantee.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from datamoat.evaluate.selective import calibrate_threshold, confidence_grid, risk_coverage

TARGETS = (0.95, 0.98, 0.99)
DELTA = 0.05
SPLITS = 100
POPULATION_DRAWS = 1_000
N_CAL = 5_000
GRID_SAMPLES = 10_000
METHODS = ("LTT, default grid", "LTT, train-split grid", "plug-in (no guarantee)", "LTT, batch guarantee")
BATCH = METHODS[3]  # batch_size = the checked set's size: the guarantee the split protocol tests


def _plug_in(conf: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    rc = risk_coverage(conf, correct)
    ok = np.flatnonzero(rc["error"] <= 1 - target)
    return float(rc["threshold"][ok[-1]]) if len(ok) else None


def validate(probs: np.ndarray, y: np.ndarray, train_conf: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (protocol, method, target); see the module docstring."""
    from scipy.stats import beta

    conf, correct = probs.max(1), probs.argmax(1) == y
    rng = np.random.default_rng(seed)
    draws = {
        "split": [np.split(rng.permutation(len(y)), [N_CAL]) for _ in range(SPLITS)],
        "population": [(rng.integers(0, len(y), N_CAL), np.arange(len(y))) for _ in range(POPULATION_DRAWS)],
    }
    rows = []
    for protocol, pairs in draws.items():
        for target in TARGETS:
            train_grid = confidence_grid(train_conf, N_CAL, target, DELTA)
            for method in METHODS:
                met, cover, acc = [], [], []
                for cal, ev in pairs:
                    if method == METHODS[2]:
                        thr = _plug_in(conf[cal], correct[cal], target)
                    else:
                        grid = train_grid if method == METHODS[1] else None
                        m = len(ev) if method == BATCH else None
                        thr = calibrate_threshold(
                            (probs[cal], y[cal]), None, target, DELTA, grid=grid, batch_size=m
                        ).threshold
                    accepted = np.zeros(len(ev), bool) if thr is None else conf[ev] >= thr
                    a = float(correct[ev][accepted].mean()) if accepted.any() else np.nan
                    met.append(bool(np.isnan(a) or a >= target))  # nothing automated: no automated errors
                    cover.append(float(accepted.mean()))
                    acc.append(a)
                some, hits, n = not np.all(np.isnan(acc)), int(np.sum(met)), len(met)
                lo = float(beta.ppf(0.025, hits, n - hits + 1)) if hits else 0.0  # Clopper-Pearson 95%
                hi = float(beta.ppf(0.975, hits + 1, n - hits)) if hits < n else 1.0
                rows.append(
                    {
                        "protocol": protocol,
                        "method": method,
                        "target": target,
                        "draws": n,
                        "rate_meeting_target": hits / n,
                        "rate_ci95": f"{lo:.3f}-{hi:.3f}",
                        "mean_coverage": float(np.mean(cover)),
                        "mean_accepted_accuracy": float(np.nanmean(acc)) if some else float("nan"),
                        "worst_accepted_accuracy": float(np.nanmin(acc)) if some else float("nan"),
                        "draws_automating_nothing": int(sum(c == 0 for c in cover)),
                    }
                )
    return rows


def main(model: Any = None, data: Any = None) -> dict:
    from datamoat.data import import_fashion_mnist
    from datamoat.models import new_model
    from datamoat.train.loop import TrainConfig, set_threads, train
    from datamoat.workspace import Workspace

    set_threads(0)
    if data is None:
        data = import_fashion_mnist(Workspace.init(tempfile.mkdtemp(prefix="dm-bench-selective-")))
    if model is None:
        model = train(new_model("cnn_small", data), data, TrainConfig(epochs=2, seed=0), progress=False)
    x, y = data.subset("test")
    probs = model.predict_proba(x)
    x_tr, _ = data.subset("train")
    pick = np.random.default_rng(0).permutation(len(x_tr))[:GRID_SAMPLES]
    rows = validate(probs, y, model.predict_proba(x_tr[pick]).max(1))
    return report(rows, float((probs.argmax(1) == y).mean()), data.name, model.config.arch)


def report(rows: list[dict], accuracy: float, dataset: str, arch: str) -> dict:
    """The dict `bench/run.py` writes, from `validate` rows."""
    # Each protocol is judged by the guarantee it tests: the population one by
    # every LTT method, the split one (a finite test half) by the batch guarantee.
    judged = {
        "population": [r for r in rows if r["protocol"] == "population" and r["method"].startswith("LTT")],
        "split": [r for r in rows if r["protocol"] == "split" and r["method"] == BATCH],
    }
    met = {p: all(r["rate_meeting_target"] >= 1 - DELTA for r in rs) for p, rs in judged.items()}
    return {
        "title": "Selective prediction: does the accuracy guarantee hold on fresh data?",
        "columns": [
            "protocol",
            "method",
            "target",
            "draws",
            "rate_meeting_target",
            "rate_ci95",
            "mean_coverage",
            "mean_accepted_accuracy",
            "worst_accepted_accuracy",
            "draws_automating_nothing",
        ],
        "rows": rows,
        "summary": {
            "population_met": met["population"],
            "split_met": met["split"],
            "required_rate": 1 - DELTA,
            "test_accuracy": accuracy,
            "dataset": dataset,
            "arch": arch,
        },
        "notes": [
            f"{arch} trained 2 epochs on {dataset} (test accuracy {accuracy:.4f}); delta {DELTA}. rate_meeting_target: "
            "share of draws whose accepted predictions reach the target (a draw that automates nothing counts as "
            "meeting it), with its Clopper-Pearson 95% interval. The guarantee requires >= "
            f"{1 - DELTA:.2f}: population protocol (every LTT row) {'met' if met['population'] else 'NOT met'}, "
            f"split protocol (the batch-guarantee row) {'met' if met['split'] else 'NOT met'}.",
            "split: 100 random 5,000/5,000 splits of the 10,000 test images, accuracy on the test half. population: "
            "1,000 calibration sets of 5,000 drawn with replacement from the 10,000, accuracy on all 10,000 (the "
            "population the guarantee is about). The split protocol also carries the test half's own sampling noise, "
            "which the population guarantee does not cover and the batch guarantee (`batch_size` = the checked set's "
            "size: a DKW coverage band, an exact binomial batch margin and the LTT test, delta/3 each) does.",
            "Learn-then-Test (Angelopoulos et al. 2021): fixed-sequence Clopper-Pearson tests over a decreasing "
            "threshold grid. Default grid: placed on a random fifth of the calibration set (the rest is tested); "
            "train-split grid: placed on the confidences of 10,000 train images, so all 5,000 are tested.",
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
