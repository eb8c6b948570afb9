"""Paired comparison of two versions: agreement, confidence, class mix, exact McNemar, the rules."""

import pytest

from datamoat.errors import BadInput
from datamoat.evaluate.compare import ReleaseRules, compare_pairs, decide, mcnemar


def test_mcnemar_matches_the_binomial_by_hand():
    # 7 discordant pairs, B right on 1: two-sided exact p = 2 * P(X <= 1), X ~ Bin(7, 1/2)
    r = mcnemar(b=6, c=1, n=50)
    assert r["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)
    assert r["difference"] == pytest.approx(-5 / 50)
    lo, hi = r["interval"]
    assert lo < r["difference"] < hi and lo >= -7 / 50 and hi <= 7 / 50  # never past the discordant share
    assert mcnemar(0, 0, 10) == {"b": 0, "c": 0, "n": 10, "p_value": 1.0, "difference": 0.0, "interval": [0.0, 0.0]}
    assert mcnemar(5, 5, 20)["p_value"] == pytest.approx(1.0)
    with pytest.raises(BadInput, match="do not fit"):
        mcnemar(6, 6, 10)


def test_the_interval_covers_at_its_level():
    # Simulated pairs with a true difference of -0.05: the 95% interval covers it about 95% of the time.
    import numpy as np

    rng = np.random.default_rng(0)
    n, hits = 400, 0
    for _ in range(300):
        u = rng.random(n)  # discordant only A right 0.10, only B right 0.05
        b, c = int((u < 0.10).sum()), int(((u >= 0.10) & (u < 0.15)).sum())
        lo, hi = mcnemar(b, c, n)["interval"]
        hits += lo <= -0.05 <= hi
    assert 0.90 <= hits / 300 <= 0.995


def test_compare_pairs_reports_agreement_confidence_and_mix():
    a = ["cat", "cat", "dog", None]
    b = ["cat", "dog", "dog", "dog"]
    r = compare_pairs(a, b, [0.9, 0.8, 0.7, 0.0], [0.8, 0.6, 0.9, 0.5], truth=["cat", "cat", None, "dog"])
    assert r["n"] == 4 and r["agreement"] == 0.5
    assert r["confidence"]["change"] == pytest.approx((2.8 - 2.4) / 4)
    # A: cat 1/2, dog 1/4, abstain 1/4; B: cat 1/4, dog 3/4 -> TVD = (1/4 + 1/2 + 1/4) / 2
    assert r["class_mix"]["tvd"] == pytest.approx(0.5)
    lab = r["labelled"]
    # labelled: items 0, 1, 3. A right on 0 and 1, B right on 0 and 3: one discordant pair each way
    assert lab["n"] == 3 and lab["accuracy_a"] == pytest.approx(2 / 3) and lab["accuracy_b"] == pytest.approx(2 / 3)
    assert (lab["mcnemar"]["b"], lab["mcnemar"]["c"]) == (1, 1)
    assert compare_pairs([], [], [], [])["agreement"] is None
    with pytest.raises(BadInput, match="pair up"):
        compare_pairs(["a"], [], [1.0], [])


def _result(n, agree, b=0, c=0, m=0):
    return {"n": n, "agreement": agree, "labelled": {"n": m, **{"accuracy_a": 0.0, "accuracy_b": 0.0},
            "mcnemar": mcnemar(b, c, m) if m else None} if m else None}  # fmt: skip


def test_decide_follows_each_rule():
    rules = ReleaseRules(enabled=True, min_pairs=100, min_agreement=0.9, min_labelled=200, max_drop=0.02)
    assert decide(_result(50, 0.5), rules)[0] is None  # too few pairs for the agreement rule
    assert decide(_result(100, 0.85), rules)[0] == "rollback"
    assert decide(_result(100, 0.95, 3, 3, 150), rules) == (None, "150 of 200 labelled pairs")
    assert decide(_result(500, 0.95, 20, 5, 200), rules)[0] == "rollback"  # B worse, p < 0.05
    assert decide(_result(500, 0.95, 2, 6, 400), rules)[0] == "promote"  # lower end above -0.02
    assert decide(_result(500, 0.95, 9, 6, 200), rules)[0] == "hold"  # interval reaches below -0.02
    assert decide(_result(500, 0.5), ReleaseRules())[0] is None  # rules off: never acts


def test_rules_are_validated():
    with pytest.raises(BadInput, match="min_agreement"):
        ReleaseRules(min_agreement=1.5)
    with pytest.raises(BadInput, match="max_drop"):
        ReleaseRules(max_drop=1.0)
