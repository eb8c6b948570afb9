"""The live check of the proof of concept's guarantee, run on the audit sample people review.

A version whose review policy came from `poc` names the accuracy its automated answers must meet
(``target_accuracy``). Servers send a random share of those automated answers to review
(`ServeConfig.audit_fraction`); each decision says whether the automated answer was right.
`check_guarantee` runs `GuaranteeCheck` over those decisions in order; `enforce_guarantee` also
acts once it fails: every answer of the version to review (its policy then reviews every class), or
a rollback of each alias serving it. Either is a registry command, so it is audited and servers
apply it at their next poll; a ``guarantee`` webhook says what happened.
"""

from __future__ import annotations

from typing import Any

from datamoat.errors import BadInput
from datamoat.evaluate.guarantee import GuaranteeCheck, GuaranteeConfig
from datamoat.registry.alerts import send_alert
from datamoat.registry.core import Registry
from datamoat.registry.ledger import audit_decisions
from datamoat.registry.tables import POLICY_FIELDS

__all__ = ["GUARANTEE_SOURCE", "check_guarantee", "enforce_guarantee"]

GUARANTEE_SOURCE = "guarantee check failed"


def check_guarantee(reg: Registry, version: str, config: GuaranteeConfig | None = None) -> dict[str, Any]:
    """The check's report on `version`'s decided audit items; the target is its policy's unless
    `config` is given.

    >>> check_guarantee(reg, "mlp-digits")["failed"]  # doctest: +SKIP
    False
    """
    vid = reg.version(version)["id"]
    if config is None:
        target = reg.policy(vid).get("target_accuracy")
        if target is None:
            raise BadInput(f"version {vid}'s policy names no target accuracy: set one with `datamoat poc` first")
        config = GuaranteeConfig(target_accuracy=float(target))
    check = GuaranteeCheck(config).update(audit_decisions(reg.engine, vid))
    return {"version": vid, **check.report()}


def enforce_guarantee(reg: Registry, version: str, *, actor: str, action: str = "review_all") -> dict[str, Any]:
    """`check_guarantee`, then, when it failed and nothing was done yet, the `action`."""
    vid = reg.version(version)["id"]
    policy = reg.policy(vid)
    if policy.get("target_accuracy") is None:
        return {"version": vid, "failed": False, "checked": False}
    cfg = GuaranteeConfig(target_accuracy=float(policy["target_accuracy"]), action=action)
    report = check_guarantee(reg, vid, cfg)
    report["acted"] = None
    if not report["failed"] or cfg.action == "none":
        return report
    why = (
        f"{GUARANTEE_SOURCE}: {report['reviews']} audited answers, accuracy {report['accuracy']:.3f} "
        f"against a target of {cfg.target_accuracy} (wealth {report['wealth']:.1f} >= {1 / cfg.alpha:g})"
    )
    if cfg.action == "review_all" and policy.get("source") != GUARANTEE_SOURCE:
        classes = [str(c) for c in reg.version(vid)["info"]["classes"]]
        kept = {k: policy[k] for k in POLICY_FIELDS if k in policy}
        new = {**kept, "per_class": dict.fromkeys(classes), "source": GUARANTEE_SOURCE}
        reg.set_policy(vid, new, actor=actor, reason=why)
        report["acted"] = "review_all"
    elif cfg.action == "rollback":
        rolled = [a for a, v in reg.aliases().items() if v == vid]
        for alias in rolled:
            reg.rollback(alias, actor=actor, reason=why)
        report["acted"] = f"rollback {', '.join(rolled)}" if rolled else None
    if report["acted"]:
        report["alerts"] = send_alert(reg, "guarantee", report)
    return report
