"""Compare a release's two versions from the release log, and act on its rules.

`compare_versions` reads every logged pair of two versions (`datamoat.registry.pairs`) with
people's labels where they exist, and reports the comparison (`datamoat.evaluate.compare`) overall
and per release kind. `apply_rules` takes the action a release's `ReleaseRules` call for: promote
the candidate, roll it back (end the release), or hold it for a person; each is an audited control
change with its webhook. Servers run it every `ServeConfig.release_check_s`; `datamoat release
check` runs it once. Several servers may run it at once: ending the release is the step that only
one of them can take, so only that one acts.
"""

from __future__ import annotations

import logging
from typing import Any

from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.evaluate.compare import ReleaseRules, compare_pairs, decide
from datamoat.registry.alerts import send_alert
from datamoat.registry.core import Registry
from datamoat.registry.pairs import paired_answers

__all__ = ["compare_versions", "apply_rules"]

log = logging.getLogger("datamoat.feedback")


def _summary(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    out = compare_pairs(
        [r["a_label"] for r in rows],
        [r["b_label"] for r in rows],
        [r["a_confidence"] for r in rows],
        [r["b_confidence"] for r in rows],
        [r["truth"] for r in rows],
        alpha,
    )
    sources: dict[str, int] = {}
    for r in rows:
        if r["truth_source"] is not None:
            sources[r["truth_source"]] = sources.get(r["truth_source"], 0) + 1
    return out | {"label_sources": sources}


def compare_versions(reg: Registry, a: str, b: str, alias: str | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """A (the alias's version) against B (the candidate) on every pair the release log holds for
    them: overall, and per kind (shadow, canary).

    >>> compare_versions(Registry("sqlite://"), "v1", "v2")  # doctest: +SKIP
    """
    va, vb = reg.version(a)["id"], reg.version(b)["id"]
    if va == vb:
        raise BadInput(f"{a!r} and {b!r} are the same version {va}: compare two different versions")
    rows = paired_answers(reg.engine, va, vb, alias)
    out = {"a": va, "b": vb, "alias": alias, "alpha": alpha, **_summary(rows, alpha)}
    out["by_kind"] = {kind: _summary([r for r in rows if r["role"] == kind], alpha) for kind in ("shadow", "canary")}
    return out


def apply_rules(reg: Registry, alias: str, *, actor: str, alpha_override: float | None = None) -> list[dict[str, Any]]:
    """Apply the rules of `alias`'s running releases once; returns what each decided (an action of
    None: not enough pairs yet)."""
    done = []
    production = reg.aliases().get(alias)
    for rel in reg.releases(alias):
        if not rel["rules"] or production is None:
            continue
        rules = config_from_dict(rel["rules"])
        assert isinstance(rules, ReleaseRules)
        result = compare_versions(reg, production, rel["version_id"], alias, alpha_override or rules.alpha)
        action, why = decide(result["by_kind"][rel["kind"]], rules)
        entry = {"alias": alias, "kind": rel["kind"], "version": rel["version_id"], "action": action, "why": why}
        if action is not None:
            entry["taken"] = _act(reg, rel, action, why, actor)
        done.append(entry)
    return done


def _act(reg: Registry, rel: dict[str, Any], action: str, why: str, actor: str) -> bool:
    """Take `action` on a release; False when another server took it first."""
    alias, kind, vid = rel["alias"], rel["kind"], rel["version_id"]
    outcome = {"promote": "promoted", "rollback": "rolled_back", "hold": "held"}[action]
    try:  # the step only one caller can take: the release is gone for the others
        if action == "hold":
            out = reg.hold_release(alias, kind, actor=actor, reason=why)
        else:
            out = reg.end_release(alias, kind, actor=actor, reason=why, outcome=outcome)
    except BadInput:
        return False
    if action == "promote":
        out = reg.promote(vid, alias, actor=actor, reason=f"{kind} rules: {why}")
        send_alert(reg, "promote", dict(out))
    send_alert(reg, "release", {"alias": alias, "kind": kind, "version": vid, "outcome": outcome, "why": why})
    log.warning("%s %s of %s on %s: %s", kind, outcome, vid, alias, why)
    return True
