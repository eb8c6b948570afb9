"""Commands: policy set / show, a registry version's review policy.

Answers below the policy's threshold (or its class's own threshold) are
flagged ``needs_review`` and go to the review queue (/review). Setting a
policy is audited and reaches running servers like any control change.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import typer

from datamoat.cli._common import JsonOpt, admin_actor, emit, finish_control, open_registry
from datamoat.cli.registry import RegistryOpt, TokenOpt, WaitOpt
from datamoat.errors import BadInput

__all__ = ["register", "policy_from_poc"]

policy_app = typer.Typer(
    help="A version's review policy: answers below its threshold need review.", no_args_is_help=True
)


def policy_from_poc(path: Path) -> dict[str, Any]:
    """The policy a feasibility report calibrated (`datamoat poc --json` output).

    >>> policy_from_poc(Path("poc.json"))["target_accuracy"]  # doctest: +SKIP
    0.99
    """
    how = "write it with `datamoat poc MODEL --target-accuracy 0.99 --json > poc.json`"
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"no such file {path}: {how}") from None
    except (ValueError, OSError) as e:
        raise BadInput(f"{path} is not a readable JSON file ({e}): {how}") from None
    pol = doc.get("policy") if isinstance(doc, dict) else None
    if not isinstance(pol, dict):
        raise BadInput(f"{path} holds no 'policy': {how}")
    if pol.get("threshold") is None and pol.get("per_class") is None:
        raise BadInput(
            f"the report certified no threshold at target accuracy {pol.get('target_accuracy')}: nothing "
            "can be automated at it; lower the target, add calibration data, or pass --threshold"
        )
    return {
        # A certified 0 accepts every answer, which is what no threshold does in serving.
        "threshold": pol.get("threshold") or None,
        "per_class": pol.get("per_class"),
        "method": pol.get("method"),
        "target_accuracy": pol.get("target_accuracy"),
        "delta": pol.get("delta"),
        "source": f"poc:{doc.get('poc_id') or Path(path).name}",
    }


def _class_thresholds(items: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for item in items:
        label, sep, value = item.rpartition("=")
        if not sep or not label:
            raise BadInput(f"--class-threshold {item!r} is not LABEL=T: e.g. --class-threshold cat=0.95")
        if value.lower() == "review":
            out[label] = None
            continue
        try:
            out[label] = float(value)
        except ValueError:
            raise BadInput(f"--class-threshold {item!r}: T must be a number in [0, 1) or 'review'") from None
    return out


def _describe(pol: dict[str, Any]) -> str:
    if not pol:
        return "no review policy: no answer is flagged for review by confidence"
    thr = pol.get("threshold")
    text = f"review below {thr:g}" if thr is not None else "no global review threshold"
    per = pol.get("per_class") or {}
    if per:
        parts = [f"{k} {'always' if v is None else f'{v:g}'}" for k, v in sorted(per.items())]
        text += f"; per class: {', '.join(parts)}"
    if pol.get("target_accuracy") is not None:
        text += (
            f"; calibrated for accuracy {pol['target_accuracy']:g} at delta {pol.get('delta')} ({pol.get('method')})"
        )
    if pol.get("source"):
        text += f"; from {pol['source']}"
    if pol.get("set_by"):
        when = dt.datetime.fromtimestamp(pol["set_at"]).isoformat(timespec="seconds")
        text += f"\nset by {pol['set_by']} at {when}" + (f": {pol['reason']}" if pol.get("reason") else "")
    return text


@policy_app.command("set")
def policy_set(
    version: str = typer.Argument(..., help="Registry version id, id prefix or name."),
    threshold: float = typer.Option(None, "--threshold", help="Answers below this confidence need review, in (0, 1)."),
    class_threshold: list[str] = typer.Option(
        None, "--class-threshold", help="LABEL=T, a class's own threshold (repeatable); T=review always reviews it."
    ),
    from_poc: Path = typer.Option(
        None, "--from-poc", help="JSON of `datamoat poc --json`: use its calibrated threshold(s) and guarantee."
    ),
    reason: str = typer.Option("", "--reason", help="Why, for the audit log."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Set a version's review policy; running servers apply it without a restart."""
    if threshold is None and not class_threshold and from_poc is None:
        raise BadInput("give --threshold T, --class-threshold LABEL=T or --from-poc poc.json")
    policy: dict[str, Any] = policy_from_poc(from_poc) if from_poc else {"source": "manual"}
    if threshold is not None:
        policy["threshold"] = threshold
    if class_threshold:
        policy["per_class"] = {**(policy.get("per_class") or {}), **_class_thresholds(class_threshold)}
    _, reg = open_registry(registry)
    out = reg.set_policy(
        version, {k: v for k, v in policy.items() if v is not None}, actor=admin_actor(reg, token), reason=reason
    )
    finish_control(reg, out, as_json, f"policy of {out['version']}: {_describe(out['policy'])}", wait, "policy")


@policy_app.command("show")
def policy_show(
    version: str = typer.Argument(..., help="Registry version id, id prefix or name."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A version's review policy, and who set it."""
    _, reg = open_registry(registry)
    vid = reg.version(version)["id"]
    pol = reg.policy(vid)
    origin = "registry" if "set_by" in pol else ("version info" if pol else "none")
    emit({"version": vid, "policy": pol, "origin": origin}, as_json, f"policy of {vid}: {_describe(pol)}")


def register(app: typer.Typer) -> None:
    """Add the `policy` command group to `app`."""
    app.add_typer(policy_app, name="policy")
