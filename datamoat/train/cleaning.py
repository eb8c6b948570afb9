"""`find_issues`: likely label errors, near duplicates and outliers, ranked.

Label errors come from confident learning (cleanlab) on *out-of-fold*
predicted probabilities: the train split is cut into K stratified folds and
each fold is predicted by a fresh zoo model trained on the other K-1, so no
sample is ever scored by a model that memorised its (possibly wrong) label.
The fold datasets live only in memory; nothing is written to the workspace.

Near duplicates (`datamoat.data.duplicates`) are exact pixel-hash twins anywhere in the dataset plus
nearest neighbours by cosine similarity of centred, downsampled images within
the examined train samples; pairs with conflicting labels rank first.
Outliers are the lowest cleanlab out-of-distribution scores computed from the
same out-of-fold probabilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import SPLITS, Dataset
from datamoat.data.duplicates import near_duplicates
from datamoat.data.transforms import AUGMENTATIONS
from datamoat.errors import BadInput
from datamoat.models.zoo import ARCHS

__all__ = [
    "CleaningConfig",
    "Issues",
    "LabelIssues",
    "find_issues",
    "fixes_from_issues",
    "near_duplicates",
    "plausible_threshold",
    "RECOMMENDED",
]

FILTERS = (
    "low_self_confidence",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
)
# The label-noise benchmark's headline fix, `data fix --keep-above auto --drop-below 0.7`: leave flags whose
# given label is still plausible, relabel confident suggestions, drop the doubtful rest
# (bench/results/labelnoise-recovery.md compares it with relabelling or dropping every flag).
RECOMMENDED: dict[str, Any] = {"keep_above": "auto", "drop_below": 0.7}


@dataclasses.dataclass
class CleaningConfig(Config):
    """How to look for issues. Defaults: 5 folds of cnn_small, 5 epochs each,
    no augmentation (cheap; shifts were measured only on 28x28 images, and 2
    pixels is a quarter of an 8x8 one). On 28x28 images, fold models trained twice as long with random
    shifts (`epochs=10, augment="crop"`) are better, and crop_flip underfit
    in 5 epochs: bench/results/labelnoise-recovery.md has the measurements."""

    arch: str = "cnn_small"
    # More architectures whose out-of-fold probabilities are averaged with
    # `arch`'s: a second opinion catches flips and spares hard but correct
    # samples, at the cost of training each (bench/results/labelnoise-recovery.md).
    ensemble: tuple[str, ...] = ()
    folds: int = 5
    epochs: int = 5
    lr: float = 2e-3
    augment: str = "none"
    seed: int = 0
    max_train_samples: int = 0
    # How many to flag: cleanlab's estimate of the number of label errors, taken
    # lowest self-confidence first. On Fashion-MNIST with 10% flips this was
    # more precise than prune_by_noise_rate at similar recall (0.84/0.95 vs
    # 0.66/0.93), which over-flags classes that are merely confusable. On flips
    # between confusable pairs no filter reached 0.8 and every other one lost
    # the uniform case (bench/results/labelnoise.md), so it stays.
    filter_by: str = "low_self_confidence"
    duplicate_threshold: float = 0.995  # on Fashion-MNIST: 51 pairs among 20k at 0.995, 663 at 0.99
    max_duplicate_samples: int = 20_000
    outlier_fraction: float = 0.01
    threads: int = 0
    device: str = "auto"  # the fold models': auto (CUDA, then MPS, then the CPU), cpu, cuda or mps

    def validate(self) -> None:
        check_choice("architecture", self.arch, tuple(ARCHS))
        for a in self.ensemble:
            check_choice("ensemble architecture", a, tuple(ARCHS))
        archs = (self.arch, *self.ensemble)
        check(len(set(archs)) == len(archs), f"each architecture once: {', '.join(archs)} repeats one")
        check(self.folds >= 2, f"folds must be at least 2 (cross-validation needs a held-out fold), got {self.folds}")
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check_choice("augmentation", self.augment, AUGMENTATIONS)
        check(self.max_train_samples >= 0, "max_train_samples must be >= 0 (0 uses the whole train split)")
        check_choice("filter_by", self.filter_by, FILTERS)
        check(0 < self.duplicate_threshold <= 1, "duplicate_threshold is a cosine similarity in (0, 1]")
        check(self.max_duplicate_samples >= 0, "max_duplicate_samples must be >= 0 (0 skips near duplicates)")
        check(0 <= self.outlier_fraction < 1, "outlier_fraction must be in [0, 1)")
        check(self.threads >= 0, "threads must be >= 0 (0 uses every core)")
        from datamoat.train.device import DEVICES  # torch: only when a config is made

        check_choice("device", self.device, DEVICES)


class LabelIssues(Sequence[dict[str, Any]]):
    """The label issues, best first, as columns: an issue is a dict only when it is read. A list of
    dicts took about 440 bytes an issue, so a million-photo run that flags a quarter of its photos
    held more for its findings than for anything else.

    >>> t = LabelIssues(np.array([7]), np.array([3]), np.array([0]), np.array([1]), np.array([0.1]),
    ...                 np.array([0.8]), ["a", "b"])
    >>> t[0]["suggested_class"], len(t), t[:1] == [t[0]]
    ('b', 1, True)
    """

    def __init__(
        self,
        rows: np.ndarray,  # (F,) global dataset rows (an issue's "index")
        train_index: np.ndarray,  # (F,) positions within data.subset("train")
        given: np.ndarray,  # (F,)
        suggested: np.ndarray,  # (F,)
        quality: np.ndarray,  # (F,) out-of-fold probability of the given label
        confidence: np.ndarray,  # (F,) out-of-fold probability of the suggested label
        classes: list[str],
    ) -> None:
        self.rows, self.train_index, self.given, self.suggested = rows, train_index, given, suggested
        self.quality, self.confidence, self.classes = quality, confidence, classes

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rank = range(len(self))[i]  # IndexError and negative indices as a list has them
        given, suggested = int(self.given[rank]), int(self.suggested[rank])
        return {
            "rank": rank,
            "index": int(self.rows[rank]),
            "train_index": int(self.train_index[rank]),
            "given_label": given,
            "given_class": self.classes[given],
            "suggested_label": suggested,
            "suggested_class": self.classes[suggested],
            "quality": round(float(self.quality[rank]), 6),
            "confidence": round(float(self.confidence[rank]), 6),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[j] for j in range(len(self)))


@dataclasses.dataclass
class Issues:
    """What `find_issues` found. Indices are global (into the dataset's
    arrays); label issues also carry `train_index`, the position within
    `data.subset("train")`."""

    dataset_id: str
    config: dict[str, Any]
    examined: np.ndarray  # (n,) global indices of the train samples scored
    labels: np.ndarray  # (n,) their given labels
    pred_probs: np.ndarray  # (n, K) out-of-fold probabilities, rows follow `examined`
    label_issues: Sequence[dict[str, Any]]  # `LabelIssues` from `find_issues`
    near_duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]

    LISTS = ("label_issues", "near_duplicates", "outliers")

    @property
    def flagged(self) -> np.ndarray:
        """Global indices of the samples flagged as label errors, best first."""
        if isinstance(self.label_issues, LabelIssues):
            return self.label_issues.rows.astype(np.int64)
        return np.array([i["index"] for i in self.label_issues], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Everything but the lists, plus how long each list is (`counts`)."""
        agree = self.pred_probs.argmax(1) == self.labels
        return {
            "dataset_id": self.dataset_id,
            "config": self.config,
            "examined": int(len(self.examined)),
            "num_classes": int(self.pred_probs.shape[1]),
            "oof_accuracy": round(float(agree.mean()), 6) if len(agree) else 0.0,
            "counts": {k: len(getattr(self, k)) for k in self.LISTS},
        }

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """As JSON data: the summary (without counts) and each list, whole or its first `top`."""
        out = {k: v for k, v in self.summary().items() if k != "counts"}
        return {**out, **{k: list(getattr(self, k)[:top]) for k in self.LISTS}}

    def write_json(self, path: Path) -> None:
        """`to_dict()` as a JSON file, written an issue at a time (the lists are never all dicts at
        once) and renamed into place whole."""
        from datamoat.files import atomic_path

        head = self.to_dict(top=0)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("{\n")
            for k in head:
                if k not in self.LISTS:
                    f.write(f" {json.dumps(k)}: {json.dumps(head[k])},\n")
            for n, k in enumerate(self.LISTS):
                f.write(f" {json.dumps(k)}: [")
                for j, item in enumerate(getattr(self, k)):
                    f.write(("," if j else "") + "\n  " + json.dumps(item))
                f.write("\n ]" + ("," if n < len(self.LISTS) - 1 else "") + "\n")
            f.write("}\n")


