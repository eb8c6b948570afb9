import numpy as np
import pytest
from scipy.stats import beta

from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.evaluate.selective import (
    SelectivePolicy,
    calibrate_threshold,
    confidence_grid,
    min_calibration_size,
    risk_coverage,
)
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train


def synthetic(n: int, rng: np.random.Generator, k: int = 2):
    """Confidence c ~ U(0.5, 1) on a random class; the prediction is right with
    probability c**2 (an over-confident model), so the accuracy of predictions
    with c >= t is E[c**2 | c >= t] = (1 + t + t**2) / 3, known exactly."""
    conf = rng.uniform(0.5, 1.0, n)
    pred = rng.integers(0, k, n)
    probs = np.full((n, k), 0.0)
    probs[np.arange(n), pred] = conf
    other = (pred + 1) % k  # the rest of the mass on one other class keeps argmax = pred
    probs[np.arange(n), other] = 1 - conf
    right = rng.uniform(size=n) < conf**2
    y = np.where(right, pred, other)
    return probs, y


def true_accuracy(t: float) -> float:
    t = max(t, 0.5)
    return (1 + t + t**2) / 3


def test_min_calibration_size_matches_clopper_pearson():
    assert min_calibration_size(0.99, 0.05) == 299
    # 299 all-correct samples bound the error by 1 - target at level delta; 298 do not.
    assert beta.ppf(0.95, 1, 299) <= 0.01 < beta.ppf(0.95, 1, 298)
    assert min_calibration_size(0.95, 0.05) == 59
    assert min_calibration_size(0.9, 0.1) == 22


