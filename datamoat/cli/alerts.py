"""Commands: alerts add/list/remove/test: webhooks the registry signs and sends on incident commands,
drift alarms and accuracy estimates below the floor."""

from __future__ import annotations

import os

import typer

from datamoat.cli._common import JsonOpt, admin_actor, emit, open_registry
from datamoat.cli.registry import RegistryOpt, TokenOpt

alerts_app = typer.Typer(help="Webhooks on incidents, drift and low accuracy estimates.", no_args_is_help=True)


@alerts_app.command("add")
def add(
    url: str = typer.Argument(..., help="Where to POST: http(s)://host/path."),
    secret_env: str = typer.Option(
        "DATAMOAT_WEBHOOK_SECRET", "--secret-env", help="Environment variable holding the signing secret."
    ),
    events: list[str] = typer.Option([], "--event", help="An event to send (repeatable; default: every event)."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Subscribe a URL; the secret comes from an environment variable, never the command line."""
    from datamoat.errors import BadInput

    secret = os.environ.get(secret_env, "")
    if not secret:
        raise BadInput(f"${secret_env} is empty: export the webhook's signing secret (16+ characters) there")
    _, reg = open_registry(registry)
    hook_id = reg.add_webhook(url, secret, list(events), actor=admin_actor(reg, token))
    emit({"id": hook_id, "url": url, "events": list(events)}, as_json, f"webhook {hook_id} -> {url}")


@alerts_app.command("list")
def list_(registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Subscribed webhooks and their events (secrets are never shown)."""
    _, reg = open_registry(registry)
    hooks = reg.webhooks()
    emit({"webhooks": hooks}, as_json, "\n".join(f"{h['id']}  {h['url']}  {','.join(h['events'])}" for h in hooks))


@alerts_app.command("remove")
def remove(hook_id: str, token: str = TokenOpt, registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Unsubscribe a webhook."""
    _, reg = open_registry(registry)
    reg.remove_webhook(hook_id, actor=admin_actor(reg, token))
    emit({"removed": hook_id}, as_json, f"removed webhook {hook_id}")


@alerts_app.command("test")
def test(
    event: str = typer.Option("promote", "--event", help="The event to send a test of."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Send a test alert to every webhook subscribed to `event` and show each delivery."""
    from datamoat.errors import BadInput
    from datamoat.registry.alerts import EVENTS, send_alert

    if event not in EVENTS:
        raise BadInput(f"unknown event {event!r}: choose from {', '.join(EVENTS)}")
    _, reg = open_registry(registry)
    out = send_alert(reg, event, {"test": True})
    emit(
        {"deliveries": out},
        as_json,
        "\n".join(f"{d['id']} {d['url']}: {d['status']} after {d['attempts']} tries" for d in out) or "no webhooks",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
