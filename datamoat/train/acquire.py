"""Active learning: which unlabeled items are worth a person's label next.

`select` ranks a pool from a model's probabilities (N, K) and penultimate
embeddings (N, D) and returns the `budget` items to label, best first:

- ``margin``: the smallest gap between the two likeliest classes
  (Scheffer, Decomain and Wrobel 2001).
- ``entropy``: the largest predictive entropy (Shannon; Settles 2009's survey).
- ``disagreement``: query by committee over members' probabilities
  (M, N, K), from fold models or an ensemble: ``kl`` is the mean KL divergence
  of each member from the consensus (McCallum and Nigam 1998), ``vote`` the
  entropy of the members' votes (Dagan and Engelson 1995), ties by KL.
- ``kcenter``: k-center greedy on the embeddings, the core-set method of
  Sener and Savarese 2018: each pick is the item farthest from every labelled
  item and every earlier pick, so a batch covers the pool instead of
  repeating one confusing corner of it.
- ``badge``: BADGE (Ash, Zhang, Krishnamurthy, Langford and Agarwal 2020):
  k-means++ seeding on gradient embeddings, the last layer's loss gradient
  under the model's own guess, ``(p - onehot(argmax p)) ⊗ h``. Its length
  is the uncertainty, its direction the kind of item, so one pass trades both.
- ``random``: the baseline every strategy has to beat.
- ``hybrid``: the `hybrid_factor` x budget items with the smallest margin,
  then k-center greedy among them (uncertainty first, then diversity, as
  Cluster-Margin, Citovsky et al. 2021, does with its clustering). Margin
  alone is a strong baseline but fills a batch with near-copies of one
  confusion; BADGE mixes the two in one distance but costs a pass over the
  whole pool per pick. The hybrid keeps margin's information per label, the
  k-center pass spreads the batch, and its distances span the candidates only.

Every strategy is deterministic given `seed`: ties, random picks and BADGE's
sampling come from one seeded generator. Nothing N x N is ever built: k-center
keeps one distance per item, and BADGE never forms the (N, K x D) gradient
embeddings: ``<a ⊗ h, b ⊗ g> = <a, b> <h, g>``, so a distance to a new center
costs O(N (K + D)) in float32.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from datamoat.configs import Config, check, check_choice
from datamoat.errors import BadInput

if TYPE_CHECKING:
    from datamoat.data.dataset import Dataset
    from datamoat.models.model import Model

__all__ = ["AcquireConfig", "STRATEGIES", "select", "rank_pool", "model_outputs", "scores"]

STRATEGIES = ("margin", "entropy", "disagreement", "kcenter", "badge", "random", "hybrid")
_EMBEDDED = ("kcenter", "badge", "hybrid")  # the strategies that read embeddings
_BLOCK = 1 << 20  # entries in one block of a distance computation (4 MiB of float32)


@dataclasses.dataclass
class AcquireConfig(Config):
    """How to pick `budget` items from a pool (see the module docstring for each strategy).

    `members` is how many models an ensemble has where a caller trains one for
    ``disagreement`` (`datamoat.feedback.loop.label_loop`). The default strategy, margin, is the
    one that did best in `bench/bench_labels.py`'s strategy table (`improve`'s label lever uses it).

    >>> AcquireConfig(budget=50).strategy, AcquireConfig(budget=50).hybrid_factor
    ('margin', 10)
    """

    strategy: str = "margin"
    budget: int = 100
    seed: int = 0
    disagreement: str = "kl"
    members: int = 3
    hybrid_factor: int = 10
    device: str = "auto"  # where the pool is scored: auto (CUDA, then MPS, then the CPU), cpu, cuda or mps

    def validate(self) -> None:
        from datamoat.train.device import DEVICES  # torch: only when a config is made

        check_choice("strategy", self.strategy, STRATEGIES)
        check(self.budget >= 1, f"budget must be at least 1, got {self.budget}")
        check_choice("disagreement measure", self.disagreement, ("kl", "vote"))
        check(self.members >= 2, f"members must be at least 2 (a committee), got {self.members}")
        check(self.hybrid_factor >= 1, f"hybrid_factor must be at least 1, got {self.hybrid_factor}")
        check_choice("device", self.device, DEVICES)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of each row of (N, K) probabilities, (N,)."""
    p = np.asarray(p, np.float64)
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)


