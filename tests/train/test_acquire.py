"""Acquisition strategies on constructed pools where the right pick is known, their determinism,
and the memory-bounded paths against brute force."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from datamoat.errors import BadInput
from datamoat.train import acquire
from datamoat.train.acquire import STRATEGIES, AcquireConfig, model_outputs, scores, select


def cfg(strategy: str, budget: int, **kw) -> AcquireConfig:
    return AcquireConfig(strategy=strategy, budget=budget, **kw)


def test_margin_picks_the_closest_top_two():
    p = np.array([[0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1], [0.5, 0.45, 0.05]])
    assert select(p, None, cfg("margin", 3)).tolist() == [1, 3, 2]


def test_entropy_and_margin_disagree_where_they_should():
    # Item 0 is a coin flip between two classes (margin 0); item 1 spreads over three (more entropy).
    p = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.98, 0.01, 0.01]])
    assert select(p, None, cfg("margin", 1)).tolist() == [0]
    assert select(p, None, cfg("entropy", 2)).tolist() == [1, 0]


def test_disagreement_ranks_what_the_members_dispute_not_what_they_all_find_hard():
    a = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])  # member 1 on items 0, 1, 2
    b = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])  # member 2 disputes item 1 only
    members = np.stack([a, b])  # (M, N, K)
    mean = members.mean(0)
    assert select(mean, None, cfg("margin", 1)).tolist() == [2]  # the consensus finds item 2 hardest
    for measure in ("kl", "vote"):
        assert select(mean, None, cfg("disagreement", 1, disagreement=measure), member_probs=members).tolist() == [1]
    # Vote entropy ties items 0 and 2 (both unanimous); KL orders the tie, then the seed.
    s = scores(mean, "disagreement", members, "vote")
    assert s[1] > s[0] and s[1] > s[2]


def test_kcenter_starts_from_the_labelled_items_and_spreads():
    labelled = np.array([[0.0, 0.0]])
    pool = np.array([[0.1, 0.0], [0.0, 0.1], [5.0, 0.0], [10.0, 0.0], [-6.0, 0.0]])
    p = np.full((5, 2), 0.5)
    # Farthest from the labelled point: 10; then the farthest from it and the labelled: -6; then 5.
    assert select(p, pool, cfg("kcenter", 3), labelled_embeddings=labelled).tolist() == [3, 4, 2]


def test_badge_starts_at_the_longest_gradient_and_never_repeats_a_copy():
    # Five copies of an uncertain item with a long embedding, five of another kind: after one of the
    # first group, its copies are at distance 0 (never drawn), so the second pick is of the other group.
    p = np.array([[0.5, 0.5]] * 5 + [[0.5, 0.5]] * 5)
    emb = np.array([[3.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    for seed in range(5):
        out = select(p, emb, cfg("badge", 2, seed=seed))
        assert out[0] < 5 <= out[1]
    # A confident item has a short gradient even with a long embedding: not the first pick.
    p2 = np.array([[0.999, 0.001], [0.6, 0.4]])
    assert select(p2, np.array([[100.0, 0.0], [1.0, 0.0]]), cfg("badge", 1)).tolist() == [1]
    # Identical items only: every pick is still a different item.
    same = select(np.full((20, 3), 1 / 3), np.ones((20, 4)), cfg("badge", 20))
    assert sorted(same.tolist()) == list(range(20))


def test_hybrid_takes_uncertain_candidates_then_spreads_them():
    p = np.array(
        [[0.5, 0.5], [0.51, 0.49], [0.6, 0.4], [0.62, 0.38], [0.99, 0.01], [0.99, 0.01]]
    )  # margins 0, .02, .2, .24, .98, .98
    emb = np.array([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0], [0.0, 6.0], [100.0, 100.0], [-100.0, 100.0]])
    assert select(p, emb, cfg("margin", 2)).tolist() == [0, 1]  # the near-duplicate pair
    # Candidates: the 4 most uncertain (factor 2 x budget 2); the most uncertain, then the farthest
    # candidate from it; the confident far-away items are never candidates.
    assert select(p, emb, cfg("hybrid", 2, hybrid_factor=2)).tolist() == [0, 3]


def test_random_is_seeded():
    p = np.full((50, 3), 1 / 3)
    a, b = select(p, None, cfg("random", 10, seed=1)), select(p, None, cfg("random", 10, seed=1))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10
    assert a.tolist() != select(p, None, cfg("random", 10, seed=2)).tolist()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_with_a_seed(strategy):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=300)  # (N, K)
    p[:40] = 0.25  # ties: the seed must order them the same way each time
    emb = rng.normal(size=(300, 8))
    members = np.stack([p, rng.dirichlet(np.ones(4), size=300), rng.dirichlet(np.ones(4), size=300)])
    kw = dict(labelled_embeddings=emb[:20] + 0.5, member_probs=members)
    runs = [select(p, emb, cfg(strategy, 25, seed=3), **kw).tolist() for _ in range(2)]
    assert runs[0] == runs[1] and len(set(runs[0])) == 25
    if strategy in ("margin", "entropy"):  # 40 tied items lead: another seed orders them differently
        assert select(p, emb, cfg(strategy, 25, seed=4), **kw).tolist() != runs[0]


def brute_kcenter(emb, labelled, budget, seed):
    """k-center greedy with full distance matrices, in float64, drawing as `select` draws."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(emb))
    e = emb[order].astype(np.float64)
    dist = ((e[:, None] - labelled[None].astype(np.float64)) ** 2).sum(-1).min(1)
    picks = []
    for _ in range(budget):
        i = int(np.argmax(dist))
        picks.append(i)
        dist = np.minimum(dist, ((e - e[i]) ** 2).sum(-1))
        dist[picks] = -np.inf
    return order[picks]


