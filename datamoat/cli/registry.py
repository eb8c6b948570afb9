"""Commands: registry list/show/audit, promote, rollback, takedown, restore,
suppress, unsuppress, tokens create. Each control command waits until every
live server acknowledged the change (or says which did not)."""

from __future__ import annotations

from typing import Any

import typer

from datamoat.cli._common import (
    ConfigDefault,
    JsonOpt,
    admin_actor,
    console,
    emit,
    err_console,
    finish_control,
    open_registry,
)

registry_app = typer.Typer(help="Model versions, aliases and the audit log.", no_args_is_help=True)
tokens_app = typer.Typer(help="Create, list and revoke API tokens (stored hashed).", no_args_is_help=True)

TokenOpt = typer.Option(
    None, "--token", envvar="DATAMOAT_TOKEN", help="Admin token (needed once any admin token exists)."
)
RegistryOpt = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL.")
WaitOpt = typer.Option(5.0, "--wait", help="Seconds to wait for running servers to acknowledge.")


def RuleOpt(param: str, text: str) -> Any:  # noqa: N802 - an option factory, used like typer.Option
    """A release rule's option, its default read from `ReleaseRules`."""
    return typer.Option(
        ConfigDefault("datamoat.evaluate.compare:ReleaseRules", param), f"--{param.replace('_', '-')}", help=text
    )


