"""Label cleaning: out-of-fold cleanlab flags, near duplicates, outliers, and the CLI."""

import json

import numpy as np
import pytest
from dmtest import dm, dm_ok

from datamoat.cli.datalever import _read_fixes
from datamoat.data import SPLITS, import_digits, load_dataset
from datamoat.data.versions import apply_fixes, flip_labels, merge
from datamoat.errors import BadInput, DatamoatError
from datamoat.train.cleaning import (
    RECOMMENDED,
    CleaningConfig,
    find_issues,
    fixes_from_issues,
    near_duplicates,
    plausible_threshold,
)
from datamoat.workspace import Workspace

# Measured on digits with 10% flips (seed 0), mlp, 3 folds of 20 epochs: precision 1.00, recall 0.80.
FAST = {"arch": "mlp", "folds": 3, "epochs": 20, "seed": 0, "threads": 1}


def test_find_issues_flags_flipped_labels_on_digits(ws, digits):
    noisy, flipped = flip_labels(ws, digits, 0.1, seed=0)
    issues = find_issues(noisy, **FAST)
    flagged = set(issues.flagged.tolist())
    hits = flagged & set(flipped.tolist())
    precision, recall = len(hits) / len(flagged), len(hits) / len(flipped)
    assert precision >= 0.85 and recall >= 0.65, (precision, recall)
    x_train, y_train = noisy.subset("train")
    qualities = [i["quality"] for i in issues.label_issues]
    assert qualities == sorted(qualities)  # ranked: least likely label first
    for i in issues.label_issues:
        assert i["given_label"] == noisy.y[i["index"]] == y_train[i["train_index"]]
        assert np.array_equal(x_train[i["train_index"]], noisy.x[i["index"]])
        assert i["suggested_label"] != i["given_label"] and i["given_class"] == noisy.classes[i["given_label"]]
    # The suggestion restores the original label for most of the caught flips.
    suggested = {i["index"]: i["suggested_label"] for i in issues.label_issues}
    assert np.mean([suggested[i] == digits.y[i] for i in hits]) >= 0.9
    assert len(issues.examined) == (noisy.split == SPLITS["train"]).sum() == len(issues.pred_probs)
    assert np.allclose(issues.pred_probs.sum(1), 1, atol=1e-4)
    d = issues.to_dict()
    assert 0.7 < d["oof_accuracy"] < 0.95 and d["config"]["folds"] == 3
    assert len(d["outliers"]) == round(0.01 * len(issues.examined))
    json.dumps(d)  # the issues file is plain JSON
    # Each issue, read from the columns, is what the out-of-fold probabilities say.
    pos = {int(g): k for k, g in enumerate(issues.examined)}
    for i in issues.label_issues:
        p = issues.pred_probs[pos[i["index"]]].astype(np.float64)
        others = np.where(np.arange(len(p)) == i["given_label"], -1.0, p)
        assert i["suggested_label"] == int(others.argmax()) and i["confidence"] == round(float(others.max()), 6)
        assert i["quality"] == round(float(p[i["given_label"]]), 6)
    assert [i["rank"] for i in d["label_issues"]] == list(range(len(issues.label_issues)))
    assert issues.label_issues[-1] == d["label_issues"][-1] and issues.label_issues[1:3] == d["label_issues"][1:3]
    path = ws.root / "issues.json"
    issues.write_json(path)  # streamed an issue at a time: the same document
    assert json.loads(path.read_text()) == json.loads(json.dumps(d))
    assert issues.summary()["counts"] == {k: len(d[k]) for k in ("label_issues", "near_duplicates", "outliers")}
    fixed = apply_fixes(ws, noisy, fixes_from_issues(issues))
    assert (fixed.y != digits.y).sum() < (noisy.y != digits.y).sum() / 2  # most of the noise is gone
    assert load_dataset(ws, noisy.id).y.tolist() == noisy.y.tolist()


