"""Label noise: does `find_issues` find flipped labels, and does fixing them pay?

On a fixed stratified subset of Fashion-MNIST's train split (with the full
val and the official test split), 10% of train labels are flipped uniformly
to another class (seeded). `find_issues` (K-fold out-of-fold probabilities
from cnn_small and cnn_medium, averaged, + cleanlab) flags suspects;
precision and recall are measured against the true flipped set. Then one
model config (cnn_small, the default recipe) is trained on the clean, noisy
and fixed versions (every flag relabelled to cleanlab's suggestion; every
flag dropped; confident suggestions relabelled and the rest dropped, the
headline) and on an oracle version that drops exactly the flips, and scored
on the test split. Recovery is (fixed - noisy) / (clean - noisy): the share
of the accuracy the noise cost that the fix won back. The noise costs about
0.8 points and one training's seed spread is about 0.15, so each training
repeats over SEEDS (the same seeds for every version) and the mean is
reported with the spread.

Scale with environment variables for a quick check, e.g.
``DM_LN_SAMPLES=6000 DM_LN_SEEDS=1 python bench/run.py labelnoise``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from datamoat.data import SPLITS, import_fashion_mnist, make_dataset
from datamoat.data.cleaning import find_issues, fixes_from_issues
from datamoat.data.versions import apply_fixes, diff, flip_labels
from datamoat.models import new_model
from datamoat.train import TrainConfig, subsample, train
from datamoat.workspace import Workspace

SAMPLES = int(os.environ.get("DM_LN_SAMPLES", 20_000))
NOISE = 0.10
FOLDS = int(os.environ.get("DM_LN_FOLDS", 4))
FOLD_EPOCHS = int(os.environ.get("DM_LN_FOLD_EPOCHS", 5))
EPOCHS = int(os.environ.get("DM_LN_EPOCHS", 3))  # TrainConfig's default recipe
FLIP_SEED = int(os.environ.get("DM_LN_FLIP_SEED", 0))  # which labels flip: another seed is a fresh test
SEEDS = int(os.environ.get("DM_LN_SEEDS", 8))  # the seed spread of one training is about a fifth of the noise cost
ENSEMBLE = tuple(a for a in os.environ.get("DM_LN_ENSEMBLE", "cnn_medium").split(",") if a)
THREADS = int(os.environ.get("DM_LN_THREADS", 0))
DROP_BELOW = 0.9  # the headline fix: relabel confident suggestions, drop doubtful ones
ARCH = "cnn_small"
HEADLINE = "fixed: relabel >= 0.9, drop rest"


def test_accuracy(data, seed: int) -> float:
    """Train ARCH with the default recipe on `data`; accuracy on the test split."""
    cfg = TrainConfig(epochs=EPOCHS, seed=seed, threads=THREADS)
    m = train(new_model(ARCH, data, seed=seed), data, cfg, progress=False)
    x, y = data.subset("test")
    return float((m.logits(x).argmax(1) == y).mean())


def main() -> dict:
    t_start = time.perf_counter()
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-labelnoise-"))
    full = import_fashion_mnist(ws)
    # One fixed subset for every variant: subsample the train split, keep val and test whole.
    train_idx = np.flatnonzero(full.split == SPLITS["train"])
    keep = np.sort(np.r_[train_idx[subsample(full.y[train_idx], SAMPLES, 0)], np.flatnonzero(full.split != 0)])
    clean = make_dataset(ws, full.x[keep], full.y[keep], full.classes, name=f"fashion-mnist-{SAMPLES}",
                         source={"kind": "subset", "of": full.id, "train_samples": SAMPLES},
                         split=full.split[keep], parent_id=full.id)  # fmt: skip
    noisy, flipped = flip_labels(ws, clean, NOISE, seed=FLIP_SEED)

    t0 = time.perf_counter()
    issues = find_issues(noisy, folds=FOLDS, epochs=FOLD_EPOCHS, arch=ARCH, ensemble=ENSEMBLE, seed=0, threads=THREADS)
    find_s = time.perf_counter() - t0
    flagged = issues.flagged
    true = set(flipped.tolist())
    hits = [i for i in flagged.tolist() if i in true]
    precision = len(hits) / max(len(flagged), 1)
    recall = len(hits) / len(true)
    # Of the true flips that were caught, how often is the suggestion the original label?
    suggested = {d["index"]: d["suggested_label"] for d in issues.label_issues}
    restored = float(np.mean([suggested[i] == clean.y[i] for i in hits])) if hits else 0.0

    keep_above = round(2 * len(flagged) / len(issues.examined) / (clean.num_classes - 1), 3)
    variants = {
        "clean": clean,
        "noisy": noisy,
        # The ceiling of any drop-only fix: a perfect detector that drops exactly the flips.
        "oracle: drop exactly the flips": apply_fixes(
            ws, noisy, [{"index": int(i), "drop": True} for i in flipped], name="oracle"
        ),  # fmt: skip
        "fixed: relabel all flags": apply_fixes(ws, noisy, fixes_from_issues(issues), name="relabel"),
        "fixed: drop all flags": apply_fixes(ws, noisy, fixes_from_issues(issues, drop=True), name="drop"),
        HEADLINE: apply_fixes(ws, noisy, fixes_from_issues(issues, drop_below=DROP_BELOW), name="mixed"),
        # Hard but correct samples are most of the false flags, and dropping them shifts the boundary between
        # the classes they sit between. Leave a flag alone when its given label keeps more than twice the
        # probability that noise alone would give a wrong label: 2 * (flagged share) / (classes - 1).
        f"fixed: relabel >= 0.9, drop rest, keep p(given) >= {keep_above:.3f}": apply_fixes(
            ws, noisy, fixes_from_issues(issues, drop_below=DROP_BELOW, keep_above=keep_above), name="plausible"
        ),
    }
    # Train labels that differ from the original ones (versions only relabel or drop).
    wrong = {k: diff(ws, clean, ds)["splits"]["train"]["relabelled"] for k, ds in variants.items()}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    t0 = time.perf_counter()
    for seed in range(SEEDS):
        for k, ds in variants.items():
            acc[k].append(test_accuracy(ds, seed))
    train_s = time.perf_counter() - t0
    mean = {k: statistics.mean(v) for k, v in acc.items()}
    cost = mean["clean"] - mean["noisy"]

    def recovery(k: str) -> float | None:
        return (mean[k] - mean["noisy"]) / cost if cost > 0 else None

    def spread(k: str) -> float | None:
        """Std over seeds of the per-seed recovery (each seed is paired: same init for every version)."""
        per = [(f - n) / (c - n) for f, n, c in zip(acc[k], acc["noisy"], acc["clean"]) if c > n]
        return statistics.stdev(per) if len(per) > 1 else None

    fixes = [k for k in variants if k.startswith(("fixed", "oracle"))]
    rows = []
    for k, ds in variants.items():
        rec = recovery(k) if k in fixes else None
        sd = spread(k) if k in fixes else None
        rows.append({"version": k, "train_samples": int((ds.split == 0).sum()), "wrong_labels": wrong[k],
                     "test_accuracy": mean[k], "per_seed": ", ".join(f"{a:.4f}" for a in acc[k]),
                     "recovered": "" if rec is None else f"{rec:.2f}" + ("" if sd is None else f" ± {sd:.2f}")})  # fmt: skip
    best_fix = max((k for k in fixes if k.startswith("fixed")), key=lambda k: mean[k])
    rec_head = recovery(HEADLINE)
    summary = {
        "precision": precision, "recall": recall, "flagged": int(len(flagged)), "flipped": len(true),
        "suggestion_restores_true_label": restored, "oof_accuracy": issues.to_dict()["oof_accuracy"],
        "noise_cost": cost, "recovery": {k: recovery(k) for k in fixes}, "recovery_sd": {k: spread(k) for k in fixes},
        "headline_fix": HEADLINE, "better_fix": best_fix,
        "targets": {"precision": 0.8, "recall": 0.8, "recovery": 0.5},
        "met": precision >= 0.8 and recall >= 0.8 and rec_head is not None and rec_head >= 0.5,
        "find_issues_s": round(find_s, 1), "train_s": round(train_s, 1),
        "setup": {"train_samples": SAMPLES, "noise": NOISE, "flip_seed": FLIP_SEED, "folds": FOLDS, "fold_epochs": FOLD_EPOCHS,
                  "arch": ARCH, "ensemble": list(ENSEMBLE), "epochs": EPOCHS, "seeds": SEEDS,
                  "drop_below": DROP_BELOW},
    }  # fmt: skip
    notes = [
        f"Fashion-MNIST, a stratified {SAMPLES}-image subset of the train split (val {int((clean.split == 1).sum())}, "
        f"official test {int((clean.split == 2).sum())}); {NOISE:.0%} of train labels flipped uniformly to another "
        f"class (seed {FLIP_SEED}): {len(true)} flips.",
        f"find_issues: {FOLDS}-fold out-of-fold probabilities from {' + '.join((ARCH, *ENSEMBLE))} "
        f"({FOLD_EPOCHS} epochs per fold, averaged; `datamoat data issues --folds {FOLDS} --arch {ARCH}"
        + "".join(f" --ensemble {a}" for a in ENSEMBLE)
        + "`), "
        f"cleanlab {issues.config['filter_by']}; {len(flagged)} flagged, precision {precision:.3f}, recall "
        f"{recall:.3f} (targets 0.8 and 0.8); for {restored:.1%} of the caught flips the suggested label is the "
        f"original one. {find_s:.0f}s.",
        f"Then {ARCH} with the default recipe ({EPOCHS} epochs, one-cycle) trained on each version, mean of {SEEDS} "
        f"seeds (the same seeds for every version); the noise cost {cost * 100:.2f} points of test accuracy. "
        "Recovered = (fixed - noisy) / (clean - noisy), ± the std of the per-seed ratio (its standard error is "
        f"that over √{SEEDS}); target 0.5. The oracle row drops exactly the flipped samples: the most any drop-only "
        "fix could win back. "
        "wrong_labels counts train labels that differ from the original ones.",
        f"Headline fix ({HEADLINE}): relabel a flag to cleanlab's suggestion when the out-of-fold model gives it "
        f"probability >= {DROP_BELOW}, drop it otherwise (`datamoat data fix --from ISSUES --drop-below {DROP_BELOW}`). "
        "Relabelling every flag also rewrites the confusable but correct samples (shirt / T-shirt, pullover / coat) "
        "to the model's own guess, a class-pair bias that hurts more per label than uniform noise; dropping every "
        "flag removes that bias but also a tenth of the data. Confident suggestions are nearly always the original "
        f"label, so the mix keeps most images and most corrections. Best measured here: {best_fix}.",
        f"Total {time.perf_counter() - t_start:.0f}s.",
    ]
    return {
        "title": "Label noise: flag flipped labels with cleanlab and recover the accuracy they cost",
        "columns": ["version", "train_samples", "wrong_labels", "test_accuracy", "per_seed", "recovered"],
        "rows": rows,
        "summary": summary,
        "notes": notes,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
