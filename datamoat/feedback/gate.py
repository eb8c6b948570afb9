"""The poisoning gate: which quarantined items may become training data.

`evaluate_gate` looks at every item no person has decided yet and marks it
``accepted`` or ``held`` with its reasons. An item is held when any rule
says so:

- **approval**: `require_approval` holds everything for a person to decide;
- **rate limit**: a source's items beyond `max_per_hour` in any hour;
- **no pixels**: server feedback whose image was never submitted (the
  prediction log keeps only its hash), so it cannot be trained on;
- **sources**: the same input (by hash) labelled differently elsewhere: a
  trusted label (a trusted source, or one a person accepted) wins; otherwise
  the label backed by the most sources wins and a tie holds every side;
- **model**: the current model gives the label a probability under
  `min_model_prob` (trusted sources skip this rule);
- **reputation**: a source whose judged items (those other sources or
  people also labelled, and its rejected ones) contradicted the others more
  often than `max_contradiction_rate` is flagged, and all its items held.
- **surge**: the label stream as a whole, whatever token sent it. For each
  pair (the model says A, the label says B), the labels received in the
  last `surge_window_h` are compared with how many a calibrated model
  expects (the sum of its probabilities of B over the items it calls A).
  A pair with at least `surge_min` labels and more than `surge_z` standard
  deviations above that is held for a person, unless a trusted label
  agrees: an attacker who spreads wrong labels over many tokens and images
  no one else labels still moves one pair, and that is what it wants. In a
  surging pair, labels the model agrees with while giving A at least
  `surge_near` are held too (the attacker's images the model already gets wrong).

Trust comes from `trusted_sources` for edge and import items, and from the
token role (`trusted_roles`: the review UI's ``review`` and ``admin``) for
server feedback, whose `source` field any client can set. For the same
reason the rate limit, the one-vote-per-source consensus and reputation key
server feedback by its token's name, not its `source`: a client that sends
each label under a new source name is still one source. The gate re-runs from
scratch each time, so an item accepted before its source was flagged is held
again, until a person decides it. Only changes are logged.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.configs import Config, check
from datamoat.feedback.store import Quarantine

__all__ = ["GateConfig", "evaluate_gate", "production_scorer", "GATE"]

GATE = "gate"  # the actor of the gate's own decisions
Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 (N, C, H, W) -> probabilities (N, K)


@dataclasses.dataclass
class GateConfig(Config):
    """The gate's rules; 0 turns a numeric rule off."""

    max_per_hour: int = 200
    min_model_prob: float = 0.05
    max_contradiction_rate: float = 0.3
    min_judged: int = 5
    trusted_sources: tuple[str, ...] = ()
    trusted_roles: tuple[str, ...] = ("review", "admin")
    require_approval: bool = False
    alias: str = "production"
    surge_z: float = 4.0  # 0 turns the surge rule off
    surge_min: int = 20
    surge_window_h: float = 168.0
    surge_near: float = 0.1  # in a surging pair (A, B), label-B items the model gives A this much are held too

    def validate(self) -> None:
        check(self.max_per_hour >= 0, "max_per_hour must be >= 0 (0 turns the rate limit off)")
        check(0 <= self.min_model_prob < 1, "min_model_prob must be in [0, 1) (0 turns the model check off)")
        check(0 < self.max_contradiction_rate <= 1, "max_contradiction_rate must be in (0, 1]")
        check(self.min_judged >= 1, "min_judged must be at least 1")
        check(self.surge_z >= 0, "surge_z must be >= 0 (0 turns the surge rule off)")
        check(self.surge_min >= 1 and self.surge_window_h > 0, "surge_min must be >= 1 and surge_window_h > 0")


def production_scorer(q: Quarantine, alias: str = "production") -> tuple[list[str], Scorer] | None:
    """(classes, scorer) of the ONNX version `alias` points at, or None."""
    from datamoat.inference.onnx import onnx_predict_proba, ort_session

    vid = q.registry.snapshot()["aliases"].get(alias)
    if vid is None:
        return None
    row = q.registry.version(vid)
    sess = ort_session(q.registry.artifact(row["onnx_sha"]), threads=1)
    return [str(c) for c in row["info"]["classes"]], lambda x: onnx_predict_proba(sess, x, row["info"]["preprocess"])


def _trusted(q: Quarantine, cfg: GateConfig, rows: list[dict[str, Any]]) -> set[int]:
    every = q.registry.list_tokens()
    # Names are identities (never reused); one held twice, in a database from before that
    # rule, identifies nobody, so it earns no trust (M2). Nor does a revoked token.
    counts = collections.Counter(r["name"] for r in every)
    roles = {r["name"]: r["role"] for r in every if counts[r["name"]] == 1 and not r["revoked"]}
    return {
        r["id"]
        for r in rows
        if (r["source"] in cfg.trusted_sources and r["kind"] != "serve")
        or (r["kind"] == "serve" and roles.get(r["actor"]) in cfg.trusted_roles)
    }


