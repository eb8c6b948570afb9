"""Drift: the reference profile, each window test alarming on its own shift and staying quiet
without one, the false-alarm rate under no drift, and the label-free estimate on a real shift."""

import numpy as np
import pytest
import torch

from datamoat.compress.export import export
from datamoat.compress.quantize import QuantizeConfig, quantize
from datamoat.data import SPLITS
from datamoat.errors import BadInput
from datamoat.evaluate.drift import (
    TESTS,
    DriftConfig,
    check_window,
    estimate_accuracy,
    profile_from,
    reference_profile,
    summarize,
)
from datamoat.inference.engine import open_version
from datamoat.train.optim import head_parameters

CFG = DriftConfig(permutations=200)


def synthetic(rng, n, *, emb_shift=0.0, conf_power=1.0, mix=None, bright=0.0, contrast=1.0):
    """A window where one thing moves: embeddings, confidences, the class mix, or the pixels."""
    k = 4
    labels = rng.choice(k, n, p=mix) if mix is not None else rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 2.5  # (n, k): the predicted class is mostly `labels`
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = probs**conf_power / (probs**conf_power).sum(1, keepdims=True)
    emb = rng.normal(size=(n, 16)) + emb_shift
    pixels = np.clip(rng.normal(100, 30, (n, 1, 6, 6)) * contrast + bright, 0, 255)
    return summarize(emb, probs, pixels, CFG), labels


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    ref, _ = synthetic(rng, 3000)
    return profile_from(ref, labels=ref["predicted"], config=CFG)


SHIFTS = {
    "embedding MMD": {"emb_shift": 0.6},
    "confidence KS": {"conf_power": 2.5},
    "class mix chi-square": {"mix": [0.55, 0.15, 0.15, 0.15]},
    "brightness KS": {"bright": 25.0},
    "contrast KS": {"contrast": 1.5},
}


@pytest.mark.parametrize("test", TESTS)
def test_each_test_alarms_on_its_shift_and_not_without_it(profile, test):
    rng = np.random.default_rng(1)
    quiet = check_window(profile, synthetic(rng, 300)[0])
    assert not quiet["alarm"] and quiet["p_values"][test] > quiet["level"]
    moved = check_window(profile, synthetic(rng, 300, **SHIFTS[test])[0])
    assert moved["alarm"] and test in moved["fired"]


def test_windows_without_drift_alarm_at_most_alpha(profile):
    rng = np.random.default_rng(2)
    alarms = sum(check_window(profile, synthetic(rng, 200)[0])["alarm"] for _ in range(150))
    # alpha is 0.05: 7.5 expected at worst; 16 or more has probability below 0.2% under alpha.
    assert alarms <= 15


def test_a_window_must_hold_ten_answers(profile):
    with pytest.raises(BadInput, match="at least 10"):
        check_window(profile, synthetic(np.random.default_rng(3), 5)[0])


def test_the_config_is_validated_and_recorded_with_the_profile(profile):
    with pytest.raises(BadInput, match="permutations must be at least 100"):
        DriftConfig(permutations=50)
    assert profile["config"]["type"] == "DriftConfig" and profile["config"]["permutations"] == 200


def test_atc_interval_is_wilson():
    est = estimate_accuracy({"atc_threshold": 0.5}, np.array([0.9] * 80 + [0.1] * 20))
    assert est["estimate"] == 0.8 and 0.71 < est["low"] < 0.72 and 0.86 < est["high"] < 0.87


@pytest.fixture(scope="module")
def version(saved, tmp_path_factory):
    _, ds, model = saved
    onnx = export(model, tmp_path_factory.mktemp("onnx") / "m.onnx").read_bytes()
    meta = {
        "version_id": model.id,
        "name": "m",
        "kind": "fp32",
        "classes": model.classes,
        "preprocess": model.preprocess,
    }
    return open_version(onnx, meta, embeddings=True), ds, model, onnx


def test_the_embedding_output_is_the_classifier_input(version):
    v, ds, model, onnx = version
    x = np.asarray(ds.x[:7])
    seen = []
    last = head_parameters(model.net)[0].rsplit(".", 1)[0]
    hook = model.net.get_submodule(last).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        logits = model.logits(x)
    finally:
        hook.remove()
    probs, emb = v.run(x)
    assert emb is not None and np.allclose(emb, seen[0].numpy(), atol=1e-4)
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-5)
    plain = open_version(onnx, v.info)  # without embeddings: the same answers, no second output
    assert plain.run(x)[1] is None and np.allclose(plain.run(x)[0], probs, atol=1e-6)


def test_an_int8_graph_still_gives_a_float_embedding(version, tmp_path):
    v, ds, model, _ = version
    fp32 = export(model, tmp_path / "m.onnx")
    q = quantize(fp32, QuantizeConfig(), ds.subset("train")[0][:200], model.preprocess, out_path=tmp_path / "q.onnx")
    v8 = open_version(q.path.read_bytes(), v.info, embeddings=True)
    probs, emb = v8.run(np.asarray(ds.x[:5]))
    assert emb is not None and emb.dtype == np.float32 and emb.shape[0] == 5 and probs.shape == (5, 10)


def test_profile_of_a_version_and_a_shift_the_estimate_sees(version):
    v, ds, _, _ = version
    prof = reference_profile(v, ds, config=CFG)
    val = ds.split == SPLITS["val"]
    assert prof["n"] == int(val.sum()) and len(prof["channel_mean"]) == 1
    assert sum(prof["class_counts"]) == prof["n"] and sum(b["count"] for b in prof["calibration"]) == prof["n"]
    test = np.flatnonzero(ds.split == SPLITS["test"])
    x, y = np.asarray(ds.x[test]), ds.y[test]
    rng = np.random.default_rng(0)
    noisy = np.clip(x + rng.normal(0, 120, x.shape), 0, 255).astype(np.uint8)  # heavy noise: accuracy falls
    results = {}
    for name, xs in (("clean", x), ("noisy", noisy)):
        probs, emb = v.run(xs)
        check = check_window(prof, summarize(emb, probs, xs, CFG))
        results[name] = (check, float((probs.argmax(1) == y).mean()))
    clean, noisy_ = results["clean"], results["noisy"]
    assert not clean[0]["alarm"] and noisy_[0]["alarm"]
    assert noisy_[1] < clean[1] - 0.1  # the shift really hurts
    assert noisy_[0]["estimate"]["estimate"] < clean[0]["estimate"]["estimate"] - 0.05  # and ATC sees it
    assert abs(clean[0]["estimate"]["estimate"] - clean[1]) < 0.06


def test_confidences_near_one_compare_alike():
    """A confident model's answers sit within 1e-7 of 1: the profile must keep them as they are."""
    rng = np.random.default_rng(4)

    def confident(n):
        probs = np.zeros((n, 4))
        probs[:, 0] = 1 - rng.random(n) * 1e-7
        probs[:, 1] = 1 - probs[:, 0]
        return summarize(rng.normal(size=(n, 16)), probs, rng.integers(0, 256, (n, 1, 6, 6)), CFG)

    ref = confident(3000)
    prof = profile_from(ref, labels=ref["predicted"], config=CFG)
    assert check_window(prof, confident(300))["p_values"]["confidence KS"] > 0.05
