"""The serving processes on a registry: their heartbeats, and which control
generation each has acknowledged (`wait_for_acks` makes a control command
say when every live server applied it). Mixed into `Registry`.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from datamoat.registry.tables import audit, servers

__all__ = ["LIVE_WITHIN_S", "ServerRoster"]

# A server counts live this long after its last heartbeat. A server fences itself (answers 503) before
# it could be counted dead, so one skipped as not live cannot still answer with a taken-down version.
LIVE_WITHIN_S = 10.0
_POLL_S = 0.02
_STALL_S = 1.0  # a poll that took longer than this means the waiter itself was paused


class ServerRoster:
    """Server heartbeats and acknowledgements."""

    engine: sa.Engine

    if TYPE_CHECKING:  # provided by Registry

        def transaction(self, lock: int = 1) -> AbstractContextManager[sa.Connection]: ...

    # -- servers and acknowledgements ------------------------------------------------------
    def heartbeat(self, server_id: str, url: str, alias: str, acked_generation: int) -> None:
        with self.transaction() as conn:
            vals = {"url": url, "alias": alias, "acked_generation": acked_generation, "last_seen": time.time()}
            if conn.execute(servers.update().where(servers.c.id == server_id).values(**vals)).rowcount == 0:
                conn.execute(servers.insert().values(id=server_id, **vals))

    def forget_server(self, server_id: str) -> None:
        with self.transaction() as conn:
            conn.execute(servers.delete().where(servers.c.id == server_id))

    def servers(self, live_within: float = LIVE_WITHIN_S) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(servers)).mappings().all()
        now = time.time()
        return [{**r, "live": now - r["last_seen"] <= live_within} for r in rows]

    def wait_for_acks(
        self, generation: int, timeout: float = 5.0, live_within: float = LIVE_WITHIN_S
    ) -> dict[str, list[str]]:
        """Block until every live server acknowledged `generation`, or `timeout`.

        Returns {"acked": [...], "missing": [...]}, server ids. A server is waited for if it was live
        when the change was made (its audit row's time) or when the wait began, or registered during
        it; one that falls silent meanwhile stays missing (it may be paused or cut off while still
        answering), and only one that left (`forget_server`) is no longer waited for. The timeout
        counts this process's own running time: a pause of the waiter (a stopped or starved VM) is
        not charged to the servers, up to `timeout` more in all.

        >>> from datamoat.registry.core import Registry
        >>> reg = Registry("sqlite://")
        >>> reg.heartbeat("srv-1", "http://h:8000", "production", acked_generation=3)
        >>> reg.wait_for_acks(3, timeout=1)
        {'acked': ['srv-1'], 'missing': []}
        >>> reg.wait_for_acks(4, timeout=0.1)
        {'acked': [], 'missing': ['srv-1']}
        """
        with self.engine.connect() as conn:  # when the change was made: servers live then are waited for
            made = conn.execute(sa.select(sa.func.max(audit.c.ts)).where(audit.c.generation == generation)).scalar()
        # Heartbeats only move forward, so "live at the change or at the start, or registered since, and
        # not forgotten" is one bound on the last heartbeat.
        now = time.time()
        since = (now if made is None else min(made, now)) - live_within
        waited, forgiven, last = 0.0, 0.0, time.monotonic()
        while True:
            rows = [s for s in self.servers(live_within) if s["last_seen"] >= since]
            expected = {s["id"] for s in rows}
            missing = sorted(s["id"] for s in rows if s["acked_generation"] < generation)
            now = time.monotonic()
            step, last = now - last, now
            # A poll this slow means this process did not run (or its database stalled): no evidence
            # against the servers, so it is not charged to them, up to `timeout` in all.
            pardon = min(step, timeout - forgiven) if step > _STALL_S else 0.0
            forgiven, waited = forgiven + pardon, waited + step - pardon
            if not missing or waited >= timeout:
                return {"acked": sorted(expected - set(missing)), "missing": missing}
            time.sleep(_POLL_S)
