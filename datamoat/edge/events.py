"""The fleet's timeline (`edge_events`, in the registry database): every
operator action and device report, append-only by database triggers and
hash-chained (`datamoat.registry.chain`), so `registry audit --verify`
finds a row altered or deleted. `Fleet` writes it through `EventLog`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from datamoat.registry.chain import add_chain_column, append_chained, append_only_ddl, verify_chain
from datamoat.registry.schema import ensure_schema

__all__ = ["EventLog", "EVENT_FIELDS", "EVENTS_LOCK", "ensure_events", "events"]

meta = sa.MetaData()
events = sa.Table(
    "edge_events",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("device_id", sa.String(100), nullable=False),  # "" for operator actions
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("rollout_id", sa.String(120)),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("chain", sa.String(64)),  # the hash chain (datamoat.registry.chain.append_chained)
)
EVENT_FIELDS = ("ts", "device_id", "kind", "rollout_id", "detail")
EVENTS_LOCK = 2  # Registry.transaction's lock for writers of edge_events: one chain, no forks


def _add_events_chain(conn: sa.Connection) -> None:
    add_chain_column(conn, events)  # an event log from before chaining: its old rows stay unchained


def _events_append_only(conn: sa.Connection) -> None:
    for stmt in append_only_ddl(conn.dialect.name, events.name):
        conn.exec_driver_sql(stmt)


def ensure_events(engine: sa.Engine) -> None:
    """Create (or migrate) the event log: its chain column, then its append-only triggers."""
    ensure_schema(engine, "edge_events", meta, [_add_events_chain], after=_events_append_only)


class EventLog:
    """Appending to and reading the fleet's event log; mixed into `Fleet`."""

    engine: sa.Engine
    registry: Any

    def _event(self, conn: sa.Connection, device: str, kind: str, rollout: str | None = None, /, **detail: Any) -> None:
        # Callers hold self._tx(): the chain's previous link cannot change under us.
        row = {
            "ts": time.time(),
            "device_id": device,
            "kind": kind,
            "rollout_id": rollout,
            "detail": json.dumps(detail, sort_keys=True, default=str),
        }
        append_chained(conn, events, row, EVENT_FIELDS)

    def _tx(self) -> Any:
        """A serialised write transaction for everything that appends to edge_events."""
        return self.registry.transaction(EVENTS_LOCK)

    def verify_events(self) -> dict[str, Any]:
        """Recompute edge_events' hash chain (see `datamoat.registry.chain.verify_chain`)."""
        with self.engine.connect() as conn:
            return verify_chain(conn, events, EVENT_FIELDS)

    def last_event_seq(self, conn: sa.Connection) -> int:
        """The newest event's number (0 before the first)."""
        return int(conn.execute(sa.select(sa.func.max(events.c.seq))).scalar_one() or 0)

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.seq > since).order_by(events.c.seq)).mappings()
            return [{**r, "detail": json.loads(r["detail"])} for r in rows]