def test_near_duplicates_find_injected_twins_with_conflicting_labels(ws, digits):
    train = np.flatnonzero(digits.split == SPLITS["train"])
    a, b = int(train[0]), int(train[1])
    exact = digits.x[a : a + 1]
    rng = np.random.default_rng(0)
    jitter = np.clip(digits.x[b : b + 1].astype(int) + rng.integers(-3, 4, (1, 1, 8, 8)), 0, 255).astype(np.uint8)
    wrong = [(int(digits.y[a]) + 1) % 10, (int(digits.y[b]) + 1) % 10]
    dup = merge(ws, digits, np.concatenate([exact, jitter]), np.array(wrong), name="dup", source={})
    n = len(digits.y)
    pairs = near_duplicates(dup, np.flatnonzero(dup.split == SPLITS["train"]), 0.99, 5000)
    found = {(p["a"], p["b"]): p for p in pairs}
    assert found[(a, n)]["exact"] and found[(a, n)]["conflict"]
    assert not found[(b, n + 1)]["exact"] and found[(b, n + 1)]["conflict"]
    assert found[(b, n + 1)]["similarity"] >= 0.99
    assert {(p["a"], p["b"]) for p in pairs[:2]} == {(a, n), (b, n + 1)}  # conflicts rank first
    assert near_duplicates(digits, train, 0.99, 5000) == []  # none in the clean data at this threshold


def test_fixes_from_issues_filters_by_confidence_and_drops():
    doc = {
        "label_issues": [
            {"index": 4, "suggested_label": 1, "confidence": 0.9},
            {"index": 8, "suggested_label": 2, "confidence": 0.4},
        ]
    }
    assert fixes_from_issues(doc, min_confidence=0.5) == [{"index": 4, "new_label": 1}]
    assert fixes_from_issues(doc, drop=True) == [{"index": 4, "drop": True}, {"index": 8, "drop": True}]
    assert fixes_from_issues(doc, drop_below=0.5) == [{"index": 4, "new_label": 1}, {"index": 8, "drop": True}]
    with pytest.raises(BadInput, match="label_issues"):
        fixes_from_issues({"oops": []})


def test_keep_above_leaves_flags_whose_given_label_is_still_plausible():
    doc = {
        "label_issues": [
            {"index": 1, "suggested_label": 3, "confidence": 0.95, "quality": 0.01},
            {"index": 2, "suggested_label": 3, "confidence": 0.95, "quality": 0.06},
            {"index": 3, "suggested_label": 0, "confidence": 0.50, "quality": 0.04},
        ]
    }
    assert fixes_from_issues(doc, drop=True, keep_above=0.05) == [
        {"index": 1, "drop": True},
        {"index": 3, "drop": True},
    ]
    assert fixes_from_issues(doc, drop_below=0.9, keep_above=0.03) == [{"index": 1, "new_label": 3}]
    assert len(fixes_from_issues(doc, drop=True)) == 3  # 0: off


def test_keep_above_auto_is_twice_the_uniform_noise_share_per_wrong_class():
    issues = [
        {"index": i, "suggested_label": 1, "confidence": 0.8, "quality": q}
        for i, q in enumerate([0.001, 0.01, 0.019, 0.021, 0.03])
    ]
    doc = {"examined": 50, "num_classes": 11, "label_issues": issues}
    assert plausible_threshold(doc) == 0.02  # 2 * (5 / 50) / 10
    auto = fixes_from_issues(doc, keep_above="auto", drop_below=0.9)
    assert auto == fixes_from_issues(doc, keep_above=0.02, drop_below=0.9)
    assert auto == [{"index": 0, "drop": True}, {"index": 1, "drop": True}, {"index": 2, "drop": True}]
    assert fixes_from_issues(doc, **RECOMMENDED) == [{"index": i, "new_label": 1} for i in range(3)]
    with pytest.raises(BadInput, match="num_classes"):
        fixes_from_issues({"label_issues": issues}, keep_above="auto")  # an issues file from before it was recorded
    with pytest.raises(BadInput, match="'auto'"):
        fixes_from_issues(doc, keep_above="sometimes")


