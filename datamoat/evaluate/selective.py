"""Selective prediction with a guarantee: automate only what is accurate enough.

`calibrate_threshold` picks a confidence threshold on held-out data such
that, with probability at least 1 - delta over the draw of that data, the
accuracy of the predictions it accepts (top-class probability >= threshold)
is at least the target; everything else goes to a person.

Method: Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei, 2021) with
fixed-sequence testing. For each threshold of a decreasing grid we test the
null "the error rate of the accepted predictions exceeds 1 - target" with an
exact one-sided binomial (Clopper-Pearson) test on the accepted calibration
samples, and stop at the first threshold whose null we cannot reject at level
delta; the last rejected threshold is the answer. Testing in a fixed order
controls the family-wise error at delta with no union bound.

The grid and its order must be fixed before the tested data is seen, and a
sequence whose first test fails certifies nothing (a grid whose top sits
above a model's confidences, or keeps too few samples to pass, stops at
once). So by default a random fifth of the calibration set places the grid
and picks where testing starts (`confidence_grid`), and only the other four
fifths are tested; pass `grid=` built from other independent data (such as
the train split) to test every calibration sample.

By default the guarantee is on the population: the accuracy of accepted
predictions on a finite batch scatters around it. With `batch_size=m` it is
on the next batch of m items instead: "the predictions automated among the
next m are at least `target` accurate, w.p. >= 1 - delta over the
calibration data and the batch". delta is split in three: a one-sided DKW
band (every threshold's coverage at once) lower-bounds how many of the m
are accepted; from that count, each threshold's tested error level is the
largest population error whose batch error still stays within 1 - target
w.p. >= 1 - delta/3 (exact binomial); and the fixed-sequence test runs at
delta/3 against those levels. It costs coverage (the levels sit below
1 - target), and buys a statement about the batch people will see.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.configs import Config, check
from datamoat.errors import BadInput

__all__ = [
    "SelectivePolicy",
    "calibrate_threshold",
    "confidence_grid",
    "min_calibration_size",
    "risk_coverage",
    "batch_error_levels",
]

METHOD = "learn-then-test, fixed-sequence, Clopper-Pearson"
GRID_FRACTION = 5  # 1/5 of the calibration set places the default grid


@dataclasses.dataclass
class SelectivePolicy(Config):
    """Which predictions to automate: top-class probability >= threshold.

    `threshold` None means nothing is automated (every item goes to review);
    with `per_class`, each predicted class has its own threshold (None: that
    class always goes to review) and `threshold` is unused.
    """

    classes: list[str] = dataclasses.field(default_factory=list)
    threshold: float | None = None
    per_class: dict[str, float | None] | None = None
    target_accuracy: float = 0.99
    delta: float = 0.05
    method: str = METHOD
    n_calibration: int = 0
    n_grid: int = 0  # calibration samples that placed the grid and were not tested
    coverage_on_calibration: float = 0.0
    accuracy_on_calibration: float | None = None
    upper_bound_error: float | None = None  # Clopper-Pearson bound at the chosen threshold(s)
    batch_size: int | None = None  # the guarantee covers the next batch of this many items
    max_workload: float | None = None
    workload_accuracy: float | None = None  # best guaranteed target with <= max_workload reviewed
    workload_coverage: float | None = None
    note: str = ""

    def validate(self) -> None:
        check(0 < self.target_accuracy < 1, f"target accuracy must be in (0, 1), got {self.target_accuracy}")
        check(0 < self.delta < 1, f"delta must be in (0, 1), got {self.delta}")
        check(self.threshold is None or 0 <= self.threshold <= 1, f"threshold must be in [0, 1], got {self.threshold}")
        check(0 <= self.coverage_on_calibration <= 1, "coverage_on_calibration must be in [0, 1]")
        check(self.max_workload is None or 0 <= self.max_workload <= 1, "max_workload must be in [0, 1]")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        if self.per_class is not None:
            check(set(self.per_class) <= set(self.classes), "per_class thresholds must be keyed by class names")

    def apply(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accepted mask (N,), predicted labels (N,)) for probabilities (N, K).

        >>> p = SelectivePolicy(classes=["a", "b"], threshold=0.8)
        >>> p.apply(np.array([[0.9, 0.1], [0.4, 0.6]]))
        (array([ True, False]), array([0, 1]))
        """
        probs = np.asarray(probs)  # (N, K)
        labels, conf = probs.argmax(1), probs.max(1)  # (N,), (N,)
        if self.per_class is not None:
            thr = [self.per_class.get(c) for c in self.classes]
            per = np.array([np.inf if t is None else t for t in thr], dtype=np.float64)  # (K,)
            return conf >= per[labels], labels
        if self.threshold is None:
            return np.zeros(len(labels), dtype=bool), labels
        return conf >= self.threshold, labels


