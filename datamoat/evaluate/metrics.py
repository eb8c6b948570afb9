"""`evaluate`: how good (and how honest) a classifier is on one split.

Metrics are computed from class probabilities, so any backend that produces
probabilities (a PyTorch `Model`, an ONNX session, an int8 model) gets the
same numbers through `evaluate_probs`. Besides accuracy and per-class
precision/recall/F1 we report the expected calibration error (ECE): a model
that says "90% sure" should be right 90% of the time, and deployment
thresholds rely on that. The worst confusions name the samples behind the
largest off-diagonal cells, so a person can look at what the model mixes up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import SPLITS, Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model

__all__ = [
    "EvalConfig",
    "Evaluation",
    "evaluate",
    "check_model_fits",
    "stream_logits",
    "evaluate_probs",
    "calibration_bins",
    "worst_confusions",
]


@dataclasses.dataclass
class EvalConfig(Config):
    """Which split to score, in what batches, with how many calibration bins, on which device (auto:
    CUDA, then MPS, then the CPU; always fp32)."""

    split: str = "test"
    # predict's: a batch's activations are the pass's peak, and at 1024 that peak varied from batch to
    # batch by more than the target allows between a split and one ten times larger
    batch_size: int = 256
    ece_bins: int = 15
    device: str = "auto"
    workers: int = -1  # photo decode processes (-1: every core but one, 0: in this process)

    def validate(self) -> None:
        from datamoat.train.device import DEVICES

        check_choice("split", self.split, tuple(SPLITS))
        check_choice("device", self.device, DEVICES)
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(1 <= self.ece_bins <= 1000, f"ece_bins must be in 1..1000, got {self.ece_bins}")
        check(self.workers >= -1, "workers must be >= -1 (-1: every core but one, 0: decode in this process)")


@dataclasses.dataclass
class Evaluation:
    """The scores of one model on one split; every field is plain JSON data."""

    accuracy: float
    macro_f1: float
    ece: float
    n: int
    classes: list[str]
    per_class: list[dict[str, Any]]  # {"class", "precision", "recall", "f1", "support"}
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    reliability: list[dict[str, Any]]  # per bin: {"lower", "upper", "confidence", "accuracy", "count"}
    split: str = "test"
    model_id: str | None = None
    dataset_id: str | None = None
    # The (true, predicted) pairs with the most errors, most first:
    # {"true", "predicted", "count", "examples": [{"index", "confidence"}]},
    # examples most confident first; index is the sample's row in its dataset.
    worst_confusions: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE and reliability-diagram data over `n_bins` equal-width bins.

    Bin k holds confidences in (k/M, (k+1)/M] (bin 0 also takes 0). ECE is
    sum_k |B_k|/n * |acc(B_k) - conf(B_k)| (Guo et al., 2017). Empty bins
    are listed with count 0 and `None` for their means.

    >>> ece, bins = calibration_bins(np.array([0.9, 0.9, 0.3]), np.array([1, 0, 0]), n_bins=2)
    >>> round(ece, 4), [b["count"] for b in bins]
    (0.3667, [1, 2])
    """
    conf = np.asarray(confidence, dtype=np.float64)  # (N,)
    hit = np.asarray(correct, dtype=np.float64)  # (N,) 1.0 where the prediction was right
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True puts a confidence equal to an edge in the lower bin: (lo, hi].
    which = np.digitize(conf, edges[1:-1], right=True)  # (N,) in 0..n_bins-1
    n = max(len(conf), 1)
    ece, bins = 0.0, []
    for k in range(n_bins):
        mask = which == k
        count = int(mask.sum())
        mean_conf = float(conf[mask].mean()) if count else None
        acc = float(hit[mask].mean()) if count else None
        if count:
            assert acc is not None and mean_conf is not None  # both set when count
            ece += count / n * abs(acc - mean_conf)
        bins.append(
            {
                "lower": float(edges[k]),
                "upper": float(edges[k + 1]),
                "confidence": mean_conf,
                "accuracy": acc,
                "count": count,
            }
        )
    return float(ece), bins


