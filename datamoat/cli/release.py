"""Commands: release list/end/check (canary and shadow releases, started by `promote --canary` or
`promote --shadow`), and compare (two versions on the inputs both answered)."""

from __future__ import annotations

from typing import Any

import typer

from datamoat.cli._common import JsonOpt, admin_actor, emit, finish_control, open_registry
from datamoat.cli.registry import RegistryOpt, TokenOpt, WaitOpt

release_app = typer.Typer(help="Canary and shadow releases beside an alias's version.", no_args_is_help=True)


@release_app.command("list")
def release_list(
    alias: str = typer.Option(None, "--alias", "-a", help="Only this alias."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Running canaries and shadows, with their rules."""
    _, reg = open_registry(registry)
    rows = reg.releases(alias)
    lines = [
        f"{r['alias']:<14} {r['kind']:<7} {r['version_id']}  "
        + (f"{r['percent']:g}% by {r['route_key']}" if r["kind"] == "canary" else "every request, off the path")
        + ("  rules: " + ", ".join(f"{k}={v}" for k, v in r["rules"].items() if k not in ("type", "version"))
           if r["rules"] else "")
        for r in rows
    ]  # fmt: skip
    emit({"releases": rows}, as_json, "\n".join(lines) or "no releases")


@release_app.command("end")
def release_end(
    kind: str = typer.Argument(..., help="canary or shadow"),
    alias: str = typer.Option("production", "--alias", "-a"),
    reason: str = typer.Option("", "--reason"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """End a canary or shadow: its traffic goes back to the alias's version."""
    _, reg = open_registry(registry)
    out = reg.end_release(alias, kind, actor=admin_actor(reg, token), reason=reason)
    finish_control(reg, out, as_json, f"{kind} {out['version']} on {alias} ended", wait, "release")


@release_app.command("check")
def release_check(
    alias: str = typer.Option("production", "--alias", "-a"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Apply the alias's releases' rules once (servers do it every `release_check_s`)."""
    from datamoat.feedback.releases import apply_rules

    _, reg = open_registry(registry)
    done = apply_rules(reg, alias, actor=admin_actor(reg, token))
    lines = [f"{d['kind']} {d['version']}: {d['action'] or 'nothing yet'} ({d['why']})" for d in done]
    emit({"alias": alias, "decisions": done}, as_json, "\n".join(lines) or f"no release with rules on {alias}")


def _text(out: dict[str, Any]) -> str:
    lines = [f"A={out['a']}  B={out['b']}  {out['n']} paired inputs"]
    for kind, r in [("all", out), *out["by_kind"].items()]:
        if not r["n"]:
            continue
        c, mix = r["confidence"], r["class_mix"]
        lines.append(
            f"{kind:<7} n={r['n']:<6} agreement {r['agreement']:.3f}  confidence {c['mean_a']:.3f} -> {c['mean_b']:.3f}"
            f"  class mix moved {mix['tvd']:.3f}"
        )
        lab = r["labelled"]
        if lab:
            mc = lab["mcnemar"]
            lines.append(
                f"        {lab['n']} labelled: accuracy A {lab['accuracy_a']:.3f}, B {lab['accuracy_b']:.3f}; "
                f"B - A {mc['difference']:+.3f} [{mc['interval'][0]:+.3f}, {mc['interval'][1]:+.3f}], "
                f"exact McNemar p={mc['p_value']:.3g} ({mc['b']} only A right, {mc['c']} only B right)"
            )
    return "\n".join(lines)


def compare(
    a: str = typer.Argument(..., help="The alias's version (id, prefix or name)."),
    b: str = typer.Argument(..., help="The candidate released beside it."),
    alias: str = typer.Option(None, "--alias", "-a", help="Only pairs logged on this alias."),
    alpha: float = typer.Option(0.05, "--alpha", help="Error level of the McNemar test and its interval."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Two versions on the inputs both answered (canary and shadow pairs): agreement, confidence,
    class mix, and with people's labels a paired accuracy difference (exact McNemar)."""
    from datamoat.feedback.releases import compare_versions

    _, reg = open_registry(registry)
    out = compare_versions(reg, a, b, alias, alpha)
    emit(out, as_json, _text(out) if out["n"] else f"no paired answers of {out['a']} and {out['b']} logged yet")


def register(app: typer.Typer) -> None:
    app.add_typer(release_app, name="release")
    app.command("compare")(compare)