def test_ensemble_averages_each_architectures_out_of_fold_probabilities(ws, digits):
    noisy, _ = flip_labels(ws, digits, 0.1, seed=0)
    fast = {**FAST, "epochs": 4, "max_duplicate_samples": 0, "outlier_fraction": 0.0}
    mlp = find_issues(noisy, **fast)
    cnn = find_issues(noisy, **{**fast, "arch": "cnn_small"})
    both = find_issues(noisy, **{**fast, "ensemble": ("cnn_small",)})
    assert np.array_equal(both.examined, mlp.examined)
    assert np.allclose(both.pred_probs, (mlp.pred_probs + cnn.pred_probs) / 2, atol=1e-6)
    assert not np.allclose(mlp.pred_probs, cnn.pred_probs, atol=1e-3)  # two real opinions, not one twice
    assert json.loads(json.dumps(both.to_dict()))["config"]["ensemble"] == ["cnn_small"]  # recorded with the issues


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("folds", 1, "folds"),
        ("epochs", 0, "epochs"),
        ("arch", "vit", "architecture"),
        ("filter_by", "magic", "filter_by"),
        ("ensemble", ("vit",), "ensemble architecture"),
        ("ensemble", ("cnn_small",), "repeats"),
    ],
)
def test_cleaning_config_rejects_bad_values(field, value, match):
    with pytest.raises(BadInput, match=match):
        CleaningConfig(**{field: value})


def test_cleaning_config_takes_the_zoos_architectures_and_the_trainers_augmentations():
    from datamoat.data.transforms import AUGMENTATIONS
    from datamoat.models.zoo import ARCHS

    assert [CleaningConfig(arch=a).arch for a in ARCHS] == list(ARCHS)
    assert [CleaningConfig(augment=a).augment for a in AUGMENTATIONS] == list(AUGMENTATIONS)
    with pytest.raises(BadInput, match="choose one of " + ", ".join(ARCHS) + "$"):
        CleaningConfig(arch="vit")
    with pytest.raises(BadInput, match="choose one of " + ", ".join(AUGMENTATIONS) + "$"):
        CleaningConfig(augment="rotate")


def test_find_issues_needs_enough_samples_per_fold(ws, digits):
    with pytest.raises(BadInput, match="folds"):
        find_issues(digits, folds=500, epochs=1)