def worst_confusions(
    probs: np.ndarray, y: np.ndarray, classes: list[str], index: np.ndarray, pairs: int = 3, per_pair: int = 4
) -> list[dict[str, Any]]:
    """The `pairs` (true, predicted) pairs with the most errors, each with up to
    `per_pair` of its samples, the most confident mistakes first.

    `index` (N,) names each row of `probs` (N, K) in the examples. Ties in
    count go to the smaller (true, predicted), ties in confidence to the
    smaller index, so the answer does not depend on sort internals. An
    evaluation without errors has none.

    >>> probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.3, 0.7]])
    >>> worst = worst_confusions(probs, np.array([0, 0, 1, 1]), ["a", "b"], np.array([10, 11, 12, 13]))
    >>> [(w["true"], w["predicted"], w["count"], [e["index"] for e in w["examples"]]) for w in worst]
    [('a', 'b', 2, [10, 11]), ('b', 'a', 1, [12])]
    """
    pred = probs.argmax(1)  # (N,)
    conf = probs.max(1)  # (N,)
    k = len(classes)
    errors = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)  # (K, K) the confusion matrix
    np.fill_diagonal(errors, 0)
    out = []
    for cell in np.argsort(-errors, axis=None, kind="stable")[:pairs]:
        t, p = divmod(int(cell), k)
        if errors[t, p] == 0:
            break
        rows = np.flatnonzero((y == t) & (pred == p))
        rows = rows[np.lexsort((index[rows], -conf[rows]))][:per_pair]
        out.append(
            {
                "true": classes[t],
                "predicted": classes[p],
                "count": int(errors[t, p]),
                "examples": [{"index": int(index[r]), "confidence": float(conf[r])} for r in rows],
            }
        )
    return out


