"""Label noise: does `find_issues` find flipped labels, and does fixing them pay?

Detection first: with `data issues`' defaults (CleaningConfig()), precision
and recall against the true flips under uniform noise and under
class-conditional noise between confusable pairs (PAIRS), the way real label
errors concentrate (Northcutt et al. 2021), for each of SCENARIOS.

Recovery then (DM_LN_RECOVERY=0 skips it, an hour on 2 cores). On a fixed stratified subset of Fashion-MNIST's train split (with the full
val and the official test split), 10% of train labels are flipped uniformly
to another class, once per FLIP_SEEDS draw. On each draw `find_issues`
(K-fold out-of-fold probabilities from cnn_small and cnn_medium trained
with random shifts, averaged, + cleanlab) flags suspects, and precision
and recall are measured against the true flipped set. Then one model
config (cnn_small, the default recipe) is trained on the clean, noisy and
fixed versions and on an oracle version that drops exactly the flips, and
scored on the test split. Recovery is
(fixed - noisy) / (clean - noisy): the share of the accuracy the noise cost
that the fix won back.

The noise costs under a point and one training's seed spread is about 0.15,
so each training repeats over SEEDS (the same seeds for every version), and
the verdict pools every flip draw: sum of gains / sum of costs, with a
bootstrap interval over the (draw, seed) pairs. Each draw's own recovery is
reported beside it.

Scale with environment variables for a quick check, e.g.
``DM_LN_SAMPLES=6000 DM_LN_SEEDS=1 DM_LN_FLIP_SEEDS=0 DM_LN_SCENARIOS=pairs:0.2:0:tuned python bench/run.py
labelnoise``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import numpy as np

from datamoat.data import SPLITS, import_fashion_mnist, make_dataset
from datamoat.data.versions import apply_fixes, diff, flip_labels
from datamoat.models import new_model
from datamoat.train.cleaning import (
    FILTERS,
    RECOMMENDED,
    CleaningConfig,
    find_issues,
    fixes_from_issues,
    plausible_threshold,
)
from datamoat.train.loop import TrainConfig, subsample, train
from datamoat.workspace import Workspace

SAMPLES = int(os.environ.get("DM_LN_SAMPLES", 20_000))
NOISE = 0.10
FOLDS = int(os.environ.get("DM_LN_FOLDS", 4))
# Fold models trained with random shifts for twice the epochs, chosen on draws 0 and 1: there the fix left fewer
# wrong labels than with 5 epochs without shifts and won back 0.54 on average instead of 0.42. Draws 2-4 were their
# unseen test (issue 6's notes). DM_LN_FOLD_EPOCHS=5 DM_LN_FOLD_AUGMENT=none reproduces the earlier table.
FOLD_EPOCHS = int(os.environ.get("DM_LN_FOLD_EPOCHS", 10))
FOLD_AUGMENT = os.environ.get("DM_LN_FOLD_AUGMENT", "crop")
EPOCHS = int(os.environ.get("DM_LN_EPOCHS", 3))  # TrainConfig's default recipe
# Which labels flip. Each draw is a fresh test of the same fix; the fix was chosen on draws 0 and 1, draw 2
# was its first unseen test, and draws 3 and 4 were added unseen to narrow the interval (issue 6's notes).
FLIP_SEEDS = [int(s) for s in os.environ.get("DM_LN_FLIP_SEEDS", "0,1,2,3,4").split(",") if s]
SEEDS = int(os.environ.get("DM_LN_SEEDS", 8))  # the seed spread of one training is about a fifth of the noise cost
ENSEMBLE = tuple(a for a in os.environ.get("DM_LN_ENSEMBLE", "cnn_medium").split(",") if a)
THREADS = int(os.environ.get("DM_LN_THREADS", 0))
# Detection with `data issues`' defaults (CleaningConfig()) on uniform and class-conditional noise. The pairs
# are a fixed list of the classes Fashion-MNIST's models confuse most; the notes check it against the confusion
# of the out-of-fold predictions on the first scenario. Each scenario is pattern:rate:flip seed:role, where role
# says whether the defaults were chosen looking at it ("tuning") or not ("unseen"). The defaults were left as
# they were (the README says why: no setting tried met 0.8 on pairs and kept uniform), so every row is unseen.
PAIRS = ((0, 6), (2, 4), (5, 7), (7, 9))  # T-shirt/top-Shirt, Pullover-Coat, Sandal-Sneaker, Sneaker-Ankle boot
SCENARIOS = [
    tuple(sc.split(":"))
    for sc in os.environ.get(
        "DM_LN_SCENARIOS",
        "uniform:0.1:0:unseen,uniform:0.1:1:unseen,pairs:0.1:0:unseen,pairs:0.2:0:unseen,"
        "pairs:0.2:1:unseen,pairs:0.15:2:unseen",
    ).split(",")
    if sc
]
# CleaningConfig fields laid over the defaults for the detection table, as JSON, to try other settings in a
# tagged run (DATAMOAT_BENCH_TAG) beside the defaults' table, e.g. DM_LN_DETECT='{"epochs": 10}'.
DETECT = json.loads(os.environ.get("DM_LN_DETECT", "{}"))
# The recovery part (train on clean, noisy and fixed versions over SEEDS) takes about an hour; 0 skips it.
RECOVERY = os.environ.get("DM_LN_RECOVERY", "1") != "0"
ARCH = "cnn_small"
HEADLINE = "fixed: recommended"
FIXES = ("oracle: drop exactly the flips", "fixed: relabel all flags", "fixed: drop all flags", HEADLINE)


def test_accuracy(data, seed: int) -> float:
    """Train ARCH with the default recipe on `data`; accuracy on the test split."""
    cfg = TrainConfig(epochs=EPOCHS, seed=seed, threads=THREADS)
    m = train(new_model(ARCH, data, seed=seed), data, cfg, progress=False)
    x, y = data.subset("test")
    return float((m.logits(x).argmax(1) == y).mean())


def pooled(gains: np.ndarray, costs: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Sum of gains / sum of costs over (draw, seed) pairs, and a 90% bootstrap interval over the pairs."""
    idx = rng.integers(0, len(gains), size=(2000, len(gains)))
    boot = gains[idx].sum(1) / costs[idx].sum(1)
    return float(gains.sum() / costs.sum()), float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))