def _identity(row: dict[str, Any]) -> str:
    """Who an item counts as: the token for server feedback (its `source` is client-chosen)."""
    return f"token:{row['actor']}" if row["kind"] == "serve" and row.get("actor") else row["source"]


def _consensus(labels: list[tuple[str, str, bool]], exclude: set[str]) -> tuple[str | None, str]:
    """The agreed label of one input from (source, label, trusted) votes, and
    how it was reached: 'trusted', 'majority', 'tie', 'trusted-conflict' or 'none'."""
    trusted = {lab for s, lab, t in labels if t and s not in exclude}
    if len(trusted) == 1:
        return next(iter(trusted)), "trusted"
    if trusted:
        return None, "trusted-conflict"
    votes = Counter(lab for s, lab in {(s, lab) for s, lab, _ in labels if s not in exclude})  # one vote a source
    if not votes:
        return None, "none"
    (top, n), *rest = votes.most_common()
    return (top, "majority") if not rest or n > rest[0][1] else (None, "tie")


def evaluate_gate(
    q: Quarantine, config: GateConfig | None = None, scorer: tuple[list[str], Scorer] | None = None
) -> dict[str, Any]:
    """Mark every item not decided by a person ``accepted`` or ``held``.

    `scorer` is (classes, function from uint8 images (N, C, H, W) to the
    current model's probabilities (N, K)); by default the ONNX version
    `config.alias` points at.
    Returns counts, per-source reputation and the changes made.

    >>> report = evaluate_gate(Quarantine(reg), GateConfig(max_per_hour=50))  # doctest: +SKIP
    >>> report["sources"]["spammer"]["flagged"]  # doctest: +SKIP
    True
    """
    cfg = config or GateConfig()
    rows = [{**r, "source": _identity(r)} for r in q.items()]
    human = {r["id"] for r in rows if r["decided_by"] not in (None, GATE)}
    trusted = _trusted(q, cfg, rows) | {r["id"] for r in rows if r["id"] in human and r["status"] == "accepted"}
    live = [r for r in rows if r["status"] != "rejected"]
    by_hash: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    for r in live:
        by_hash[r["input_sha256"]].append((r["source"], r["label"], r["id"] in trusted))

    # Reputation: how often a source's label differs from what everyone else agreed on.
    rep: dict[str, dict[str, Any]] = defaultdict(lambda: {"items": 0, "judged": 0, "contradicted": 0})
    for r in rows:
        s = rep[r["source"]]
        s["items"] += 1
        if r["id"] in human and r["status"] == "rejected":
            s["judged"] += 1
            s["contradicted"] += 1
            continue
        others, _ = _consensus(by_hash[r["input_sha256"]], exclude={r["source"]})
        if others is not None and r["id"] not in human:
            s["judged"] += 1
            s["contradicted"] += int(r["label"] != others)
    trusted_sources = {r["source"] for r in rows if r["id"] in trusted and r["id"] not in human}
    for name, s in rep.items():
        s["contradiction_rate"] = s["contradicted"] / s["judged"] if s["judged"] else 0.0
        s["flagged"] = (
            name not in trusted_sources
            and s["judged"] >= cfg.min_judged
            and s["contradiction_rate"] > cfg.max_contradiction_rate
        )
    flagged = {name for name, s in rep.items() if s["flagged"]}

    over_rate: set[int] = set()
    if cfg.max_per_hour:
        stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            stream[r["source"]].append(r)
        for items in stream.values():  # sliding one-hour window per source, in arrival order
            start = 0
            for i, r in enumerate(items):
                while items[start]["ts"] <= r["ts"] - 3600:
                    start += 1
                if i - start >= cfg.max_per_hour:
                    over_rate.add(r["id"])

    todo = [r for r in rows if r["id"] not in human]
    probs: dict[int, float] = {}
    dist: dict[int, np.ndarray] = {}  # item id -> the model's probabilities (K,)
    model_note = None
    scored = [r for r in todo if r["id"] not in trusted and r["has_pixels"]]
    if (cfg.min_model_prob > 0 or cfg.surge_z > 0) and scored:
        scorer = scorer or production_scorer(q, cfg.alias)
        if scorer is None:
            model_note = f"no model on alias {cfg.alias!r} to check labels against: promote one"
        else:
            pix = q.pixels([r["id"] for r in scored])
            p = scorer[1](np.stack([pix[r["id"]] for r in scored]))  # (N, K)
            index = {str(c): i for i, c in enumerate(scorer[0])}
            for r, row in zip(scored, p):
                probs[r["id"]] = float(row[index[r["label"]]]) if r["label"] in index else 0.0
                dist[r["id"]] = row
    surges = _surges(cfg, scored, dist, scorer[0] if scorer else []) if cfg.surge_z > 0 and dist else {}

    changes: dict[int, tuple[str, list[str]]] = {}
    for r in todo:
        why = []
        if cfg.require_approval:
            why.append("awaiting human approval")
        if r["source"] in flagged:
            s = rep[r["source"]]
            why.append(f"source flagged: {s['contradicted']}/{s['judged']} judged items contradicted others")
        if r["id"] in over_rate:
            why.append(f"rate limit: over {cfg.max_per_hour} items an hour from {r['source']!r}")
        if not r["has_pixels"]:
            why.append("no pixels: submit the image with its prediction id to make it trainable")
        label, how = _consensus(by_hash[r["input_sha256"]], exclude=flagged)
        if how in ("tie", "trusted-conflict"):
            why.append("sources disagree on this input")
        elif label is not None and label != r["label"] and r["id"] not in trusted:
            why.append(
                f"{'contradicts trusted reviewer' if how == 'trusted' else 'conflicts with other sources'}: "
                f"they say {label!r}"
            )
        pair = _pair(r, dist, scorer[0] if scorer else [], surges, cfg.surge_near)
        if pair in surges and not (how == "trusted" and label == r["label"]):
            n, expected, z, sources = surges[pair]
            why.append(
                f"surge: {n} labels say {pair[1]!r} where the model says {pair[0]!r}, from {sources} "
                f"source(s); a calibrated model expects {expected:.0f} (z={z:.1f}): a person confirms them"
            )
        if cfg.min_model_prob > 0 and r["id"] in probs and probs[r["id"]] < cfg.min_model_prob:
            why.append(f"disagrees with model: p({r['label']})={probs[r['id']]:.3f} < {cfg.min_model_prob:g}")
        if model_note and r["id"] not in trusted and r["has_pixels"]:
            why.append(model_note)
        new = ("held", why) if why else ("accepted", [])
        if (r["status"], r["reasons"]) != new or r["decided_by"] is None:
            changes[r["id"]] = new
    q.set_status(changes, GATE)
    status = Counter(r["status"] for r in q.items())
    return {
        "counts": dict(status),
        "changed": len(changes),
        "flagged": sorted(flagged),
        "surges": [
            {"model": a, "label": b, "labels": n, "expected": e, "z": z, "sources": s}
            for (a, b), (n, e, z, s) in surges.items()
        ],
        "sources": {k: dict(v) for k, v in rep.items()},
        "config": cfg.to_dict(),
    }