def _fold_ids(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A stratified fold number per sample: each class dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        # Rotate the start so small classes do not all land in fold 0.
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


def _out_of_fold(data: Dataset, sel: np.ndarray, cfg: CleaningConfig, progress: bool) -> np.ndarray:
    """(n, K) probabilities for the global indices `sel`, each from models
    that never saw it: the mean over `arch` and the `ensemble` archs."""
    probs = [_out_of_fold_arch(data, sel, cfg, arch, progress) for arch in (cfg.arch, *cfg.ensemble)]
    return np.asarray(np.mean(probs, axis=0, dtype=np.float64)).astype(np.float32)  # (n, K)


def _out_of_fold_arch(data: Dataset, sel: np.ndarray, cfg: CleaningConfig, arch: str, progress: bool) -> np.ndarray:
    """(n, K) out-of-fold probabilities from one architecture's K fold models."""
    from datamoat.models import new_model
    from datamoat.train import distributed
    from datamoat.train.device import resolve_device
    from datamoat.train.loop import TrainConfig, train

    fold = _fold_ids(data.y[sel], cfg.folds, cfg.seed)
    probs = np.zeros((len(sel), data.num_classes), dtype=np.float32)
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        augment=cfg.augment,
        patience=0,
        seed=cfg.seed,
        threads=cfg.threads,
        device=cfg.device,
    )
    dev = resolve_device(cfg.device)
    rank, world = distributed.setup(dev)  # joins torchrun's group, once: `train` would, per fold
    # Under torchrun the folds are independent: each process trains whole fold models by itself
    # (fold k on process k mod N), which needs no gradient exchange; with fewer folds than
    # processes each fold trains on all of them under DDP instead.
    by_fold = 1 < world <= cfg.folds
    for k in range(cfg.folds):
        if by_fold and k % world != rank:
            continue
        held = sel[fold == k]
        # The fold's view: the other folds are "train", the val split stays val
        # (best-epoch choice), everything else (held-out fold, unexamined train
        # samples, test) is coded as test so `train` never sees it.
        split = np.where(data.split == SPLITS["val"], SPLITS["val"], SPLITS["test"]).astype(np.uint8)
        split[sel[fold != k]] = SPLITS["train"]
        view = dataclasses.replace(data, id=f"{data.id}-fold{k}", split=split)
        model = new_model(arch, view, seed=cfg.seed + k)
        with distributed.alone() if by_fold else contextlib.nullcontext():
            model = train(model, view, tcfg.replace(seed=cfg.seed + k), progress=progress)
        # Scored in training-size batches: the default's 1024 would make a held fold smaller than
        # that take memory by its size.
        probs[fold == k] = model.predict_proba(data.x, rows=held, batch_size=tcfg.batch_size)  # (n_k, K)
    if by_fold:  # every row was filled by the one process that held its fold, zeros elsewhere
        probs = distributed.all_sum_array(probs, distributed.local_device(dev))
    return probs


