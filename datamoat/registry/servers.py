"""The serving processes on a registry: their heartbeats, and which control
generation each has acknowledged (`wait_for_acks` makes a control command
say when every live server applied it). Mixed into `Registry`.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from datamoat.registry.tables import servers

__all__ = ["ServerRoster"]


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

    def servers(self, live_within: float = 10.0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(servers)).mappings().all()
        now = time.time()
        return [{**r, "live": now - r["last_seen"] <= live_within} for r in rows]

    def wait_for_acks(self, generation: int, timeout: float = 5.0, live_within: float = 10.0) -> dict[str, list[str]]:
        """Block until every live server acknowledged `generation`, or `timeout`.

        Returns {"acked": [...], "missing": [...]}, server ids.
        """
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers(live_within) if s["live"]]
            missing = [s["id"] for s in live if s["acked_generation"] < generation]
            if not missing or time.monotonic() >= deadline:
                return {"acked": [s["id"] for s in live if s["id"] not in missing], "missing": missing}
            time.sleep(0.02)
