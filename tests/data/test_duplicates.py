"""Exact twins and near duplicates, computed a block at a time, against the plain all-at-once answer."""

import hashlib
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.data import SPLITS, duplicates
from datamoat.data.duplicates import exact_twins, near_duplicates


def test_exact_twins_are_every_later_copy_paired_with_the_first():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (300, 1, 2, 2), dtype=np.uint8)  # 81 distinct images: many copies of each
    groups = defaultdict(list)
    for i, img in enumerate(x):
        groups[hashlib.sha256(img.tobytes()).hexdigest()].append(i)
    want = {(m[0], other) for m in groups.values() for other in m[1:]}
    got = list(exact_twins(x))
    assert set(got) == want and len(got) == len(want) == 300 - len(groups)


def test_near_duplicates_in_small_blocks_match_the_whole_similarity_matrix(digits, monkeypatch):
    train = np.flatnonzero(digits.split == SPLITS["train"])
    # Blocks far smaller than the pool, with a last block that is short, so every seam is crossed.
    monkeypatch.setattr(duplicates, "BLOCK", 64)
    monkeypatch.setattr(duplicates, "KEYS", 192)
    pairs = near_duplicates(digits, train, 0.97, 5000)
    t = torch.from_numpy(digits.x[train].astype(np.float32)).flatten(1)  # (n, D), 8x8: not downsampled
    v = F.normalize(t - t.mean(1, keepdim=True), dim=1)
    sim = v @ v.T  # (n, n)
    sim.fill_diagonal_(-1.0)
    best, j = sim.max(1)
    want = {tuple(sorted((int(train[i]), int(train[j[i]])))) for i in torch.nonzero(best >= 0.97).flatten().tolist()}
    assert len(pairs) > 10  # enough pairs at this threshold for the comparison to mean something
    assert {(p["a"], p["b"]) for p in pairs} == want


def test_a_dataset_of_copies_ranks_conflicts_then_twins_then_similarity_and_keeps_the_cap(digits, monkeypatch):
    """Most images are copies (so twins outnumber the cap), labels left as they were (so many twins
    conflict), near pairs beside them: the kept pairs are the plain sort's first, dicts of every pair."""
    import dataclasses

    monkeypatch.setattr(duplicates, "MAX_NEAR_PAIRS", 60)
    rng = np.random.default_rng(1)
    copies = dataclasses.replace(digits, x=np.ascontiguousarray(digits.x[rng.integers(0, 200, len(digits.y))]))
    train = np.flatnonzero(copies.split == SPLITS["train"])
    got = near_duplicates(copies, train, 0.97, 5000)
    pairs = dict.fromkeys(exact_twins(copies.x), 1.0)  # the plain answer: every pair a dict entry
    assert len(pairs) > 1000  # far more twins than the cap
    for p in near_duplicates(copies, train, 0.97, 0):  # max_samples 0: twins alone
        assert p["exact"]
    want = []
    for (a, b), s in pairs.items():
        ya, yb = int(copies.y[a]), int(copies.y[b])
        want.append({"a": a, "b": b, "similarity": s, "exact": True, "labels": [ya, yb], "conflict": ya != yb})
    want.sort(key=lambda p: (not p["conflict"], -p["similarity"], p["a"], p["b"]))
    conflicts = sum(w["conflict"] for w in want)
    assert 60 < conflicts < len(want)  # the cap falls among the conflicting twins
    assert [{k: p[k] for k in ("a", "b", "similarity", "exact", "labels", "conflict")} for p in got] == want[:60]


def test_twins_cost_a_column_not_an_object_a_pair(digits):
    import dataclasses
    import tracemalloc

    rng = np.random.default_rng(2)
    n = 60_000
    rows = rng.integers(0, len(digits.y), n)
    copies = dataclasses.replace(
        digits, x=np.ascontiguousarray(digits.x[rows]), y=digits.y[rows], split=np.zeros(n, np.int8)
    )
    tracemalloc.start()
    try:
        got = near_duplicates(copies, np.arange(n), 0.97, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    twins = n - len(np.unique(rows))
    assert len(got) == duplicates.MAX_NEAR_PAIRS and twins > 55_000
    assert peak < 120 * twins, peak / twins  # a dict a pair took about 740 bytes
