"""Feedback into quarantine, the poisoning gate, and retraining from it.

Feedback never goes straight into training data: it lands in a quarantine
(`Quarantine`), `evaluate_gate` accepts or holds each item, a person decides
the held ones, and `retrain_from_feedback` turns accepted items into a new
dataset version and a candidate model registered only if it is better.
"""

from typing import Any

from datamoat.feedback.gate import GATE, GateConfig, evaluate_gate, production_scorer
from datamoat.feedback.store import KINDS, STATUSES, Quarantine
from datamoat.registry.answer_rows import input_hash

# `retrain` trains models, so it loads torch; the serving process (review
# decisions go through the quarantine) should not pay for that. Loaded on use.
_RETRAIN = ("RetrainConfig", "accepted_feedback", "compare", "retrain_from_feedback")


def __getattr__(name: str) -> Any:
    if name in _RETRAIN:
        from datamoat.feedback import retrain

        return getattr(retrain, name)
    raise AttributeError(f"module 'datamoat.feedback' has no attribute {name!r}")


__all__ = [
    "GATE",
    "KINDS",
    "STATUSES",
    "GateConfig",
    "Quarantine",
    "RetrainConfig",
    "accepted_feedback",
    "compare",
    "evaluate_gate",
    "input_hash",
    "production_scorer",
    "retrain_from_feedback",
]
