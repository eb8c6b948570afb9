"""M8: the gate's rate, reputation and consensus rules work per token, so an
attacker with many tokens, labelling images no honest source labels, met only
the model-agreement rule, which passes exactly the wrong labels the model
finds plausible. The surge rule watches the label stream as a whole."""

from __future__ import annotations

import numpy as np
import pytest

from datamoat.feedback import GateConfig, Quarantine, evaluate_gate, production_scorer


@pytest.fixture
def q(fresh) -> Quarantine:
    return Quarantine(fresh.reg)


def streams(world, q: Quarantine) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Honest images (correct labels) and attack images: a class the model gets
    right but finds a second class plausible for (p >= 0.05), as an attacker picks."""
    classes, score = production_scorer(q)
    x, y = world.ds.x, world.ds.y
    p = score(x)  # (N, K)
    second = np.argsort(-p, 1)[:, 1]
    plausible = (p.argmax(1) == y) & (p[np.arange(len(y)), second] >= 0.05)
    pairs = np.stack([y[plausible], second[plausible]], 1)
    values, counts = np.unique(pairs, axis=0, return_counts=True)
    a, b = values[counts.argmax()]
    attack = np.flatnonzero(plausible & (y == a) & (second == b))[:60]
    honest = np.setdiff1d(np.random.default_rng(0).permutation(len(y))[:400], attack)[:300]
    return honest, attack, classes[a], classes[b]


def test_m8_wrong_labels_spread_over_thirty_tokens_are_held_and_honest_ones_are_not(world, q):
    honest, attack, a, b = streams(world, q)
    x, y = world.ds.x, world.ds.y
    for k in range(10):  # ten honest sources, 30 labels each
        part = honest[k::10]
        q.import_items(x[part], [str(q_) for q_ in y[part]], source=f"user-{k}")
    for k in range(30):  # thirty attacker tokens, 2 labels each, on images no one else labels
        part = attack[2 * k : 2 * k + 2]
        q.import_items(x[part], [b] * len(part), source=f"sybil-{k:02d}")
    report = evaluate_gate(q, GateConfig())
    items = q.items()
    evil = [r for r in items if r["source"].startswith("sybil")]
    good = [r for r in items if r["source"].startswith("user")]
    assert all(r["status"] == "held" for r in evil), [r["reasons"] for r in evil if r["status"] != "held"][:3]
    assert all(any(why.startswith("surge") for why in r["reasons"]) for r in evil)
    assert sum(r["status"] == "accepted" for r in good) / len(good) >= 0.9
    # One pair, the attacked one; an honest label that happens to fall on it counts too (and waits for a person).
    assert [(s["model"], s["label"]) for s in report["surges"]] == [(a, b)] and report["surges"][0]["sources"] >= 30


def test_m8_an_honest_stream_sets_off_no_surge(world, q):
    honest, _, _, _ = streams(world, q)
    x, y = world.ds.x, world.ds.y
    for k in range(10):
        part = honest[k::10]
        q.import_items(x[part], [str(v) for v in y[part]], source=f"user-{k}")
    assert evaluate_gate(q, GateConfig())["surges"] == []
