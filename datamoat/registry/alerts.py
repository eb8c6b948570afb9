"""Webhooks: a JSON POST per event to every subscribed URL, signed with HMAC-SHA256 and retried.

Events are the incident commands (promote, rollback, takedown, restore, suppress, unsuppress,
policy, revoke_token), a drift alarm, a label-free accuracy estimate below the configured
floor, and the live guarantee check failing. Subscriptions live in
the registry (``reg_webhooks``, written only here), so the CLI, the admin API and every server send
the same alerts. Each delivery carries

- ``X-Datamoat-Event``: the event name;
- ``X-Datamoat-Timestamp``: seconds since the epoch when it was signed;
- ``X-Datamoat-Signature``: ``sha256=`` and the hex HMAC of ``"<timestamp>." + body`` under the
  subscription's secret. A receiver checks it with `verify_signature`, which also refuses a
  timestamp older than five minutes, so a captured delivery cannot be replayed later.

A delivery that fails (no answer, or a status other than 2xx) is retried with exponential backoff;
the outcome is returned to the caller, which shows it, and it never undoes the command.

>>> sig = sign(b"0123456789abcdef", "1700000000", b"{}")
>>> verify_signature(b"0123456789abcdef", "1700000000", b"{}", sig, now=1700000010)
True
>>> verify_signature(b"0123456789abcdef", "1700000000", b"{}", sig, now=1700001000)
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from datamoat.configs import check
from datamoat.errors import NotFound
from datamoat.registry.tables import webhooks

__all__ = ["EVENTS", "AlertStore", "sign", "verify_signature", "send_alert"]

EVENTS = (
    "promote",
    "rollback",
    "takedown",
    "restore",
    "suppress",
    "unsuppress",
    "policy",
    "revoke_token",
    "drift",
    "estimate_below_floor",
    "guarantee",
    "canary",
    "shadow",
    "release",  # a canary or shadow ended: by a person, or by its rules (promoted, rolled back, held)
)
MAX_AGE_S = 300


class AlertStore:
    """Webhook subscriptions. Mixed into `Registry`."""

    engine: sa.Engine

    if TYPE_CHECKING:  # provided by Registry

        def transaction(self, lock: int = 1) -> AbstractContextManager[sa.Connection]: ...
        def audit_event(
            self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any
        ) -> int: ...

    def add_webhook(self, url: str, secret: str, events: list[str], *, actor: str) -> str:
        """Subscribe `url` to `events` (all if empty); returns the subscription id. Audited."""
        parts = urlsplit(url)
        check(
            parts.scheme in ("http", "https") and bool(parts.netloc), f"webhook URL {url!r} must be http(s)://host/..."
        )
        check(len(url) <= 500, "webhook URL must be at most 500 characters")
        check(not parts.username and not parts.password, "put no credentials in the webhook URL: the secret signs")
        check(len(secret) >= 16, "the webhook secret must be at least 16 characters")
        bad = [e for e in events if e not in EVENTS]
        check(not bad, f"unknown event(s) {', '.join(bad)}: choose from {', '.join(EVENTS)}")
        hook_id = uuid.uuid4().hex[:12]
        with self.transaction() as conn:
            conn.execute(
                webhooks.insert().values(
                    id=hook_id, url=url, secret=secret, events=json.dumps(sorted(set(events))), created=time.time()
                )
            )
            self.audit_event(conn, actor, "webhook_add", hook_id, "", url=url, events=sorted(set(events)))
        return hook_id

    def remove_webhook(self, hook_id: str, *, actor: str) -> None:
        with self.transaction() as conn:
            if conn.execute(webhooks.delete().where(webhooks.c.id == hook_id)).rowcount == 0:
                raise NotFound(f"no webhook {hook_id!r}: `datamoat alerts list` shows them")
            self.audit_event(conn, actor, "webhook_remove", hook_id, "")

    def webhooks(self, event: str | None = None, *, with_secrets: bool = False) -> list[dict[str, Any]]:
        """Subscriptions (to `event` if given); secrets only when asked, for sending."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(webhooks).order_by(webhooks.c.created)).mappings().all()
        out = []
        for r in rows:
            events = json.loads(r["events"])
            if event is None or not events or event in events:
                out.append({"id": r["id"], "url": r["url"], "events": events or list(EVENTS)})
                if with_secrets:
                    out[-1]["secret"] = r["secret"]
        return out


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``timestamp + "." + body``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    max_age_s: float = MAX_AGE_S,
) -> bool:
    """What a receiver runs: the signature matches (compared in constant time) and is recent."""
    try:
        age = (time.time() if now is None else now) - float(timestamp)
    except ValueError:
        return False
    return abs(age) <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def send_alert(
    reg: Any, event: str, data: dict[str, Any], *, attempts: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """POST `event` to every subscribed webhook; per webhook its id, URL, last status and attempts.

    >>> send_alert(Registry("sqlite://"), "promote", {"alias": "production"})  # doctest: +SKIP
    []
    """
    import httpx

    hooks = reg.webhooks(event, with_secrets=True)
    if not hooks:
        return []
    body = json.dumps({"id": uuid.uuid4().hex, "event": event, "ts": time.time(), "data": data}, default=str).encode()
    out = []
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for hook in hooks:
            status: int | str = "not sent"
            tries = 0
            for tries in range(1, attempts + 1):
                ts = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Datamoat-Event": event,
                    "X-Datamoat-Timestamp": ts,
                    "X-Datamoat-Signature": sign(hook["secret"].encode(), ts, body),
                }
                try:
                    status = client.post(hook["url"], content=body, headers=headers).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                if isinstance(status, int) and 200 <= status < 300:
                    break
                if tries < attempts:
                    time.sleep(backoff_s * 2 ** (tries - 1))
            ok = isinstance(status, int) and 200 <= status < 300
            out.append({"id": hook["id"], "url": hook["url"], "status": status, "attempts": tries, "ok": ok})
    return out