def evaluate_probs(
    probs: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    ece_bins: int = 15,
    *,
    split: str = "test",
    model_id: str | None = None,
    dataset_id: str | None = None,
    index: np.ndarray | None = None,
) -> Evaluation:
    """Score class probabilities `probs` (N, K) against integer labels `y` (N,).

    `index` (N,) is each row's index in its dataset, which the worst
    confusions' examples report; by default the row number.

    >>> ev = evaluate_probs(np.eye(3), np.array([0, 1, 2]), ["a", "b", "c"])
    >>> ev.accuracy, ev.macro_f1, ev.ece
    (1.0, 1.0, 0.0)
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise BadInput(f"probabilities must be (N, {k}) for {k} classes, got shape {probs.shape}")
    if len(probs) != len(y):
        raise BadInput(f"{len(probs)} predictions but {len(y)} labels: pass one label per row of probabilities")
    if len(y) == 0:
        raise BadInput("nothing to evaluate: the split is empty; evaluate another split (--split)")
    if y.min() < 0 or y.max() >= k:
        raise BadInput(f"labels must be in 0..{k - 1}, found {int(y.min())}..{int(y.max())}")
    # Logits passed by mistake would give a meaningless ECE; say so.
    if probs.min() < -1e-6 or not np.allclose(probs.sum(1), 1.0, atol=1e-2):
        raise BadInput("rows of probabilities must be non-negative and sum to 1: apply softmax to logits first")
    index = np.arange(len(y)) if index is None else np.asarray(index, dtype=np.int64)
    if index.shape != y.shape:
        raise BadInput(f"{len(index)} indices but {len(y)} labels: pass one dataset index per row of probabilities")

    pred = probs.argmax(1)  # (N,)
    labels = list(range(k))  # so classes absent from this split still get a row
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)  # (K, K)
    ece, bins = calibration_bins(probs.max(1), pred == y, ece_bins)
    per_class = [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, prec, rec, f1, support, strict=True)
    ]
    # Macro F1 over the classes that occur in labels or predictions (what
    # sklearn's f1_score(average="macro") does without `labels`): a class
    # absent from a small split would otherwise count as F1 = 0.
    present = (support > 0) | (cm.sum(0) > 0)
    return Evaluation(
        accuracy=float((pred == y).mean()),
        macro_f1=float(f1[present].mean()),
        ece=ece,
        n=int(len(y)),
        classes=list(classes),
        per_class=per_class,
        confusion=cm.astype(int).tolist(),
        reliability=bins,
        split=split,
        model_id=model_id,
        dataset_id=dataset_id,
        worst_confusions=worst_confusions(probs, y, list(classes), index),
    )


def check_model_fits(model: Model, data: Dataset, verb: str = "evaluate") -> None:
    """Refuse `data` unless `model` predicts its classes, in its order, from inputs of its shape.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> check_model_fits(new_model("mlp", ds), ds)
    """
    if list(model.classes) != list(data.classes):
        raise BadInput(
            f"model {model.name or model.id or ''} predicts classes {model.classes} but dataset {data.name} "
            f"({data.id}) has {data.classes}: {verb} on a dataset version with the same classes in the same "
            f"order, such as the one it was trained on ({model.lineage.get('dataset_id', 'see its lineage')})"
        )
    expected = (model.config.in_channels, *model.config.image_size)
    if tuple(data.input_shape) != expected:
        raise BadInput(
            f"model expects inputs {expected} but dataset {data.name} has {tuple(data.input_shape)}: "
            f"{verb} on a dataset with the image size the model was built for"
        )


def stream_logits(
    model: Model, data: Dataset, rows: np.ndarray, *, batch_size: int = 256, workers: int = -1, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """`model`'s logits for `data`'s images at `rows` (ascending), and each image's mean pixel (0..255): float32
    (N, K) and float64 (N,), in the order of `rows`. Batch by batch (photos decoded from their shards,
    `pixel_batches`), so only the batch's pixels are held however large the dataset; fp32 on `device`.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> logits, bright = stream_logits(new_model("mlp", ds), ds, np.arange(5))
    >>> logits.shape, bright.shape
    ((5, 10), (5,))
    """
    from datamoat.data.photo_render import pixel_batches
    from datamoat.train.device import resolve_device

    if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
        raise ValueError("stream_logits needs rows in ascending order, each once")
    logits = np.empty((len(rows), len(model.classes)), np.float32)  # (N, K)
    bright = np.empty(len(rows), np.float64)  # (N,)
    pixels = int(np.prod(data.input_shape))
    with model.placed(resolve_device(device)) as dev:
        for xb, at in pixel_batches(data, rows, batch_size=batch_size, workers=workers):
            pos = np.searchsorted(rows, at)  # (B,) where these rows sit in `rows`
            logits[pos] = model.logits(xb, batch_size=len(xb), device=dev)  # (B, K)
            bright[pos] = xb.reshape(len(xb), -1).sum(1, dtype=np.int64) / pixels  # no float copy of the batch
    return logits, bright


def evaluate(model: Model, data: Dataset, config: EvalConfig | None = None) -> Evaluation:
    """Score `model` on one split of `data` (default: test).

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> ev = evaluate(new_model("mlp", ds), ds, EvalConfig(split="val"))
    >>> ev.n == int((ds.split == 1).sum())
    True
    """
    cfg = config or EvalConfig()
    check_model_fits(model, data)
    index = np.flatnonzero(data.split == SPLITS[cfg.split])  # (N,) the split's rows, in order
    y = data.y[index]  # (N,)
    if len(y) == 0:
        raise BadInput(f"dataset {data.name} has no {cfg.split} samples: evaluate another split (--split)")
    # Batch by batch (photos from their shards), so memory follows the batch, not the split.
    logits, _ = stream_logits(model, data, index, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()  # (N, K), float64: rows sum to 1 tightly
    return evaluate_probs(
        probs,
        y,
        list(data.classes),
        cfg.ece_bins,
        split=cfg.split,
        model_id=model.id,
        dataset_id=data.id,
        index=index,
    )