def _pair(
    r: dict[str, Any], dist: dict[int, np.ndarray], classes: list[str], surges: Any = (), near: float = 1.0
) -> tuple[str, str] | None:
    """(what the model says, what the label says) where they differ, else None.

    Where a pair (A, B) surges, a label B that the model agrees with while
    still giving A at least `near` counts as that pair too: an attacker's
    wrong label on an image the model already gets wrong looks like agreement.
    """
    p = dist.get(r["id"])
    if p is None:
        return None
    said = classes[int(p.argmax())]
    if said != r["label"]:
        return (said, r["label"])
    for a, b in surges:
        if b == r["label"] and p[classes.index(a)] >= near:
            return (a, b)
    return None


def _surges(
    cfg: GateConfig, rows: list[dict[str, Any]], dist: dict[int, np.ndarray], classes: list[str]
) -> dict[tuple[str, str], tuple[int, float, float, int]]:
    """Pairs (model says A, label says B) with far more labels than the model expects.

    Over the window's items the model calls A, a calibrated model expects
    sum p(B) honest B labels, with variance sum p(B)(1 - p(B)); a pair is a
    surge when its count passes `surge_min` and lies more than `surge_z`
    deviations above that. The +1 in the variance keeps a handful of labels
    on a pair the model is sure of from counting as a surge.
    """
    since = time.time() - cfg.surge_window_h * 3600
    window = [r for r in rows if r["ts"] >= since and r["id"] in dist]
    index = {c: i for i, c in enumerate(classes)}
    expected: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(classes)))
    variance: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(classes)))
    seen: Counter[tuple[str, str]] = Counter()
    sources: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in window:
        p = dist[r["id"]]
        a = classes[int(p.argmax())]
        expected[a] += p
        variance[a] += p * (1 - p)
        pair = _pair(r, dist, classes)
        if pair is not None and pair[1] in index:
            seen[pair] += 1
            sources[pair].add(r["source"])
    out = {}
    for (a, b), n in seen.items():
        e, v = float(expected[a][index[b]]), float(variance[a][index[b]])
        z = (n - e) / math.sqrt(v + 1.0)
        if n >= cfg.surge_min and z > cfg.surge_z:
            out[(a, b)] = (n, e, z, len(sources[(a, b)]))
    return out