@registry_app.command("list")
def reg_list(registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Versions, the aliases pointing at them, and takedown state."""
    from rich.table import Table

    _, reg = open_registry(registry)
    snap = reg.snapshot()
    by_version: dict[str, list[str]] = {}
    for alias, vid in snap["aliases"].items():
        by_version.setdefault(vid, []).append(alias)
    rows = [
        {
            "id": v["id"],
            "name": v["name"],
            "kind": v["kind"],
            "aliases": sorted(by_version.get(v["id"], [])),
            "taken_down": v["id"] in snap["takedowns"],
            "model_id": v["info"].get("model_id"),
        }
        for v in reg.versions()
    ]
    if as_json:
        emit({"versions": rows, "aliases": snap["aliases"], "suppressions": snap["suppressions"]}, True)
        return
    t = Table("version", "name", "kind", "aliases", "state")
    for r in rows:
        t.add_row(
            r["id"], r["name"], r["kind"], ", ".join(r["aliases"]), "[red]taken down" if r["taken_down"] else "ok"
        )
    console.print(t)
    for s in snap["suppressions"]:
        console.print(f"suppressed {s['label']!r} on {s['alias']} ({s['mode']}): {s['reason']}")


@registry_app.command("show")
def reg_show(version: str, registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """One version: lineage, classes, preprocessing, aliases."""
    _, reg = open_registry(registry)
    v = reg.version(version)
    snap = reg.snapshot()
    v["aliases"] = sorted(a for a, vid in snap["aliases"].items() if vid == v["id"])
    v["taken_down"] = snap["takedowns"].get(v["id"])
    lin = v["info"].get("lineage", {})
    emit(
        v,
        as_json,
        f"version {v['id']} ({v['name']}, {v['kind']}): model {v['info'].get('model_id')}, "
        f"dataset {lin.get('dataset_id')}, parent {lin.get('parent_id')}, aliases {v['aliases']}",
    )


def _chain_line(name: str, v: dict) -> str:
    state = "intact" if v["ok"] else f"BROKEN at row {v['first_bad']}"
    return f"{name}: {state}, {v['rows']} rows ({v['unchained']} from before chaining), head {v['head']}"


@registry_app.command("audit")
def reg_audit(
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Recompute the hash chains of the audit log and the fleet's event log; exit 1 if broken.",
    ),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The append-only audit log: who, when, what, why."""
    import datetime as dt

    _, reg = open_registry(registry)
    if verify:
        from datamoat.edge.fleet import Fleet
        from datamoat.errors import Tampered

        out = {"audit": reg.verify_audit(), "edge_events": Fleet(reg).verify_events()}
        text = "\n".join(_chain_line(name, v) for name, v in out.items())
        emit(out, as_json, text)
        if not all(v["ok"] for v in out.values()):
            raise Tampered("the audit trail was altered: a row was changed or deleted (see the first broken row)")
        return
    log = reg.audit_log()
    lines = [
        f"{dt.datetime.fromtimestamp(e['ts']).isoformat(timespec='seconds')}  {e['actor']:<12} {e['action']:<11} "
        f"{e['target']:<14} {e['reason']}  {e['details']}"
        for e in log
    ]
    emit({"audit": log}, as_json, "\n".join(lines) or "no entries")


def promote(
    model: str = typer.Argument(..., help="Registry version, or a catalog model (exported and registered)."),
    alias: str = typer.Option("production", "--alias", "-a"),
    reason: str = typer.Option("", "--reason"),
    int8: bool = typer.Option(False, "--int8", help="Register the int8-quantized ONNX of a catalog model."),
    profile: bool = typer.Option(
        True, "--profile/--no-profile", help="Record the version's reference profile for drift checks if it has none."
    ),
    canary: float = typer.Option(
        0.0, "--canary", help="Release it as a canary: this percent of the alias's requests, the alias unchanged."
    ),
    shadow: bool = typer.Option(
        False, "--shadow", help="Release it as a shadow: run on every request off the path, answers logged only."
    ),
    canary_key: str = typer.Option(
        "request", "--canary-key", help="request: route by the input's hash; client: by X-Datamoat-Client or token."
    ),
    auto: bool = typer.Option(False, "--auto", help="A canary or shadow is promoted or rolled back by its rules."),
    min_pairs: int = RuleOpt("min_pairs", "Pairs before the label-free agreement rule can roll back."),
    min_agreement: float = RuleOpt("min_agreement", "Roll back below this agreement; promote needs it too."),
    min_labelled: int = RuleOpt("min_labelled", "Labelled pairs at which the one McNemar decision is taken."),
    max_drop: float = RuleOpt("max_drop", "Promote when accuracy may have dropped by at most this (interval)."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Point an alias at a version; servers switch without a restart. With --canary or --shadow the
    version is released beside the alias's version instead (`datamoat compare` and `release`)."""
    from datamoat.errors import DatamoatError
    from datamoat.registry.register import profile_version, register_model, resolve_version

    ws, reg = open_registry(registry)
    actor = admin_actor(reg, token)
    vid = (
        register_model(ws, reg, model, actor=actor, int8=True) if int8 else resolve_version(ws, reg, model, actor=actor)
    )
    if profile and reg.profile(vid) is None:
        try:  # before the switch, so servers that reload on it find the profile
            profile_version(ws, reg, vid, actor=actor)
        except DatamoatError as e:  # drift checks wait for a profile; the promotion does not
            err_console.print(f"warning: no reference profile for {vid} ({e}); drift checks need one", highlight=False)
    if canary or shadow:
        from datamoat.errors import BadInput
        from datamoat.evaluate.compare import ReleaseRules

        if canary and shadow:
            raise BadInput("--canary and --shadow are two releases: start one per command")
        kind = "canary" if canary else "shadow"
        rules = ReleaseRules(True, min_pairs, min_agreement, min_labelled, max_drop=max_drop) if auto else None
        out = reg.start_release(
            vid, alias, kind, actor=actor, percent=canary, route_key=canary_key, rules=rules, reason=reason
        )
        share = f"{canary:g}% of requests" if canary else "every request, off the path"
        finish_control(reg, out, as_json, f"{kind} {vid} on {alias}: {share}", wait, kind)
        return
    out = reg.promote(vid, alias, actor=actor, reason=reason)
    finish_control(reg, out, as_json, f"{alias} -> {vid} (was {out['previous']})", wait, "promote")


def rollback(
    alias: str = typer.Option("production", "--alias", "-a"),
    reason: str = typer.Option("", "--reason"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Point an alias back at its previous version."""
    _, reg = open_registry(registry)
    out = reg.rollback(alias, actor=admin_actor(reg, token), reason=reason)
    finish_control(
        reg, out, as_json, f"{alias} rolled back to {out['version']} (from {out['previous']})", wait, "rollback"
    )


def takedown(
    model: str = typer.Argument(..., help="Registry version to stop serving."),
    reason: str = typer.Option(..., "--reason", help="Why (required, goes to the audit log)."),
    fallback: str = typer.Option(None, "--fallback", help="A safe version to serve instead (else 503)."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Kill switch: servers stop answering with this version."""
    _, reg = open_registry(registry)
    out = reg.takedown(model, actor=admin_actor(reg, token), reason=reason, fallback=fallback)
    then = f"fallback {out['fallback']}" if out["fallback"] else "503"
    finish_control(reg, out, as_json, f"took down {out['version']}: servers answer with {then}", wait, "takedown")


def restore(
    model: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Undo a takedown."""
    _, reg = open_registry(registry)
    out = reg.restore(model, actor=admin_actor(reg, token), reason=reason)
    finish_control(reg, out, as_json, f"restored {out['version']}", wait, "restore")


def suppress(
    label: str = typer.Argument(..., help="Class name never to output."),
    reason: str = typer.Option(..., "--reason"),
    alias: str = typer.Option("*", "--alias", "-a", help="Alias to apply to ('*': everywhere)."),
    mode: str = typer.Option("abstain", "--mode", help="abstain (needs review) or renormalize."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Never output a label: abstain, or renormalise over the other labels."""
    _, reg = open_registry(registry)
    out = reg.suppress(label, actor=admin_actor(reg, token), reason=reason, alias=alias, mode=mode)
    finish_control(reg, out, as_json, f"suppressed {label!r} on {alias} ({mode})", wait, "suppress")


def unsuppress(
    label: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason"),
    alias: str = typer.Option("*", "--alias", "-a"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Undo a suppression."""
    _, reg = open_registry(registry)
    out = reg.unsuppress(label, actor=admin_actor(reg, token), reason=reason, alias=alias)
    finish_control(reg, out, as_json, f"unsuppressed {label!r} on {alias}", wait, "unsuppress")


@tokens_app.command("create")
def tokens_create(
    role: str = typer.Option(..., "--role", help="predict, admin or review."),
    name: str = typer.Option(..., "--name", help="Who holds it (recorded in the audit log)."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    _, reg = open_registry(registry)
    actor = admin_actor(reg, token)
    new = reg.create_token(role, name, actor=actor)
    emit({"token": new, "role": role, "name": name}, as_json, f"{role} token for {name} (shown once):\n{new}")


@tokens_app.command("list")
def tokens_list(token: str = TokenOpt, registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Every token's name, role and state (never the token itself)."""
    _, reg = open_registry(registry)
    admin_actor(reg, token)
    rows = reg.list_tokens()
    lines = [f"{r['name']:<24} {r['role']:<8} {'revoked' if r['revoked'] else 'active'}" for r in rows]
    emit({"tokens": rows}, as_json, "\n".join(lines) or "no tokens")


@tokens_app.command("revoke")
def tokens_revoke(
    name: str = typer.Argument(..., help="The token's name (`datamoat tokens list`)."),
    reason: str = typer.Option(..., "--reason"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    wait: float = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a token: every running server refuses it from its next poll on."""
    _, reg = open_registry(registry)
    out = reg.revoke_token(name, actor=admin_actor(reg, token), reason=reason)
    finish_control(reg, out, as_json, f"revoked {out['role']} token {name!r}", wait, "revoke_token")


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.add_typer(tokens_app, name="tokens")
    for fn in (promote, rollback, takedown, restore, suppress, unsuppress):
        app.command(fn.__name__)(fn)