def other_filters(issues, true: set[int]) -> dict[str, list[float]]:
    """Precision and recall every cleanlab filter would give on the same out-of-fold probabilities, and, per
    ranking, both at the flag count that equals the number of flips (the ranking's quality, not the count's)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    is_flip = np.isin(issues.examined, list(true))
    out = {}
    for fb in FILTERS:
        m = find_label_issues(issues.labels, issues.pred_probs, filter_by=fb, n_jobs=1)
        out[fb] = [
            round(float((m & is_flip).sum() / max(m.sum(), 1)), 3),
            round(float((m & is_flip).sum() / len(true)), 3),
        ]
    for method in ("self_confidence", "normalized_margin"):
        q = get_label_quality_scores(issues.labels, issues.pred_probs, method=method)
        out[f"lowest {method}, as many as flips"] = [round(float(is_flip[np.argsort(q)[: len(true)]].mean()), 3)] * 2
    return out


def detection(ws: Workspace, clean) -> tuple[list[dict], list[str], dict, float]:
    """Precision and recall of `find_issues` with CleaningConfig's defaults on each of SCENARIOS."""
    rows, top_pairs, others, t0 = [], [], {}, time.perf_counter()
    for pattern, rate, seed, role in SCENARIOS:
        pairs = PAIRS if pattern == "pairs" else None
        noisy, flipped = flip_labels(ws, clean, float(rate), seed=int(seed), pairs=pairs)
        t1 = time.perf_counter()
        issues = find_issues(noisy, CleaningConfig(threads=THREADS, **DETECT))
        flagged, true = set(issues.flagged.tolist()), set(flipped.tolist())
        hits = len(flagged & true)
        precision, recall = hits / max(len(flagged), 1), hits / len(true)
        rows.append(
            {
                "noise": pattern,
                "rate": f"{float(rate):.0%} of " + ("the paired classes" if pairs else "all classes"),
                "pairs": ", ".join(f"{clean.classes[a]}-{clean.classes[b]}" for a, b in PAIRS) if pairs else "",
                "draw": int(seed),
                "role": role,
                "flipped": len(true),
                "flagged": len(flagged),
                "precision": round(precision, 3),
                "recall": round(recall, 3),
                "meets 0.8": "yes" if min(precision, recall) >= 0.8 else "no",
                "oof_accuracy": issues.to_dict()["oof_accuracy"],
                "seconds": round(time.perf_counter() - t1),
            }
        )
        others[len(rows) - 1] = other_filters(issues, true)
        if not top_pairs:
            # Which pairs does a model confuse? Out-of-fold predictions against the true labels of unflipped samples.
            ok = ~np.isin(issues.examined, flipped)
            conf = np.zeros((clean.num_classes,) * 2, dtype=np.int64)
            np.add.at(conf, (clean.y[issues.examined[ok]], issues.pred_probs[ok].argmax(1)), 1)
            sym = np.triu(conf + conf.T, 1)
            for flat in np.argsort(sym, axis=None)[::-1][:6]:
                a, b = np.unravel_index(flat, sym.shape)
                top_pairs.append(f"{clean.classes[a]}-{clean.classes[b]} ({sym[a, b]})")
    return rows, top_pairs, others, time.perf_counter() - t0