def min_calibration_size(target_accuracy: float, delta: float) -> int:
    """Fewest calibration samples that can certify `target_accuracy` at all.

    Even n accepted, all-correct samples give a Clopper-Pearson upper bound
    1 - delta**(1/n) on the error, which is <= 1 - target only when
    n >= ln(delta) / ln(target).

    >>> min_calibration_size(0.99, 0.05), min_calibration_size(0.95, 0.05)
    (299, 59)
    """
    _check_levels(target_accuracy, delta)
    # The epsilon keeps an exact integer ratio from rounding up past itself.
    return max(1, math.ceil(math.log(delta) / math.log(target_accuracy) - 1e-9))


def confidence_grid(
    reference_confidence: np.ndarray,
    n_calibration: int,
    target_accuracy: float,
    delta: float,
    size: int = 400,
    reference_correct: np.ndarray | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """A decreasing threshold grid at quantiles of confidences from independent data.

    Thresholds step down in equal coverage steps to 0 (automate everything).
    Fixed-sequence testing gets nothing if its first test fails, and tests
    on few samples fail easily, so the grid starts at the highest threshold
    whose test passes with probability >= 0.99 (or the best reachable),
    judged from the reference data's errors (`reference_correct`); without
    labels it starts where about 3 * `min_calibration_size` of the
    `n_calibration` samples are kept.

    >>> g = confidence_grid(np.linspace(0, 1, 1001), 1000, 0.95, 0.05, size=5)
    >>> g.round(3).tolist()
    [0.706, 0.47, 0.235, 0.0]
    """
    from scipy.stats import binom

    ref = np.asarray(reference_confidence, dtype=np.float64).ravel()
    if len(ref) == 0:
        return np.array([0.0])
    n_cal, alpha = max(int(n_calibration), 1), 1.0 - target_accuracy
    cover = np.linspace(min(1.0, min_calibration_size(target_accuracy, delta) / n_cal), 1.0, size)
    if reference_correct is None:
        start = min(1.0, 3 * cover[0])
    else:
        wrong = np.cumsum(~np.asarray(reference_correct, dtype=bool)[np.argsort(-ref, kind="stable")])
        m = np.maximum(1, np.round(cover * len(ref)).astype(int))  # reference samples kept
        err = (wrong[m - 1] + 0.5) / (m + 1)  # shrunk away from 0: a clean top is not proof
        if batch_size is not None:  # batch levels leave a thin margin: plan on a pessimistic error (+1 sd)
            err = np.minimum(err + np.sqrt(err * (1 - err) / m), 1.0)
        n = np.maximum(1, np.floor(cover * n_cal)).astype(int)  # calibration samples kept
        level, d = np.full(len(cover), alpha), delta  # what `_fixed_sequence` will test against
        if batch_size is not None:
            level, d = batch_error_levels(cover, n_cal, target_accuracy, delta, batch_size), delta / 3
        level = np.maximum(level, 1e-12)
        k = binom.ppf(d, n, level)
        k = np.where(binom.cdf(k, n, level) <= d, k, k - 1)  # most errors that still pass
        pass_prob = np.where(k >= 0, binom.cdf(k, n, err), 0.0)
        start = cover[int(np.argmax(pass_prob >= min(0.99, pass_prob.max())))]
    grid = np.unique(np.append(np.quantile(ref, 1.0 - cover[cover >= start]), 0.0))
    return grid[::-1]  # highest threshold first: the fixed testing order


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Error of the accepted predictions as the threshold sweeps down.

    Entry i accepts the i + 1 most confident samples (ties broken by order).

    >>> rc = risk_coverage(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]))
    >>> rc["coverage"].round(2).tolist(), rc["error"].round(2).tolist()
    ([0.33, 0.67, 1.0], [0.0, 0.5, 0.33])
    """
    conf = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    wrong = np.cumsum(~np.asarray(correct, dtype=bool)[order])  # (N,)
    n = np.arange(1, len(conf) + 1)
    return {"threshold": conf[order], "coverage": n / max(len(conf), 1), "error": wrong / n}


def _check_levels(target_accuracy: float, delta: float) -> None:
    if not 0 < target_accuracy < 1:
        raise BadInput(f"target accuracy must be in (0, 1), got {target_accuracy}: use e.g. 0.99 for 99%")
    if not 0 < delta < 1:
        raise BadInput(f"delta must be in (0, 1), got {delta}: use e.g. 0.05 for 95% confidence")


def batch_error_levels(accepted_share: np.ndarray, n_tested: int, target: float, delta: float, m: int) -> np.ndarray:
    """Per threshold, the population error level that keeps a batch of `m` within target.

    `accepted_share` (G,) is each threshold's accepted share among the
    `n_tested` calibration samples. Uses delta/3 for the coverage band and
    delta/3 for the batch (see the module docstring); 0 where no level works.

    >>> batch_error_levels(np.array([0.9]), 4000, 0.95, 0.05, 5000).round(4).tolist()
    [0.0432]
    """
    from scipy.stats import binom

    eta = math.sqrt(math.log(3.0 / delta) / (2.0 * max(n_tested, 1)))  # one-sided DKW, all thresholds at once
    cov_lo = np.clip(np.asarray(accepted_share, dtype=np.float64) - eta, 0.0, 1.0)  # (G,)
    a_lo = np.maximum(binom.ppf(delta / 3, m, cov_lo), 0).astype(int)  # accepted in the batch, w.p. >= 1 - delta/3
    eps = np.linspace(0.0, 1.0 - target, 1001)[::-1]  # candidate levels, largest first, (E,)
    allowed = np.floor((1.0 - target) * a_lo + 1e-9)  # errors the batch may hold, (G,)
    # P(more than `allowed` errors among a_lo) <= delta/3, for every (threshold, level): (G, E).
    ok = binom.sf(allowed[:, None], np.maximum(a_lo, 1)[:, None], eps[None, :]) <= delta / 3
    first = ok.argmax(1)  # the largest level that holds, per threshold
    return np.where(ok.any(1) & (a_lo >= 1), eps[first], 0.0)


def _fixed_sequence(
    conf: np.ndarray, correct: np.ndarray, target: float, delta: float, grid: np.ndarray, batch_size: int | None = None
) -> tuple[float | None, float | None]:
    """(lowest certified threshold or None, its Clopper-Pearson error bound)."""
    from scipy.stats import beta, binom

    desc = np.argsort(-conf, kind="stable")
    errors = np.concatenate([[0], np.cumsum(~correct[desc])])  # errors among the top-n, (N + 1,)
    asc = conf[desc][::-1]
    n = len(conf) - np.searchsorted(asc, grid, side="left")  # accepted per threshold, (G,)
    k = errors[n]
    level = np.full(len(grid), 1.0 - target)  # the error each null says is exceeded, (G,)
    if batch_size is not None:
        level = batch_error_levels(n / max(len(conf), 1), len(conf), target, delta, batch_size)
        delta = delta / 3
    # Exact p-value of "error > level": P(Bin(n, level) <= k); n = 0 (or level 0) gives 1.
    p = np.where(level > 0, binom.cdf(k, n, np.maximum(level, 1e-12)), 1.0)
    fails = np.flatnonzero(~(p <= delta))
    passed = int(fails[0]) if len(fails) else len(grid)
    if passed == 0:
        return None, None
    j = passed - 1
    ucb = 1.0 if k[j] >= n[j] else float(beta.ppf(1 - delta, k[j] + 1, n[j] - k[j]))
    return float(grid[j]), ucb


def _calibrate_one(
    conf: np.ndarray,
    correct: np.ndarray,
    target: float,
    delta: float,
    grid: np.ndarray | None,
    seed: int,
    batch_size: int | None = None,
) -> tuple[float | None, float | None, int, str]:
    """Calibrate one group: (threshold, bound, samples used for the grid, note)."""
    n, n_min = len(conf), min_calibration_size(target, delta)
    if n < n_min:
        return None, None, 0, f"{n} samples, {n_min} needed"
    n_grid = 0
    if grid is None:
        n_grid = n // GRID_FRACTION if n - n // GRID_FRACTION >= 2 * n_min else 0
        if n_grid:
            perm = np.random.default_rng(seed).permutation(n)
            head = perm[:n_grid]
            grid = confidence_grid(
                conf[head], n - n_grid, target, delta, reference_correct=correct[head], batch_size=batch_size
            )
            conf, correct = conf[perm[n_grid:]], correct[perm[n_grid:]]
        else:  # too few to spare any: one data-free hypothesis, "automate everything"
            grid = np.array([0.0])
    thr, ucb = _fixed_sequence(conf, correct, target, delta, np.asarray(grid, dtype=np.float64), batch_size)
    note = ""
    if thr is None:
        first = int((conf >= grid[0]).sum())
        note = f"failed at the first threshold {grid[0]:.6g} ({first} samples at or above it)"
    return thr, ucb, n_grid, note


def _probs_and_labels(model_or_probs: Any, calibration_data: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from datamoat.data.dataset import Dataset
    from datamoat.models.model import Model

    if isinstance(model_or_probs, tuple):
        probs, y = model_or_probs
        probs = np.asarray(probs, dtype=np.float64)
        classes = [str(i) for i in range(probs.shape[1] if probs.ndim == 2 else 0)]
    else:
        if isinstance(calibration_data, Dataset):
            x, y = calibration_data.subset("val")
        elif isinstance(calibration_data, tuple):
            x, y = calibration_data
        else:
            raise BadInput("calibration data must be a Dataset (its val split is used) or an (images, labels) pair")
        if isinstance(model_or_probs, Model):
            probs, classes = model_or_probs.predict_proba(np.asarray(x)), list(model_or_probs.classes)
        elif isinstance(model_or_probs, (str, Path)):
            from datamoat.compress.export import onnx_metadata
            from datamoat.inference.onnx import onnx_predict_proba

            meta = onnx_metadata(model_or_probs)
            probs = onnx_predict_proba(str(model_or_probs), np.asarray(x), meta["preprocess"])
            classes = list(meta["classes"])
        else:
            raise BadInput("calibrate a Model, an ONNX path or a (probabilities, labels) pair of arrays")
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise BadInput(f"need probabilities (N, K) and N labels, got shapes {probs.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise BadInput(f"labels must be in 0..{probs.shape[1] - 1}: pass integer class indices")
    return probs, y, classes


def calibrate_threshold(
    model_or_probs: Any,
    calibration_data: Any,
    target_accuracy: float,
    delta: float = 0.05,
    *,
    per_class: bool = False,
    max_workload: float | None = None,
    grid: np.ndarray | None = None,
    classes: list[str] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> SelectivePolicy:
    """Threshold(s) whose accepted predictions are >= `target_accuracy` accurate w.p. >= 1 - `delta`.

    `model_or_probs` is a `Model`, an ONNX path (with `calibration_data` a
    Dataset, whose val split is used, or an (images, labels) pair) or a
    (probabilities, labels) pair with `calibration_data` None. Learn-then-Test
    with fixed-sequence Clopper-Pearson tests (see the module docstring).
    `per_class` calibrates one threshold per predicted class on the samples
    predicted as that class, each at delta / K (Bonferroni), so all hold at
    once; classes with too few samples always go to review. `max_workload`
    (share of items people can review) also reports the largest target that
    still passes with at most that share reviewed (chosen after seeing the
    data: a planning figure; recalibrate at it on fresh data to rely on it).
    `batch_size` m moves the guarantee from the population to the next batch
    of m items (see the module docstring); it automates less.

    >>> rng = np.random.default_rng(0)
    >>> conf = rng.uniform(0.5, 1, 2000)
    >>> probs = np.stack([conf, 1 - conf], 1); y = (rng.uniform(size=2000) > conf).astype(int)
    >>> pol = calibrate_threshold((probs, y), None, 0.9)
    >>> round(pol.threshold, 2), pol.coverage_on_calibration
    (0.84, 0.325)
    """
    _check_levels(target_accuracy, delta)
    probs, y, names = _probs_and_labels(model_or_probs, calibration_data)
    names = list(classes) if classes is not None else names
    if len(names) != probs.shape[1]:
        raise BadInput(f"{len(names)} class names for {probs.shape[1]} columns of probabilities")
    if max_workload is not None and not 0 <= max_workload <= 1:
        raise BadInput(f"max workload is a share of items in [0, 1], got {max_workload}: e.g. 0.2 for 20%")
    n, n_min = len(y), min_calibration_size(target_accuracy, delta)
    if n < n_min:
        raise BadInput(
            f"calibration set too small: {n} samples, but target accuracy {target_accuracy} at delta {delta} "
            f"needs at least {n_min} (n >= ln(delta)/ln(target)): add held-out data, lower the target or raise delta"
        )
    if batch_size is not None and int(batch_size) < 1:
        raise BadInput(f"batch size must be at least 1 item, got {batch_size}: or leave it out for the population")
    if batch_size is not None and per_class:
        raise BadInput("a batch guarantee is overall, not per class: drop --per-class or --batch-size")
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == y
    grid_arr = None if grid is None else np.sort(np.asarray(grid, dtype=np.float64))[::-1]

    def fit(target: float) -> SelectivePolicy:
        if not per_class:
            thr, ucb, n_grid, note = _calibrate_one(conf, correct, target, delta, grid_arr, seed, batch_size)
            pol = SelectivePolicy(classes=names, threshold=thr, upper_bound_error=ucb, n_grid=n_grid, note=note)
        else:
            k, thresholds, bounds, n_grid, review = len(names), {}, [], 0, []
            for c, name in enumerate(names):
                m = pred == c
                thr, ucb, g, why = _calibrate_one(
                    conf[m], correct[m], target, delta / k, grid_arr, seed + c, batch_size
                )
                thresholds[name], n_grid = thr, n_grid + g
                bounds += [ucb] if ucb is not None else []
                review += [f"{name} ({why})"] if thr is None else []
            note = f"always review: {', '.join(review)}" if review else ""
            pol = SelectivePolicy(
                classes=names,
                per_class=thresholds,
                upper_bound_error=max(bounds) if bounds else None,
                n_grid=n_grid,
                note=note,
            )
        accepted, _ = pol.apply(probs)
        return dataclasses.replace(
            pol,
            target_accuracy=target,
            delta=delta,
            batch_size=None if batch_size is None else int(batch_size),
            n_calibration=n,
            coverage_on_calibration=float(accepted.mean()) if n else 0.0,
            accuracy_on_calibration=float(correct[accepted].mean()) if accepted.any() else None,
        )

    policy = fit(target_accuracy)
    if max_workload is None:
        return policy
    best, best_cov = _best_target(fit, 1.0 - max_workload)
    return dataclasses.replace(policy, max_workload=max_workload, workload_accuracy=best, workload_coverage=best_cov)


def _best_target(fit: Any, min_coverage: float) -> tuple[float | None, float | None]:
    """Largest target (4 decimals) whose calibration automates >= `min_coverage`, by bisection."""

    def coverage(t: float) -> float:
        return fit(t).coverage_on_calibration  # a target too high for the data automates nothing

    # Targets in ten-thousandths (the reported precision). Coverage falls as
    # the target rises, so bisect for the last target that still passes.
    lo, hi = 1, 9999
    if coverage(lo / 1e4) < min_coverage:
        return None, None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if coverage(mid / 1e4) >= min_coverage else (lo, mid - 1)
    return lo / 1e4, coverage(lo / 1e4)