def scores(probs: np.ndarray, strategy: str, member_probs: np.ndarray | None = None, measure: str = "kl") -> np.ndarray:
    """Uncertainty per item, (N,), higher = more worth labelling, for margin, entropy and disagreement.

    >>> scores(np.array([[0.5, 0.5], [0.9, 0.1]]), "margin").round(2).tolist()
    [-0.0, -0.8]
    """
    if strategy == "margin":
        top2 = -np.partition(-np.asarray(probs, np.float64), 1, axis=1)[:, :2]  # (N, 2) descending
        return -(top2[:, 0] - top2[:, 1])
    if strategy == "entropy":
        return _entropy(probs)
    if strategy == "disagreement":
        assert member_probs is not None  # select checks it
        m = np.asarray(member_probs, np.float64)  # (M, N, K)
        consensus = m.mean(axis=0)  # (N, K)
        log_ratio = np.log(np.clip(m, 1e-12, 1.0)) - np.log(np.clip(consensus, 1e-12, 1.0))[None]
        kl = (m * log_ratio).sum(axis=2).mean(axis=0)  # (N,)
        if measure == "kl":
            return kl
        votes = np.zeros_like(consensus)  # (N, K)
        for member in m.argmax(axis=2):  # (N,) each
            votes[np.arange(len(member)), member] += 1
        # Vote entropy takes few values (M votes): KL, scaled far below its smallest step, orders ties.
        return _entropy(votes / len(m)) + 1e-6 * kl / (1.0 + kl.max())
    raise BadInput(f"strategy {strategy!r} has no per-item score: use one of margin, entropy, disagreement")


