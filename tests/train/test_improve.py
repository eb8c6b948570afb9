"""improve: a baseline, the model lever and the data lever on equal budgets, and the data-size curve."""

import json
from pathlib import Path

import numpy as np
import pytest
from dmtest import dm

from datamoat.data import load_dataset
from datamoat.data.versions import diff, flip_labels
from datamoat.errors import BadInput
from datamoat.models import load_model
from datamoat.train.improve import CURVE_FRACTIONS, GRACE_S, ImproveConfig, _data_lever, improve


def test_improve_end_to_end(ws, digits):
    out = improve(ws, digits, budget_minutes=0.1, epochs=2, threads=1)
    base = out["baseline"]["test_accuracy"]
    n_train = len(digits.subset("train")[1])
    assert abs(out["baseline"]["train_samples"] - 0.5 * n_train) <= digits.num_classes  # stratified rounding
    for key in ("model", "data", "label"):
        lever = out["levers"][key]
        assert lever["gain"] == pytest.approx(lever["test_accuracy"] - base, abs=1e-5)
        assert lever["budget_s"] == pytest.approx(2.0)  # a third of 6 s each
        assert lever["within_budget"] is True
    for key in ("model", "data"):
        lever = out["levers"][key]
        assert load_model(ws, lever["model_id"]).id == lever["model_id"]
    label = out["levers"]["label"]
    assert label["labels"] == out["baseline"]["train_samples"] // 5 and "random_control_accuracy" in label
    assert out["levers"]["model"]["trials"] >= 1
    data_lever = out["levers"]["data"]  # the whole train split, less the label errors it dropped
    kept = len(load_dataset(ws, data_lever["dataset_id"]).subset("train")[1])
    assert data_lever["train_samples"] == kept and n_train - kept < 0.2 * n_train
    curve = out["curve"]
    assert [p["fraction"] for p in curve] == list(CURVE_FRACTIONS)
    sizes = [p["train_samples"] for p in curve]
    assert sizes == sorted(sizes) and sizes[-1] == n_train
    assert curve[2]["test_accuracy"] == base  # the 50% point is the baseline itself
    # The accounting: the levers' shares plus the stated overhead bound the run.
    assert out["total_s"] <= out["budget_s"] + out["overhead_s"] + 2 * GRACE_S
    report = Path(out["report"]).read_text()
    assert "| model |" in report and "| data |" in report and "| label |" in report and "| 100% |" in report
    assert (Path(out["report"]).parent / "curve.png").stat().st_size > 1000


def test_data_lever_relabels_noisy_labels_when_the_budget_allows(ws, digits):
    noisy, flipped = flip_labels(ws, digits, 0.1, seed=0)
    cfg = ImproveConfig(budget_minutes=10, epochs=3, threads=1)
    lever = _data_lever(ws, noisy, cfg, share=600.0, full_train_s=1.0)
    assert lever["steps"][0].startswith("relabelled")
    assert lever["dataset_id"] != noisy.id
    fixed = load_dataset(ws, lever["dataset_id"])
    d = diff(ws, noisy, fixed)["splits"]["train"]
    assert d["relabelled"] + d["removed"] > 0 and d["added"] == 0
    assert lever["train_samples"] == len(noisy.subset("train")[1]) - d["removed"]
    # Fewer train labels differ from the original ones than in the noisy version, per sample kept.
    wrong = lambda ds: diff(ws, digits, ds)["splits"]["train"]["relabelled"] / len(ds.subset("train")[1])  # noqa: E731
    assert wrong(fixed) < wrong(noisy) / 2


def test_data_lever_skips_cleaning_that_cannot_fit(ws, digits):
    lever = _data_lever(ws, digits, ImproveConfig(epochs=1, threads=1), share=1.0, full_train_s=5.0)
    assert lever["steps"][0].startswith("cleaning skipped") and lever["dataset_id"] == digits.id


def test_label_lever_labels_only_rows_the_baseline_did_not_see(ws, digits):
    from datamoat.data.dataset import SPLITS
    from datamoat.data.pool import ORIGINS, hide_labels, origins, pool_rows
    from datamoat.models import new_model
    from datamoat.train.labellever import label_lever
    from datamoat.train.loop import TrainConfig, subsample, train

    train_rows = np.flatnonzero(digits.split == SPLITS["train"])
    # a real pool of 40 items beside the labels: the lever says how to spend its labels there
    data = hide_labels(ws, digits, train_rows[-40:])
    rows = np.flatnonzero(data.split == SPLITS["train"])
    recipe = TrainConfig(epochs=2, threads=1, max_train_samples=len(rows) // 2)
    base = train(new_model("mlp", data), data, recipe, progress=False)
    seen = rows[subsample(data.y[rows], recipe.max_train_samples, recipe.seed)]
    acc = lambda m, d: float((m.logits(d.subset("test")[0]).argmax(1) == d.subset("test")[1]).mean())  # noqa: E731
    out = label_lever(
        ws, data, base, recipe, budget=60, strategy="hybrid", share_s=600, base_train_s=0.5, test_accuracy=acc
    )
    chosen = load_dataset(ws, out["dataset_id"])
    labelled = np.flatnonzero(chosen.split == SPLITS["train"])
    picked = np.setdiff1d(labelled, seen)
    assert len(picked) == 60 and set(seen) <= set(labelled) and set(picked) <= set(rows) - set(seen)
    assert np.array_equal(chosen.y[picked], digits.y[picked])  # the held-back labels, as an oracle gives them
    assert (origins(chosen)[picked] == ORIGINS.index("import")).all()
    assert len(pool_rows(chosen)) == len(rows) - len(labelled) + 40  # the rest held back, the real pool as it was
    assert out["pool"]["unlabeled"] == 40 and "label suggest" in out["pool"]["next"]
    assert 0 <= out["test_accuracy"] <= 1 and 0 <= out["random_control_accuracy"] <= 1
    skipped = label_lever(
        ws, data, base, recipe, budget=60, strategy="margin", share_s=0.1, base_train_s=5.0, test_accuracy=acc
    )
    assert skipped["test_accuracy"] is None and "share" in skipped["skipped"]


def test_bad_input():
    with pytest.raises(BadInput, match="budget_minutes must be positive"):
        ImproveConfig(budget_minutes=0)
    with pytest.raises(BadInput, match="baseline_fraction"):
        ImproveConfig(baseline_fraction=1.0)
    with pytest.raises(BadInput, match="label strategy"):
        ImproveConfig(label_strategy="disagreement")


@pytest.mark.slow
def test_cli_prints_both_gains_and_the_curve(ws, digits):
    cmd = ["improve", "--data", "digits"]
    bad = dm(ws.root, *cmd, "--budget-minutes", "0", timeout=120)
    assert bad.returncode == 2 and "budget_minutes must be positive" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    ok = dm(ws.root, *cmd, "--budget-minutes", "0.02", "--epochs", "2", "--threads", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert {"gain", "test_accuracy"} <= set(out["levers"]["model"]) & set(out["levers"]["data"])
    assert len(out["curve"]) == 4


def test_the_model_lever_searches_a_space_that_holds_a_one_epoch_baseline(tmp_path, recwarn):
    from datamoat.data import import_digits
    from datamoat.train.improve import ImproveConfig, improve
    from datamoat.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    out = improve(ws, import_digits(ws), ImproveConfig(budget_minutes=0.05, arch="mlp", epochs=1))
    assert out["levers"]["model"]["trials"] >= 1
    assert not [w for w in recwarn if "out of range" in str(w.message)]  # optuna: the baseline was outside