def find_issues(
    data: Dataset, config: CleaningConfig | None = None, *, progress: bool = False, **fields: Any
) -> Issues:
    """Rank likely label errors in the TRAIN split of `data`, plus near
    duplicates and outliers. Keyword `fields` set `CleaningConfig` fields.

    >>> issues = find_issues(noisy, folds=3, epochs=2)  # doctest: +SKIP
    >>> issues.label_issues[0]["suggested_label"]  # doctest: +SKIP
    3
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores

    from datamoat.train.loop import subsample

    cfg = config.replace(**fields) if config is not None else CleaningConfig(**fields)
    train_global = np.flatnonzero(data.split == SPLITS["train"])
    sel = train_global[subsample(data.y[train_global], cfg.max_train_samples, cfg.seed)]
    per_class = np.bincount(data.y[sel], minlength=data.num_classes)
    if per_class[per_class > 0].min() < cfg.folds:
        raise BadInput(
            f"a class has only {per_class[per_class > 0].min()} train samples, fewer than "
            f"{cfg.folds} folds: lower --folds or add data"
        )
    if not (data.split == SPLITS["val"]).any():
        raise BadInput(
            f"dataset {data.id} has no val split, which picks each fold's best epoch: re-import with val > 0"
        )
    labels = data.y[sel]
    probs = _out_of_fold(data, sel, cfg, progress)  # (n, K)
    ranked = find_label_issues(
        labels, probs, filter_by=cfg.filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    ranked = np.asarray(ranked, dtype=np.int64)  # (F,) positions into `sel`, best first
    flagged_probs = probs[ranked]  # (F, K)
    given = labels[ranked].astype(np.int64)  # (F,)
    # The best class other than the given one: usually the argmax, but a flagged sample can keep a
    # weak plurality for its given label.
    others = np.where(np.arange(data.num_classes)[None, :] == given[:, None], -1.0, flagged_probs)  # (F, K)
    suggested = others.argmax(1)  # (F,)
    label_issues = LabelIssues(
        sel[ranked].astype(np.int64),
        np.searchsorted(train_global, sel[ranked]).astype(np.int64),
        given,
        suggested.astype(np.int64),
        quality[ranked].astype(np.float64),
        flagged_probs[np.arange(len(ranked)), suggested].astype(np.float64),
        list(data.classes),
    )
    del flagged_probs, others
    outliers = []
    n_out = int(round(cfg.outlier_fraction * len(sel)))
    if n_out:
        ood = OutOfDistribution().fit_score(pred_probs=probs, labels=labels, verbose=False)
        for i in np.argsort(ood, kind="stable")[:n_out]:
            outliers.append({"index": int(sel[i]), "label": int(labels[i]), "score": round(float(ood[i]), 6)})
    dups = near_duplicates(data, sel, cfg.duplicate_threshold, cfg.max_duplicate_samples, cfg.seed)
    return Issues(data.id, cfg.to_dict(), sel, labels, probs, label_issues, dups, outliers)


def plausible_threshold(issues: Issues | dict[str, Any]) -> float:
    """`keep_above="auto"`: 2 x (flagged share) / (classes - 1).

    Uniform noise at rate r gives a sample a given wrong label with
    probability r / (K - 1); a flag whose given label keeps more than twice
    that out-of-fold probability is more often a hard but correct sample than
    a flip. With 10% flips on Fashion-MNIST this is about 0.024.

    >>> plausible_threshold({"examined": 1000, "num_classes": 10, "label_issues": [{}] * 90})
    0.02
    """
    d = _doc(issues)
    if not isinstance(d.get("examined"), int) or not isinstance(d.get("num_classes"), int) or d["num_classes"] < 2:
        raise BadInput(
            "the issues file lacks 'examined' or 'num_classes', which --keep-above auto needs: "
            "regenerate it with `datamoat data issues -o FILE`"
        )
    share = len(d["label_issues"]) / max(d["examined"], 1)
    return round(2 * share / (d["num_classes"] - 1), 3)


def fixes_from_issues(
    issues: Issues | dict[str, Any],
    *,
    drop: bool = False,
    min_confidence: float = 0.0,
    drop_below: float = 0.0,
    keep_above: float | str = 0.0,
) -> list[dict[str, Any]]:
    """Turn label issues into fixes for `apply_fixes`.

    Issues whose suggested label has probability below `min_confidence` are
    left alone, and so (when `keep_above` > 0) are those whose given label
    still has out-of-fold probability `quality` >= `keep_above` ("auto":
    `plausible_threshold`): a flip is rarely given even 5% by a model that
    never saw it, a hard but correct sample often is. The rest are relabelled
    to the suggestion, except that those below `drop_below` (or all of them,
    with `drop`) are dropped instead: a doubtful suggestion is more often a
    confusable but correct sample, and relabelling it would teach the model
    its own mistake. `RECOMMENDED` holds the label-noise benchmark's headline.

    >>> doc = {"label_issues": [{"index": 4, "suggested_label": 1, "confidence": 0.95, "quality": 0.01},
    ...                         {"index": 7, "suggested_label": 2, "confidence": 0.6, "quality": 0.02},
    ...                         {"index": 9, "suggested_label": 2, "confidence": 0.8, "quality": 0.07}]}
    >>> fixes_from_issues(doc, drop_below=0.9, keep_above=0.05)
    [{'index': 4, 'new_label': 1}, {'index': 7, 'drop': True}]
    """
    d = _doc(issues)
    if not isinstance(d, dict) or not isinstance(d.get("label_issues"), (list, LabelIssues)):
        raise BadInput("the issues file has no 'label_issues' list: write it with `datamoat data issues -o FILE`")
    if keep_above == "auto":
        keep_above = plausible_threshold(d)
    elif isinstance(keep_above, str):
        raise BadInput(f"keep_above is a probability or 'auto', got {keep_above!r}")
    fixes = []
    for i, issue in enumerate(d["label_issues"]):
        if not isinstance(issue, dict) or "index" not in issue or "suggested_label" not in issue:
            raise BadInput(f"label issue #{i} lacks 'index' or 'suggested_label': regenerate the issues file")
        conf = float(issue.get("confidence", 1.0))
        if conf < min_confidence or (keep_above > 0 and float(issue.get("quality", 0.0)) >= keep_above):
            continue
        if drop or conf < drop_below:
            fixes.append({"index": issue["index"], "drop": True})
        else:
            fixes.append({"index": issue["index"], "new_label": issue["suggested_label"]})
    return fixes


def _doc(issues: Issues | dict[str, Any]) -> Any:
    """An issues file's document, or `Issues` as one whose label issues stay columns."""
    if isinstance(issues, Issues):
        return {**issues.to_dict(top=0), "label_issues": issues.label_issues}
    return issues