def main() -> dict:
    t_start = time.perf_counter()
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-labelnoise-"))
    full = import_fashion_mnist(ws)
    # One fixed subset for every variant: subsample the train split, keep val and test whole.
    train_idx = np.flatnonzero(full.split == SPLITS["train"])
    keep = np.sort(np.r_[train_idx[subsample(full.y[train_idx], SAMPLES, 0)], np.flatnonzero(full.split != 0)])
    clean = make_dataset(
        ws,
        full.x[keep],
        full.y[keep],
        full.classes,
        name=f"fashion-mnist-{SAMPLES}",
        source={"kind": "subset", "of": full.id, "train_samples": SAMPLES},
        split=full.split[keep],
        parent_id=full.id,
    )
    det_rows, top_pairs, others, det_s = detection(ws, clean)
    worst = {k: min(r[k] for r in det_rows) for k in ("precision", "recall")}
    det_notes = [
        f"Detection: `datamoat data issues` with {'these settings' if DETECT else 'its defaults'} "
        f"({CleaningConfig(**DETECT).to_dict()}), on the same "
        f"{SAMPLES}-image subset. Uniform noise flips a share of all train labels to any other class; pair noise "
        f"flips that share of each paired class's train labels to a partner (Sneaker's partners are Sandal and "
        f"Ankle boot, half each), a fixed list. The model's most confused pairs (out-of-fold predictions against "
        f"the true labels of unflipped samples, first scenario, both directions): {', '.join(top_pairs)}. "
        "role 'tuning': the defaults were chosen looking at the row; 'unseen': they were not. Target: precision "
        f"and recall >= 0.8 on every row. {det_s:.0f}s in all.",
        "Other cleanlab filters on the same out-of-fold probabilities (JSON: summary.detection.other_filters), the "
        "best by the lower of precision and recall, and how precise the lowest-self-confidence ranking is when it "
        "flags exactly as many as were flipped: "
        + "; ".join(
            f"{r['noise']} {r['rate'].split()[0]} draw {r['draw']}: {best} {others[i][best][0]:.3f}/"
            f"{others[i][best][1]:.3f}, ranking {others[i]['lowest self_confidence, as many as flips'][0]:.3f}"
            for i, r in enumerate(det_rows)
            for best in [max(FILTERS, key=lambda f, i=i: min(others[i][f]))]
        )
        + ".",
    ]
    detect = {
        "title": f"Label noise: detection with data issues' {'settings ' + str(DETECT) if DETECT else 'defaults'}, "
        "uniform and confusable-pair noise",
        "columns": list(det_rows[0]),
        "rows": det_rows,
    }
    det_summary = {
        "rows": det_rows,
        "worst": worst,
        "met": min(worst.values()) >= 0.8,
        "pairs": PAIRS,
        "other_filters": others,  # per row: [precision, recall] on the same probabilities
    }
    if not RECOVERY:
        det_notes.append(f"Recovery part skipped (DM_LN_RECOVERY=0). Total {time.perf_counter() - t_start:.0f}s.")
        return {**detect, "summary": {"detection": det_summary}, "notes": det_notes}
    t0 = time.perf_counter()
    clean_acc = [test_accuracy(clean, s) for s in range(SEEDS)]
    train_s = time.perf_counter() - t0
    rows = [
        {
            "flips": "",
            "version": "clean",
            "train_samples": int((clean.split == 0).sum()),
            "wrong_labels": 0,
            "test_accuracy": statistics.mean(clean_acc),
            "per_seed": ", ".join(f"{a:.4f}" for a in clean_acc),
            "recovered": "",
        }
    ]
    draws, gains, costs, find_s = [], {k: [] for k in FIXES}, [], 0.0
    for fs in FLIP_SEEDS:
        noisy, flipped = flip_labels(ws, clean, NOISE, seed=fs)
        t0 = time.perf_counter()
        issues = find_issues(
            noisy,
            folds=FOLDS,
            epochs=FOLD_EPOCHS,
            augment=FOLD_AUGMENT,
            arch=ARCH,
            ensemble=ENSEMBLE,
            seed=0,
            threads=THREADS,
        )
        find_s += time.perf_counter() - t0
        flagged = issues.flagged
        true = set(flipped.tolist())
        hits = [i for i in flagged.tolist() if i in true]
        suggested = {d["index"]: d["suggested_label"] for d in issues.label_issues}
        fixes = fixes_from_issues(issues, **RECOMMENDED)
        # Where the headline fix leaves or puts wrong labels: counted against the true flips.
        by_index = {f["index"]: f for f in fixes}
        flips_seen = [by_index.get(i) for i in hits]
        wrong_after = {
            "flips_missed": len(true) - len(hits),
            "flips_kept": sum(f is None for f in flips_seen),
            "flips_relabelled_wrong": sum(
                int(f is not None and "new_label" in f and f["new_label"] != clean.y[i])
                for i, f in zip(hits, flips_seen)
            ),
            "correct_relabelled": sum("new_label" in f for i, f in by_index.items() if i not in true),
            "correct_dropped": sum("drop" in f for i, f in by_index.items() if i not in true),
        }
        draws.append(
            {
                "flip_seed": fs,
                "flipped": len(true),
                "flagged": int(len(flagged)),
                "precision": len(hits) / max(len(flagged), 1),
                "recall": len(hits) / len(true),
                # Of the true flips that were caught, how often is the suggestion the original label?
                "suggestion_restores_true_label": float(np.mean([suggested[i] == clean.y[i] for i in hits])),
                "oof_accuracy": issues.to_dict()["oof_accuracy"],
                "keep_above": plausible_threshold(issues),
                "headline": {
                    "relabelled": sum("new_label" in f for f in fixes),
                    "dropped": sum("drop" in f for f in fixes),
                    "kept": len(flagged) - len(fixes),
                    **wrong_after,
                },
            }
        )
        variants = {
            "noisy": noisy,
            # The ceiling of any drop-only fix: a perfect detector that drops exactly the flips.
            FIXES[0]: apply_fixes(ws, noisy, [{"index": int(i), "drop": True} for i in flipped], name="oracle"),
            FIXES[1]: apply_fixes(ws, noisy, fixes_from_issues(issues), name="relabel"),
            FIXES[2]: apply_fixes(ws, noisy, fixes_from_issues(issues, drop=True), name="drop"),
            HEADLINE: apply_fixes(ws, noisy, fixes, name="recommended"),
        }
        t0 = time.perf_counter()
        acc = {k: [test_accuracy(ds, s) for s in range(SEEDS)] for k, ds in variants.items()}
        train_s += time.perf_counter() - t0
        cost = np.array(clean_acc) - np.array(acc["noisy"])  # per seed: the same seed for every version
        costs.append(cost)
        for k, ds in variants.items():
            # Train labels that differ from the original ones (versions only relabel or drop).
            wrong = diff(ws, clean, ds)["splits"]["train"]["relabelled"]
            rec = ""
            if k in FIXES:
                gain = np.array(acc[k]) - np.array(acc["noisy"])
                gains[k].append(gain)
                rec = f"{gain.sum() / cost.sum():.2f}" if cost.sum() > 0 else "n/a (noise cost nothing)"
                if k == HEADLINE:
                    draws[-1]["headline_recovery"] = gain.sum() / cost.sum() if cost.sum() > 0 else None
            rows.append(
                {
                    "flips": f"draw {fs}",
                    "version": k,
                    "train_samples": int((ds.split == 0).sum()),
                    "wrong_labels": wrong,
                    "test_accuracy": statistics.mean(acc[k]),
                    "per_seed": ", ".join(f"{a:.4f}" for a in acc[k]),
                    "recovered": rec,
                }
            )
        draws[-1]["noise_cost"] = float(cost.mean())
    rng = np.random.default_rng(0)
    all_costs = np.concatenate(costs)
    recovery = {}
    for k in FIXES:
        r, lo, hi = pooled(np.concatenate(gains[k]), all_costs, rng)
        recovery[k] = {"pooled": r, "interval_90": [lo, hi]}
        rows.append(
            {
                "flips": f"all {len(FLIP_SEEDS)} draws",
                "version": k,
                "train_samples": "",
                "wrong_labels": "",
                "test_accuracy": "",
                "per_seed": "",
                "recovered": f"{r:.2f} (90% interval {lo:.2f} to {hi:.2f})",
            }
        )
    # Paired: the same draws and seeds, so the training noise they share cancels.
    for other in FIXES[1:3]:
        r, lo, hi = pooled(np.concatenate(gains[HEADLINE]) - np.concatenate(gains[other]), all_costs, rng)
        recovery[f"{HEADLINE} minus {other}"] = {"pooled": r, "interval_90": [lo, hi]}
        rows.append(
            {
                "flips": f"all {len(FLIP_SEEDS)} draws",
                "version": f"{HEADLINE} minus {other[len('fixed: ') :]}",
                "train_samples": "",
                "wrong_labels": "",
                "test_accuracy": "",
                "per_seed": "",
                "recovered": f"{r:+.2f} (90% interval {lo:+.2f} to {hi:+.2f})",
            }
        )
    head = recovery[HEADLINE]["pooled"]
    precision = min(d["precision"] for d in draws)
    recall = min(d["recall"] for d in draws)
    summary = {
        "draws": draws,
        "precision_min": precision,
        "recall_min": recall,
        "noise_cost": float(all_costs.mean()),
        "recovery": recovery,
        "headline_fix": HEADLINE,
        "headline_settings": RECOMMENDED,
        "targets": {"precision": 0.8, "recall": 0.8, "recovery": 0.5},
        "met": precision >= 0.8 and recall >= 0.8 and head >= 0.5,
        "find_issues_s": round(find_s, 1),
        "train_s": round(train_s, 1),
        "setup": {
            "train_samples": SAMPLES,
            "noise": NOISE,
            "flip_seeds": FLIP_SEEDS,
            "folds": FOLDS,
            "fold_epochs": FOLD_EPOCHS,
            "fold_augment": FOLD_AUGMENT,
            "arch": ARCH,
            "ensemble": list(ENSEMBLE),
            "epochs": EPOCHS,
            "seeds": SEEDS,
        },
    }
    per_draw = "; ".join(
        f"draw {d['flip_seed']}: {d['flagged']} flagged, precision {d['precision']:.3f}, recall {d['recall']:.3f}, "
        f"suggestion = original label for {d['suggestion_restores_true_label']:.1%} of caught flips; the fix "
        f"relabelled {d['headline']['relabelled']}, dropped {d['headline']['dropped']}, kept {d['headline']['kept']} "
        f"(keep_above {d['keep_above']}), which leaves {d['headline']['flips_missed']} flips unflagged, "
        f"{d['headline']['flips_kept']} flagged flips kept and {d['headline']['flips_relabelled_wrong']} relabelled "
        f"to a third class, and changes {d['headline']['correct_relabelled']} correct labels and drops "
        f"{d['headline']['correct_dropped']} correct samples; noise cost {d['noise_cost'] * 100:.2f} points"
        for d in draws
    )
    notes = [
        f"Fashion-MNIST, a stratified {SAMPLES}-image subset of the train split (val {int((clean.split == 1).sum())}, "
        f"official test {int((clean.split == 2).sum())}); {NOISE:.0%} of train labels flipped uniformly to another "
        f"class, {len(FLIP_SEEDS)} draws (flip seeds {', '.join(map(str, FLIP_SEEDS))}).",
        f"find_issues: {FOLDS}-fold out-of-fold probabilities from {' + '.join((ARCH, *ENSEMBLE))} "
        f"({FOLD_EPOCHS} epochs per fold, augmentation {FOLD_AUGMENT}, averaged; `datamoat data issues --folds {FOLDS} "
        f"--epochs {FOLD_EPOCHS} --augment {FOLD_AUGMENT} --arch {ARCH}"
        + "".join(f" --ensemble {a}" for a in ENSEMBLE)
        + f"`), cleanlab {issues.config['filter_by']}. {per_draw}. Targets: precision and recall >= 0.8 on every "
        f"draw. {find_s:.0f}s in all.",
        f"Then {ARCH} with the default recipe ({EPOCHS} epochs, one-cycle, best epoch on val) trained on each "
        f"version, {SEEDS} seeds (the same seeds for every version). Recovered = (fixed - noisy) / (clean - noisy), "
        "summed over seeds; the pooled rows sum over every draw and seed, with a 90% bootstrap interval over the "
        "(draw, seed) pairs; target 0.5 pooled. The oracle drops exactly the flipped samples: the most any "
        "drop-only fix could win back. wrong_labels counts train labels that differ from the original ones.",
        f"Headline fix ({HEADLINE}, `datamoat data fix --from ISSUES --keep-above auto --drop-below "
        f"{RECOMMENDED['drop_below']}`, also `improve`'s data lever): leave a flag alone when its given label keeps "
        "out-of-fold probability >= 2 x (flagged share) / (classes - 1), twice what uniform noise alone gives a "
        f"wrong label; relabel the rest to the suggestion when it has probability >= {RECOMMENDED['drop_below']}; "
        "drop what is left. Relabelling every flag rewrites hard but correct samples (shirt / T-shirt, pullover / "
        "coat) to the model's own guess, a class-pair bias that costs more per label than uniform noise; dropping "
        "every flag loses those samples and a tenth of the data.",
        f"Total {time.perf_counter() - t_start:.0f}s.",
    ]
    recover = {
        "title": "Recovery: flag flipped labels with find_issues and recover the accuracy they cost",
        "columns": ["flips", "version", "train_samples", "wrong_labels", "test_accuracy", "per_seed", "recovered"],
        "rows": rows,
    }
    return {**detect, "tables": [recover], "summary": {**summary, "detection": det_summary}, "notes": det_notes + notes}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