def test_calibration_set_too_small_is_refused():
    probs = np.tile([[0.99, 0.01]], (298, 1))
    y = np.zeros(298, dtype=int)  # every prediction right: still too few for 0.99
    with pytest.raises(BadInput, match="needs at least 299") as err:
        calibrate_threshold((probs, y), None, 0.99, 0.05)
    assert "\n" not in str(err.value)
    # One more sample is enough: everything can be automated.
    pol = calibrate_threshold((np.tile([[0.99, 0.01]], (299, 1)), np.zeros(299, dtype=int)), None, 0.99, 0.05)
    assert pol.threshold is not None and pol.coverage_on_calibration == 1.0
    assert pol.upper_bound_error <= 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_accuracy": 0.0},
        {"target_accuracy": 1.0},
        {"target_accuracy": 1.5},
        {"target_accuracy": -0.1},
        {"target_accuracy": 0.9, "delta": 0.0},
        {"target_accuracy": 0.9, "delta": 1.0},
        {"target_accuracy": 0.9, "max_workload": 1.5},
    ],
)
def test_bad_levels_are_one_line_errors(kwargs):
    probs, y = synthetic(500, np.random.default_rng(0))
    with pytest.raises(BadInput) as err:
        calibrate_threshold((probs, y), None, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_arrays_are_refused():
    probs, y = synthetic(500, np.random.default_rng(0))
    with pytest.raises(BadInput, match="labels must be in 0..1"):
        calibrate_threshold((probs, y + 5), None, 0.9)
    with pytest.raises(BadInput, match="shapes"):
        calibrate_threshold((probs, y[:-1]), None, 0.9)


def test_guarantee_holds_over_many_calibration_draws():
    """The statistical test of the guarantee: over 200 calibration sets, the
    true accuracy of what is accepted reaches the target in >= 1 - delta of
    them (minus slack for 200 draws: one standard error is 1.5 points). The
    plug-in rule on the same draws misses far more often, so this test can fail."""
    rng = np.random.default_rng(1234)
    target, delta = 0.85, 0.05
    ok, plug_ok, coverage = [], [], []
    for _ in range(200):
        probs, y = synthetic(1000, rng)
        pol = calibrate_threshold((probs, y), None, target, delta, seed=int(rng.integers(1 << 30)))
        ok.append(pol.threshold is None or true_accuracy(pol.threshold) >= target)
        coverage.append(pol.coverage_on_calibration)
        rc = risk_coverage(probs.max(1), probs.argmax(1) == y)
        plug = rc["threshold"][np.flatnonzero(rc["error"] <= 1 - target)[-1]]
        plug_ok.append(true_accuracy(plug) >= target)
    assert np.mean(ok) >= 1 - delta - 0.03
    assert np.mean(plug_ok) < 0.8
    # Not vacuous: the best threshold keeps about 32% of items, and we keep a good share of that.
    assert 0.15 < np.mean(coverage) < 0.32


def test_fresh_draw_meets_target_and_apply_matches_threshold():
    rng = np.random.default_rng(7)
    probs, y = synthetic(4000, rng)
    pol = calibrate_threshold((probs, y), None, 0.85, 0.05)
    fresh, y2 = synthetic(200_000, rng)
    accepted, labels = pol.apply(fresh)
    assert np.array_equal(accepted, fresh.max(1) >= pol.threshold)
    assert np.array_equal(labels, fresh.argmax(1))
    assert (labels[accepted] == y2[accepted]).mean() >= 0.85
    assert pol.n_calibration == 4000 and pol.n_grid == 800  # a fifth placed the grid and was not tested
    assert pol.method.startswith("learn-then-test")


def test_explicit_grid_uses_every_sample_and_stops_at_first_failure():
    rng = np.random.default_rng(3)
    probs, y = synthetic(3000, rng)
    grid = confidence_grid(synthetic(3000, rng)[0].max(1), 3000, 0.85, 0.05)
    assert np.all(np.diff(grid) < 0) and grid[-1] == 0.0
    pol = calibrate_threshold((probs, y), None, 0.85, 0.05, grid=grid)
    assert pol.n_grid == 0 and pol.threshold in grid
    # Fixed-sequence: every grid threshold above the answer passes; the next one fails.
    conf, right = probs.max(1), probs.argmax(1) == y
    from scipy.stats import binom

    def passes(t):
        a = conf >= t
        return binom.cdf((~right[a]).sum(), a.sum(), 0.15) <= 0.05

    i = int(np.flatnonzero(grid == pol.threshold)[0])
    assert all(passes(t) for t in grid[: i + 1]) and not passes(grid[i + 1])


def test_per_class_thresholds_split_delta_and_review_rare_classes():
    rng = np.random.default_rng(5)
    probs, y = synthetic(6000, rng, k=3)
    # Class 2 predictions are wrong more often: flip half of its correct labels.
    bad = (probs.argmax(1) == 2) & (y == 2) & (rng.uniform(size=len(y)) < 0.5)
    y = np.where(bad, 0, y)
    # Class 1 is predicted only rarely: keep 20 of its predictions.
    keep = (probs.argmax(1) != 1) | (np.cumsum(probs.argmax(1) == 1) <= 20)
    probs, y = probs[keep], y[keep]
    pol = calibrate_threshold((probs, y), None, 0.85, 0.05, per_class=True, classes=["cat", "dog", "fox"])
    assert set(pol.per_class) == {"cat", "dog", "fox"} and pol.threshold is None
    # Bonferroni: each class is tested at delta / 3, which needs 26 samples at 0.85.
    assert min_calibration_size(0.85, 0.05 / 3) == 26
    assert pol.per_class["dog"] is None and "dog (20 samples, 26 needed)" in pol.note
    assert pol.per_class["cat"] is not None
    assert pol.per_class["fox"] is None or pol.per_class["fox"] > pol.per_class["cat"]
    accepted, labels = pol.apply(probs)
    assert not accepted[labels == 1].any()
    cal_acc = (labels[accepted] == y[accepted]).mean()
    assert cal_acc >= 0.85 and pol.accuracy_on_calibration == pytest.approx(cal_acc)


def test_max_workload_reports_the_best_target_within_it():
    probs, y = synthetic(4000, np.random.default_rng(11))
    pol = calibrate_threshold((probs, y), None, 0.85, 0.05, max_workload=0.5)
    best = pol.workload_accuracy
    assert pol.max_workload == 0.5 and 0.7 < best < 0.9
    at_best = calibrate_threshold((probs, y), None, best, 0.05)
    above = calibrate_threshold((probs, y), None, round(best + 1e-4, 4), 0.05)
    assert at_best.coverage_on_calibration >= 0.5 > above.coverage_on_calibration
    assert pol.workload_coverage == at_best.coverage_on_calibration
    # More reviewers, higher reachable accuracy.
    more = calibrate_threshold((probs, y), None, 0.85, 0.05, max_workload=0.8).workload_accuracy
    assert more > best


def test_policy_round_trips_through_config_dict():
    probs, y = synthetic(2000, np.random.default_rng(2))
    pol = calibrate_threshold((probs, y), None, 0.85, 0.05, per_class=True)
    back = config_from_dict(pol.to_dict())
    assert isinstance(back, SelectivePolicy) and back == pol
    assert np.array_equal(back.apply(probs)[0], pol.apply(probs)[0])
    with pytest.raises(BadInput):
        SelectivePolicy(target_accuracy=1.0)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from datamoat.data import import_digits
    from datamoat.workspace import Workspace

    ds = import_digits(Workspace.init(tmp_path_factory.mktemp("ws")))
    return train(new_model("mlp", ds), ds, TrainConfig(epochs=2, threads=1), progress=False), ds


def test_model_and_onnx_inputs_match_the_probability_path(digits_model, tmp_path):
    from datamoat.compress.export import export

    model, ds = digits_model
    x, y = ds.subset("val")
    from_model = calibrate_threshold(model, ds, 0.9, 0.05)
    from_probs = calibrate_threshold((model.predict_proba(x), y), None, 0.9, 0.05, classes=model.classes)
    assert from_model == from_probs and from_model.n_calibration == len(y)
    with pytest.raises(BadInput, match="calibration data"):
        calibrate_threshold(model, None, 0.9)
    path = export(model, tmp_path / "m.onnx")
    from_onnx = calibrate_threshold(path, (x, y), 0.9, 0.05)
    assert from_onnx.classes == model.classes
    assert from_onnx.threshold == pytest.approx(from_model.threshold, abs=1e-5)


def test_batch_guarantee_holds_on_the_next_batch():
    """With batch_size=m, the accuracy of what is accepted among the next m
    items reaches the target in >= 1 - delta of draws. The population
    guarantee makes no such promise, and on the same draws it misses more."""
    rng = np.random.default_rng(99)
    target, delta, m = 0.8, 0.05, 2000
    batch_ok, pop_ok, cov_batch, cov_pop = [], [], [], []
    for _ in range(100):
        probs, y = synthetic(4000, rng)
        seed = int(rng.integers(1 << 30))
        batch = calibrate_threshold((probs, y), None, target, delta, batch_size=m, seed=seed)
        pop = calibrate_threshold((probs, y), None, target, delta, seed=seed)
        test_p, test_y = synthetic(m, rng)
        for pol, ok, cov in ((batch, batch_ok, cov_batch), (pop, pop_ok, cov_pop)):
            accepted, pred = pol.apply(test_p)
            ok.append(not accepted.any() or (pred[accepted] == test_y[accepted]).mean() >= target)
            cov.append(accepted.mean())
    assert batch.batch_size == m and config_from_dict(batch.to_dict()) == batch
    assert np.mean(batch_ok) >= 1 - delta - 0.03
    assert np.mean(pop_ok) < np.mean(batch_ok)
    # It pays in coverage, but still automates a useful share (the ideal is ~43%).
    assert 0.15 < np.mean(cov_batch) < np.mean(cov_pop)


def test_batch_size_bad_input():
    probs, y = synthetic(500, np.random.default_rng(0))
    with pytest.raises(BadInput, match="batch size"):
        calibrate_threshold((probs, y), None, 0.8, batch_size=0)
    with pytest.raises(BadInput, match="per class"):
        calibrate_threshold((probs, y), None, 0.8, batch_size=100, per_class=True)