def brute_badge(p, emb, budget, seed):
    """BADGE with the gradient embeddings materialised (N, K*D), in float64."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(p))
    pp, h = p[order].astype(np.float64), emb[order].astype(np.float64)
    a = pp.copy()
    a[np.arange(len(a)), pp.argmax(1)] -= 1
    g = (a[:, :, None] * h[:, None, :]).reshape(len(a), -1)  # (N, K*D)
    dist, chosen, picks = np.full(len(g), np.inf), np.zeros(len(g), bool), []
    for _ in range(budget):
        if not picks:
            i = int(np.argmax((g**2).sum(1)))
        else:
            w = np.where(chosen, 0.0, dist)
            i = int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))
        picks.append(i)
        chosen[i] = True
        dist = np.minimum(dist, ((g - g[i]) ** 2).sum(1))
    return order[picks]


def test_blocked_distances_match_brute_force_on_a_few_thousand_points(monkeypatch):
    rng = np.random.default_rng(1)
    n, k, d = 3000, 10, 16
    p = rng.dirichlet(np.ones(k) * 0.3, size=n).astype(np.float32)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    labelled = rng.normal(size=(700, d)).astype(np.float32)
    monkeypatch.setattr(acquire, "_BLOCK", 5000)  # many small blocks: the blocking must not change the answer
    got = select(p, emb, cfg("kcenter", 40, seed=5), labelled_embeddings=labelled)
    assert got.tolist() == brute_kcenter(emb, labelled, 40, 5).tolist()
    assert select(p, emb, cfg("badge", 40, seed=5)).tolist() == brute_badge(p, emb, 40, 5).tolist()


def test_badge_and_kcenter_stay_far_below_the_materialised_size():
    rng = np.random.default_rng(2)
    n, k, d = 20000, 10, 64
    p = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    labelled = rng.normal(size=(4000, d)).astype(np.float32)
    tracemalloc.start()
    try:
        select(p, emb, cfg("badge", 50))
        _, badge_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        select(p, emb, cfg("kcenter", 50), labelled_embeddings=labelled)
        _, kcenter_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert badge_peak < n * k * d * 4 / 4  # a quarter of the (N, K*D) float32 gradient embeddings
    assert kcenter_peak < n * 4000 * 4 / 4  # a quarter of the (N, L) distance matrix


def test_bad_input_is_one_line():
    p = np.full((3, 2), 0.5)
    cases = [
        (lambda: select(np.empty((0, 2)), None, cfg("margin", 1)), "the pool is empty"),
        (lambda: select(p, None, cfg("margin", 4)), "budget 4 is larger than the pool's 3"),
        (lambda: cfg("uncertainty", 1), "unknown strategy 'uncertainty'"),
        (lambda: select(p, None, cfg("kcenter", 1)), "needs one embedding per pool item"),
        (lambda: select(p, None, cfg("disagreement", 1)), "at least 2 models"),
        (lambda: select(p, np.ones((3, 2)), cfg("kcenter", 1), labelled_embeddings=np.ones((2, 3))), "dimensions"),
    ]
    for call, message in cases:
        with pytest.raises(BadInput, match=message) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from datamoat.data import import_digits
    from datamoat.models import new_model, save_model
    from datamoat.train import TrainConfig, train
    from datamoat.workspace import Workspace

    ws = Workspace.init(tmp_path_factory.mktemp("ws"))
    ds = import_digits(ws)
    model = train(new_model("mlp", ds), ds, TrainConfig(epochs=2, threads=1), progress=False)
    return ws, ds, save_model(ws, model, name="digits-mlp")


def test_model_outputs_reads_the_classifier_input(saved):
    _, ds, model = saved
    rows = np.arange(0, 300, 7)
    probs, emb = model_outputs(model, ds.x, rows, batch_size=16)
    assert np.allclose(probs, model.predict_proba(ds.x, rows=rows), atol=1e-5)
    with torch.no_grad():  # the MLP's classifier is Sequential(..., Linear): its input is the embedding
        h = model.net.classifier[:-1](model.to_tensor(ds.x[rows])).numpy()
    assert emb.shape == (len(rows), 128) and np.allclose(emb, h, atol=1e-5)
