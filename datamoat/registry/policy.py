"""Validating a version's review policy: the thresholds serving applies, and where they came from."""

from __future__ import annotations

from typing import Any

from datamoat.configs import check
from datamoat.registry.tables import POLICY_FIELDS

__all__ = ["clean_policy"]


def _probability(name: str, value: Any, low_ok: bool = False) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (0 <= value < 1 if low_ok else 0 < value < 1)
    check(
        ok,
        f"{name} must be in {'[0' if low_ok else '(0'}, 1), got {value!r}: e.g. 0.9 sends answers "
        "below 90% confidence to review",
    )
    return float(value)


def clean_policy(policy: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """A validated copy of a review policy for a version with `classes`.

    >>> clean_policy({"threshold": 0.9}, ["a", "b"])["threshold"]
    0.9
    """
    check(isinstance(policy, dict), f"a policy is a dict such as {{'threshold': 0.9}}, got {type(policy).__name__}")
    unknown = sorted(set(policy) - set(POLICY_FIELDS))
    check(not unknown, f"unknown policy field(s) {', '.join(unknown)}: allowed are {', '.join(POLICY_FIELDS)}")
    thr = policy.get("threshold")
    out: dict[str, Any] = {"threshold": None if thr is None else _probability("threshold", thr), "per_class": None}
    per = policy.get("per_class")
    if per is not None:
        check(isinstance(per, dict), "per_class must map class names to thresholds, e.g. {'cat': 0.95}")
        bad = sorted(str(k) for k in per if str(k) not in classes)
        check(
            not bad,
            f"per-class threshold(s) for unknown class(es) {', '.join(bad)}: "
            f"the version's classes are {', '.join(classes)}",
        )
        # None: that class always goes to review; 0: that class never does.
        out["per_class"] = {
            str(k): None if v is None else _probability(f"the threshold of class {k!r}", v, True)
            for k, v in per.items()
        }
    for key in ("target_accuracy", "delta"):
        if policy.get(key) is not None:
            out[key] = _probability(key, policy[key])
    for key in ("method", "source"):
        if policy.get(key) is not None:
            check(isinstance(policy[key], str) and len(policy[key]) <= 500, f"{key} must be a string (<= 500 chars)")
            out[key] = policy[key]
    return out