@pytest.mark.slow
def test_cli_issues_then_fix_then_diff(tmp_path):
    home = tmp_path / "ws"
    ws = Workspace.init(home)
    noisy, flipped = flip_labels(ws, import_digits(ws), 0.1, seed=0)
    issues_file = tmp_path / "issues.json"
    args = ["--folds", "3", "--epochs", "20", "--arch", "mlp", "--threads", "1", "--top", "5"]
    out = json.loads(dm_ok(home, "data", "issues", noisy.id, *args, "--json", "-o", str(issues_file)).stdout)
    full = json.loads(issues_file.read_text())
    assert out["dataset_id"] == full["dataset_id"] == noisy.id
    assert len(out["label_issues"]) == 5 and out["counts"]["label_issues"] == len(full["label_issues"]) > 80
    assert out["label_issues"] == full["label_issues"][:5]
    fix = json.loads(dm_ok(home, "data", "fix", noisy.id, "--from", str(issues_file), "--json").stdout)
    assert fix["parent_id"] == noisy.id and fix["diff"]["relabelled"] == len(full["label_issues"])
    fixed = load_dataset(Workspace.open(home), fix["dataset_id"])
    assert (fixed.y != load_dataset(ws, "digits").y).sum() < len(flipped) / 2
    d = json.loads(dm_ok(home, "data", "diff", noisy.id, fix["dataset_id"], "--json").stdout)
    assert d["totals"]["relabelled"] == fix["diff"]["relabelled"] and d["totals"]["added"] == 0
    drop = json.loads(
        dm_ok(
            home, "data", "fix", noisy.id, "--from", str(issues_file), "--drop", "--min-confidence", "0.9", "--json"
        ).stdout
    )
    kept = sum(i["confidence"] >= 0.9 for i in full["label_issues"])
    assert drop["diff"]["removed"] == kept and drop["diff"]["relabelled"] == 0
    some = json.loads(
        dm_ok(
            home,
            "data",
            "fix",
            noisy.id,
            "--from",
            str(issues_file),
            "--drop",
            "--keep-above",
            "0.02",
            "--name",
            "keep",
            "--json",
        ).stdout
    )
    assert some["diff"]["removed"] == sum(i["quality"] < 0.02 for i in full["label_issues"]) < len(full["label_issues"])
    rec = json.loads(
        dm_ok(
            home,
            "data",
            "fix",
            noisy.id,
            "--from",
            str(issues_file),
            "--keep-above",
            "auto",
            "--drop-below",
            "0.7",
            "--name",
            "rec",
            "--json",
        ).stdout
    )
    want = fixes_from_issues(full, **RECOMMENDED)
    assert rec["fixes"] == len(want) < len(full["label_issues"])
    assert rec["left_alone"] == len(full["label_issues"]) - len(want) > 0 and fix["left_alone"] == 0
    assert rec["diff"]["removed"] == sum("drop" in f for f in want)
    recorded = Workspace.open(home).resolve("datasets", rec["dataset_id"])["source"]["from"]
    assert recorded["keep_above"] == rec["keep_above"] == plausible_threshold(full) > 0  # the number, not "auto"
    assert load_dataset(Workspace.open(home), noisy.id).y.tolist() == noisy.y.tolist()
    text = dm_ok(home, "data", "diff", noisy.id, fix["dataset_id"]).stdout
    assert "relabelled" in text and "train" in text
    shifted = tmp_path / "shifted.json"
    text = dm_ok(home, "data", "issues", noisy.id, *args, "--augment", "crop", "-o", str(shifted)).stdout
    assert "likely label errors" in text and "outliers" in text
    assert full["config"]["augment"] == "none" and json.loads(shifted.read_text())["config"]["augment"] == "crop"


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    home = tmp_path / "ws"
    import_digits(Workspace.init(home))
    bad_fixes = tmp_path / "fixes.json"
    bad_fixes.write_text(json.dumps({"fixes": [{"index": 99999, "new_label": 1}]}))
    cases = [
        (("data", "issues", "digits", "--folds", "1"), "folds"),
        (("data", "issues", "no-such-data"), "unknown dataset"),
        (("data", "issues", "digits", "--ensemble", "vit"), "ensemble architecture"),
        (("data", "issues", "digits", "--augment", "rotate"), "augmentation"),
        (("data", "fix", "digits", "--from", str(bad_fixes), "--keep-above", "2"), "--keep-above"),
        (("data", "fix", "digits", "--from", str(bad_fixes), "--keep-above", "most"), "--keep-above"),
        (("data", "fix", "digits", "--from", str(bad_fixes)), "index 99999"),
    ]
    for args, match in cases:
        proc = dm(home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    assert len(Workspace.open(home).rows("datasets")) == 1


def test_issues_file_errors_name_the_fix(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"dataset_id": "not-this-one", "label_issues": []}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    for path, match in [(other, "not-this-one"), (garbage, "not valid JSON"), (tmp_path / "no.json", "does not exist")]:
        with pytest.raises(DatamoatError, match=match):
            _read_fixes(path, "abc", drop=False, min_confidence=0.0)


def test_issues_pass_the_unlabeled_pool_by(ws, digits):
    from datamoat.data.pool import pool_rows, with_pool

    train = np.flatnonzero(digits.split == SPLITS["train"])
    pooled = with_pool(ws, digits, np.concatenate([digits.x[train[:1]], 255 - digits.x[:20]]))
    issues = find_issues(pooled, folds=2, epochs=1, arch="mlp", threads=1, outlier_fraction=0.05)
    assert issues.examined.tolist() == train.tolist()  # only labelled train rows are judged
    pool = set(pool_rows(pooled).tolist())
    assert not pool & {i["index"] for i in issues.label_issues} and not pool & {o["index"] for o in issues.outliers}
    twin = [p for p in issues.near_duplicates if p["b"] == len(digits.y)]  # the pool's copy of a train image
    assert twin and twin[0]["exact"] and not twin[0]["conflict"] and twin[0]["splits"] == ["train", "pool"]