def _ranked(score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score, ties in a seeded random order."""
    return np.lexsort((rng.random(len(score)), -np.asarray(score, np.float64)))


def _sqdist_to(emb: np.ndarray, sq: np.ndarray, i: int) -> np.ndarray:
    """Squared distance of every row of `emb` (N, D) to row i, (N,), clamped at 0."""
    return np.maximum(sq - 2.0 * (emb @ emb[i]) + sq[i], 0.0)


def _min_sqdist(emb: np.ndarray, sq: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Each row's squared distance to its nearest row of `others` (L, D), (N,), in bounded blocks."""
    others = np.asarray(others, np.float32)
    osq = np.einsum("ld,ld->l", others, others)  # (L,)
    out = np.full(len(emb), np.inf, np.float32)
    rows = max(1, min(len(emb), 4096))
    cols = max(1, _BLOCK // rows)
    for i in range(0, len(emb), rows):
        e, s = emb[i : i + rows], sq[i : i + rows]
        for j in range(0, len(others), cols):
            d = s[:, None] - 2.0 * (e @ others[j : j + cols].T) + osq[None, j : j + cols]  # (rows, cols)
            np.minimum(out[i : i + rows], d.min(axis=1), out=out[i : i + rows])
    return np.maximum(out, 0.0)


def _kcenter(
    emb: np.ndarray, budget: int, rng: np.random.Generator, labelled: np.ndarray | None, first: int | None = None
) -> np.ndarray:
    """k-center greedy: `budget` rows of `emb` (N, D), each farthest from the labelled rows and the earlier picks.

    Without labelled rows the first pick is `first`, else a seeded random row."""
    order = rng.permutation(len(emb))  # argmax takes the first of equals: this makes that a seeded choice
    e = np.ascontiguousarray(np.asarray(emb, np.float32)[order])  # (N, D)
    sq = np.einsum("nd,nd->n", e, e)  # (N,)
    if labelled is not None and len(labelled):
        dist = _min_sqdist(e, sq, labelled)
        start = None
    else:
        dist = np.full(len(e), np.inf, np.float32)
        start = int(np.flatnonzero(order == first)[0]) if first is not None else 0
    picks: list[int] = []
    for _ in range(budget):
        i = start if start is not None and not picks else int(np.argmax(dist))
        picks.append(i)
        np.minimum(dist, _sqdist_to(e, sq, i), out=dist)
        dist[i] = -np.inf  # never again, even where a float error leaves it above a duplicate's 0
    return order[np.array(picks, np.int64)]


def _badge(probs: np.ndarray, emb: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on the gradient embeddings ``(p - onehot(argmax p)) ⊗ h``, never materialised.

    The first center is the longest gradient, as the authors' code starts; each next one is drawn with
    probability proportional to its squared distance from the nearest center."""
    order = rng.permutation(len(probs))
    p = np.asarray(probs, np.float32)[order]  # (N, K)
    a = p.copy()
    a[np.arange(len(a)), p.argmax(axis=1)] -= 1.0  # (N, K): the loss gradient w.r.t. the logits
    h = np.ascontiguousarray(np.asarray(emb, np.float32)[order])  # (N, D)
    na = np.einsum("nk,nk->n", a, a)  # (N,) |a|^2
    nh = np.einsum("nd,nd->n", h, h)  # (N,) |h|^2
    norm = na * nh  # |a ⊗ h|^2
    dist = np.full(len(a), np.inf, np.float64)  # squared distance to the nearest center so far
    chosen = np.zeros(len(a), bool)
    picks: list[int] = []
    for _ in range(budget):
        weight = np.where(chosen, 0.0, dist)
        total = float(weight.sum()) if picks else 0.0
        if not picks:
            i = int(np.argmax(norm))
        elif total > 0:
            i = int(np.searchsorted(np.cumsum(weight), rng.random() * total, side="right"))
            i = int(np.flatnonzero(~chosen)[-1]) if i >= len(a) or chosen[i] else i  # a float error at the end
        else:  # every item left coincides with a center: any is as good, the first in the seeded order
            i = int(np.flatnonzero(~chosen)[0])
        picks.append(i)
        chosen[i] = True
        d = norm + norm[i] - 2.0 * (a @ a[i]) * (h @ h[i])  # (N,) |g - g_i|^2 by the product rule
        np.minimum(dist, np.maximum(d, 0.0), out=dist)
    return order[np.array(picks, np.int64)]


def select(
    probs: np.ndarray,
    embeddings: np.ndarray | None,
    config: AcquireConfig,
    *,
    labelled_embeddings: np.ndarray | None = None,
    member_probs: np.ndarray | None = None,
) -> np.ndarray:
    """The `config.budget` pool items to label, as indices into the pool, best first.

    `probs` (N, K) are the model's probabilities on the pool, `embeddings` (N, D) its penultimate
    activations (kcenter, badge and hybrid read them), `labelled_embeddings` (L, D) those of the
    items already labelled (k-center starts from them), `member_probs` (M, N, K) a committee's
    probabilities (disagreement).

    >>> p = np.array([[0.9, 0.1], [0.55, 0.45], [0.7, 0.3]])
    >>> select(p, None, AcquireConfig(strategy="margin", budget=2)).tolist()
    [1, 2]
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) == 0:
        raise BadInput(f"the pool is empty (probabilities {probs.shape}): add unlabeled images to it first")
    n, b = len(probs), config.budget
    if b > n:
        raise BadInput(f"budget {b} is larger than the pool's {n} unlabeled items: lower the budget to at most {n}")
    rng = np.random.default_rng(config.seed)
    s = config.strategy
    if s in _EMBEDDED:
        if embeddings is None or len(embeddings) != n:
            got = "none" if embeddings is None else f"{len(embeddings)} rows"
            raise BadInput(f"strategy {s} needs one embedding per pool item ({n}), got {got}")
        emb = np.asarray(embeddings, np.float32).reshape(n, -1)  # (N, D)
        if labelled_embeddings is not None:
            labelled_embeddings = np.asarray(labelled_embeddings, np.float32).reshape(len(labelled_embeddings), -1)
            check(
                labelled_embeddings.shape[1] == emb.shape[1],
                f"labelled embeddings have {labelled_embeddings.shape[1]} dimensions, the pool's {emb.shape[1]}",
            )
    if s == "random":
        return rng.permutation(n)[:b]
    if s == "disagreement":
        m = None if member_probs is None else np.asarray(member_probs)
        if m is None or m.ndim != 3 or len(m) < 2 or m.shape[1:] != probs.shape:
            got = "none" if m is None else f"shape {m.shape}"
            raise BadInput(
                f"disagreement needs the probabilities of at least 2 models on the pool, (M, {n}, "
                f"{probs.shape[1]}), got {got}: pass an ensemble or fold models"
            )
        return _ranked(scores(probs, s, m, config.disagreement), rng)[:b]
    if s in ("margin", "entropy"):
        return _ranked(scores(probs, s), rng)[:b]
    if s == "kcenter":
        return _kcenter(emb, b, rng, labelled_embeddings)
    if s == "badge":
        return _badge(probs, emb, b, rng)
    # hybrid: margin's most uncertain candidates, then k-center greedy among them
    cand = _ranked(scores(probs, "margin"), rng)[: min(n, config.hybrid_factor * b)]
    picks = _kcenter(emb[cand], b, rng, labelled_embeddings, first=0)
    return cand[picks]


def rank_pool(
    ds: Dataset,
    rows: np.ndarray,
    model: Model,
    config: AcquireConfig,
    *,
    members: list[Model] | None = None,
    labelled: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(the `config.budget` chosen rows of `ds` among `rows`, best first, and the model's probabilities
    on them (B, K)). `labelled` are rows already labelled or queued (k-center spreads away from
    them); `members` are the other models of a committee (disagreement)."""
    from datamoat.train.device import resolve_device

    dev = resolve_device(config.device)
    lab_emb, member_probs = None, None
    with model.placed(dev):  # moved once for every pass, and back where it was after
        probs, emb = model_outputs(model, ds.x, rows, progress=progress)
        if config.strategy in ("kcenter", "hybrid") and labelled is not None and len(labelled):
            lab_emb = model_outputs(model, ds.x, labelled, progress=progress, what="embedding the labelled items")[1]
    if config.strategy == "disagreement" and members:
        member_probs = np.stack([probs, *(m.predict_proba(ds.x, rows=rows, device=dev) for m in members)])  # (M, N, K)
    picks = select(probs, emb, config, labelled_embeddings=lab_emb, member_probs=member_probs)
    return rows[picks], probs[picks]


def _classifier(net: Any, arch: str) -> Any:
    """The final Linear layer of `net`: a backbone's by name, else the zoo models' last Linear."""
    from torch import nn

    from datamoat.models.backbones import BACKBONES, head_name

    if arch in BACKBONES:
        return net.get_submodule(head_name(arch))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInput(f"model {arch} has no Linear classifier to read embeddings from")
    return linears[-1]


def model_outputs(
    model: Any,
    x: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    batch_size: int = 512,
    progress: bool = False,
    what: str = "scoring the pool",
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K), penultimate embeddings (N, D)) of a `datamoat.models.model.Model` on
    uint8 images `x` (or ``x[rows]``), batch by batch: the embeddings are the classifier layer's
    input, caught by a forward hook, so one pass gives both.

    >>> probs, emb = model_outputs(model, ds.x, rows=np.arange(10))  # doctest: +SKIP
    """
    import torch

    from datamoat.data.dataset import read_rows

    at = np.arange(len(x)) if rows is None else np.asarray(rows)
    head = _classifier(model.net, model.config.arch)
    probs = np.empty((len(at), len(model.classes)), np.float32)  # (N, K)
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: caught.append(args[0].detach().flatten(1)))
    emb: np.ndarray | None = None
    was_training = model.net.training
    model.net.eval()
    bar = _bar(progress, len(at))
    try:
        with torch.no_grad(), bar as live:
            task = live.add_task(what, total=len(at)) if live else None
            for i in range(0, len(at), batch_size):
                xb = model.to_tensor(read_rows(x, at[i : i + batch_size]))  # (B, C, H, W)
                caught.clear()
                logits = model.net(xb.to(next(model.net.parameters()).device))  # (B, K)
                probs[i : i + len(xb)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
                h = caught[-1].float().cpu().numpy()  # (B, D)
                if emb is None:
                    emb = np.empty((len(at), h.shape[1]), np.float32)  # (N, D)
                emb[i : i + len(xb)] = h
                if live:
                    live.update(task, completed=i + len(xb))
    finally:
        hook.remove()
        model.net.train(was_training)
    return probs, emb if emb is not None else np.empty((0, 0), np.float32)


def _bar(on: bool, total: int) -> Any:
    """A rich progress bar on stderr, or a context that yields None."""
    import contextlib

    if not on or total == 0:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
