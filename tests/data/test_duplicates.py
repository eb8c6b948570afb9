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
