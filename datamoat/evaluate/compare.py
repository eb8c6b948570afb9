"""Two versions on the same inputs: how often they agree, how their confidence and class mix
differ, and, where people's labels exist, whether one is more accurate (exact McNemar test).

Canary and shadow releases give such pairs: a shadow candidate runs on the production inputs, and a
canary's requests are also run through the production version, both off the request path. Every
pair is the same input through both, so the accuracy difference is paired: McNemar's test looks
only at the discordant pairs (one right, the other wrong), and under "equally accurate" each of
those is a fair coin, so the exact binomial test needs no large-sample approximation.

`ReleaseRules` state when a release is promoted or rolled back without a person, and `decide`
applies them. The label test is taken once, at the first look with `min_labelled` labelled pairs,
so its error level holds as stated (a test repeated at every look would not).

>>> r = compare_pairs(["a", "b", "a"], ["a", "b", "b"], [0.9, 0.8, 0.7], [0.9, 0.6, 0.6])
>>> r["agreement"], r["n"]
(0.6666666666666666, 3)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

from datamoat.configs import Config, check

__all__ = ["ReleaseRules", "compare_pairs", "mcnemar", "decide"]


@dataclasses.dataclass
class ReleaseRules(Config):
    """When a canary or shadow candidate B is promoted over the production version A, or rolled
    back, automatically. Empty rules (`enabled` False) leave the decision to a person.

    - rollback early, without labels, once `min_pairs` pairs agree less than `min_agreement`;
    - at the first look with `min_labelled` labelled pairs (one look: the test's level holds):
      roll back when B is less accurate at level `alpha` (exact McNemar), promote when the lower
      end of the (1 - `alpha`) interval of accuracy(B) - accuracy(A) is above `-max_drop` and the
      agreement is at least `min_agreement`, else hold for a person.

    >>> ReleaseRules(enabled=True, max_drop=0.01).min_labelled
    200
    """

    enabled: bool = False
    min_pairs: int = 500
    min_agreement: float = 0.8
    min_labelled: int = 200
    alpha: float = 0.05
    max_drop: float = 0.01  # non-inferiority margin: B may be this much less accurate and still promoted

    def validate(self) -> None:
        check(self.min_pairs >= 1, f"min_pairs must be at least 1, got {self.min_pairs}")
        check(0 <= self.min_agreement <= 1, f"min_agreement must be in [0, 1], got {self.min_agreement}")
        check(self.min_labelled >= 1, f"min_labelled must be at least 1, got {self.min_labelled}")
        check(0 < self.alpha < 1, f"alpha must be in (0, 1), got {self.alpha}")
        check(0 <= self.max_drop < 1, f"max_drop must be in [0, 1), got {self.max_drop}")


def mcnemar(b: int, c: int, n: int, alpha: float = 0.05) -> dict[str, Any]:
    """Exact McNemar test on `n` labelled pairs: `b` where only A was right, `c` where only B was.

    Returns the two-sided p-value, the difference accuracy(B) - accuracy(A) = (c - b) / n, and a
    (1 - alpha) interval for it conditional on the b + c discordant pairs (Clopper-Pearson on the
    share c / (b + c), scaled by (b + c) / n).

    >>> r = mcnemar(b=10, c=2, n=100)
    >>> round(r["p_value"], 4), r["difference"]
    (0.0386, -0.08)
    """
    from scipy.stats import binomtest

    check(min(b, c) >= 0 and b + c <= n, f"discordant counts b={b}, c={c} do not fit {n} pairs")
    d = b + c
    if d == 0:
        return {"b": b, "c": c, "n": n, "p_value": 1.0, "difference": 0.0, "interval": [0.0, 0.0]}
    test = binomtest(c, d, 0.5)
    ci = test.proportion_ci(1 - alpha, method="exact")
    scale = d / n
    return {
        "b": b,
        "c": c,
        "n": n,
        "p_value": float(test.pvalue),
        "difference": (c - b) / n,
        "interval": [scale * (2 * ci.low - 1), scale * (2 * ci.high - 1)],
    }


def compare_pairs(
    a: Sequence[str | None],
    b: Sequence[str | None],
    conf_a: Sequence[float],
    conf_b: Sequence[float],
    truth: Sequence[str | None] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare A's and B's answers on the same inputs (None: abstained); `truth` holds people's
    labels where they exist (None elsewhere).

    >>> r = compare_pairs(["x", "y"], ["x", "x"], [0.9, 0.9], [0.8, 0.7], truth=["x", "y"])
    >>> r["labelled"]["accuracy_a"], r["labelled"]["accuracy_b"]
    (1.0, 0.5)
    """
    n = len(a)
    check(len(b) == n == len(conf_a) == len(conf_b), "A's and B's answers and confidences must pair up")
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out | {"agreement": None, "labelled": None}
    mix_a, mix_b = Counter(a), Counter(b)
    classes = sorted({str(k) for k in mix_a | mix_b})
    share_a = {k: mix_a.get(k, 0) / n for k in mix_a}
    share_b = {k: mix_b.get(k, 0) / n for k in mix_b}
    out["agreement"] = sum(x == y for x, y in zip(a, b, strict=True)) / n
    out["confidence"] = {
        "mean_a": sum(conf_a) / n,
        "mean_b": sum(conf_b) / n,
        "change": (sum(conf_b) - sum(conf_a)) / n,
    }
    out["class_mix"] = {
        "a": {str(k): v for k, v in sorted(share_a.items(), key=lambda kv: str(kv[0]))},
        "b": {str(k): v for k, v in sorted(share_b.items(), key=lambda kv: str(kv[0]))},
        # total variation distance: the share of answers that would have to change class
        "tvd": 0.5 * sum(abs(share_a.get(k, 0) - share_b.get(k, 0)) for k in mix_a | mix_b),
        "classes": classes,
    }
    out["labelled"] = None
    if truth is not None:
        rows = [(x, y, t) for x, y, t in zip(a, b, truth, strict=True) if t is not None]
        if rows:
            ra = [x == t for x, _, t in rows]
            rb = [y == t for _, y, t in rows]
            only_a = sum(p and not q for p, q in zip(ra, rb, strict=True))
            only_b = sum(q and not p for p, q in zip(ra, rb, strict=True))
            m = len(rows)
            out["labelled"] = {
                "n": m,
                "accuracy_a": sum(ra) / m,
                "accuracy_b": sum(rb) / m,
                "mcnemar": mcnemar(only_a, only_b, m, alpha),
            }
    return out


def decide(result: dict[str, Any], rules: ReleaseRules) -> tuple[str | None, str]:
    """What `rules` say about a `compare_pairs` result: ("promote" | "rollback" | "hold" | None, why).
    None: not enough pairs yet, nothing to do.

    >>> rules = ReleaseRules(enabled=True, min_pairs=2, min_agreement=0.9, min_labelled=100)
    >>> decide(compare_pairs(["x", "y"], ["y", "x"], [1, 1], [1, 1]), rules)[0]
    'rollback'
    """
    if not rules.enabled or result["n"] == 0:
        return None, "no rules" if not rules.enabled else "no pairs yet"
    agree = result["agreement"]
    if result["n"] >= rules.min_pairs and agree < rules.min_agreement:
        return "rollback", f"agreement {agree:.3f} over {result['n']} pairs is below {rules.min_agreement}"
    lab = result.get("labelled")
    if lab is None or lab["n"] < rules.min_labelled:
        have = 0 if lab is None else lab["n"]
        return None, f"{have} of {rules.min_labelled} labelled pairs"
    mc = lab["mcnemar"]
    if mc["difference"] < 0 and mc["p_value"] < rules.alpha:
        return "rollback", (
            f"B is less accurate: {lab['accuracy_b']:.3f} against {lab['accuracy_a']:.3f} on {lab['n']} labelled "
            f"pairs (exact McNemar p={mc['p_value']:.3g} < {rules.alpha})"
        )
    if mc["interval"][0] > -rules.max_drop and agree >= rules.min_agreement:
        return "promote", (
            f"B is no worse than A by more than {rules.max_drop}: accuracy difference {mc['difference']:+.3f}, "
            f"interval [{mc['interval'][0]:+.3f}, {mc['interval'][1]:+.3f}] on {lab['n']} labelled pairs"
        )
    return "hold", (
        f"inconclusive on {lab['n']} labelled pairs: difference {mc['difference']:+.3f}, interval "
        f"[{mc['interval'][0]:+.3f}, {mc['interval'][1]:+.3f}]; a person decides"
    )
