"""Append-only, hash-chained logs: database triggers refuse an update or a
delete, and each row's `chain` links it to the one before, so a row altered
or removed anywhere but the end is found even if the triggers were dropped.
The registry's audit log and the fleet's event log use them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa

__all__ = ["GENESIS", "append_only_ddl", "add_chain_column", "append_chained", "verify_chain"]

GENESIS = "0" * 64  # the chain value before a log's first chained row


def append_only_ddl(dialect: str, table: str) -> list[str]:
    """Triggers that make `table` append-only in the database itself, not by convention.

    >>> len(append_only_ddl("sqlite", "reg_audit"))
    2
    """
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            for op in ("UPDATE", "DELETE")
        ]
    if dialect == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$ LANGUAGE plpgsql",
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
        ]
    return []


def add_chain_column(conn: sa.Connection, table: sa.Table) -> None:
    """Give a log created before chaining its `chain` column (its old rows stay unchained)."""
    if "chain" not in {c["name"] for c in sa.inspect(conn).get_columns(table.name)}:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN chain VARCHAR(64)")


def _link(prev: str, row: dict[str, Any], fields: tuple[str, ...]) -> str:
    body = json.dumps([row[f] for f in fields], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def append_chained(conn: sa.Connection, table: sa.Table, row: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Insert `row` into an append-only log with its hash chain: each row's
    `chain` is sha256 of the previous row's chain and this row's `fields`, so
    a row altered or deleted anywhere but the end breaks every later link
    (`verify_chain`). Call inside a serialised `Registry.transaction`."""
    prev = conn.execute(sa.select(table.c.chain).order_by(table.c.seq.desc()).limit(1)).scalar()
    conn.execute(table.insert().values(**row, chain=_link(prev or GENESIS, row, fields)))


def verify_chain(conn: sa.Connection, table: sa.Table, fields: tuple[str, ...]) -> dict[str, Any]:
    """Recompute a log's chain: {ok, rows, unchained, head, first_bad}. `head` is the
    last link: record it elsewhere, and a later verify that ends elsewhere shows
    rows removed from the end too."""
    prev = GENESIS
    out: dict[str, Any] = {"ok": True, "rows": 0, "unchained": 0, "head": None, "first_bad": None}
    for r in conn.execute(sa.select(table).order_by(table.c.seq)).mappings():
        out["rows"] += 1
        if r["chain"] is None:  # written before chaining existed
            out["unchained"] += 1
            continue
        want = _link(prev, dict(r), fields)
        if r["chain"] != want and out["ok"]:
            out.update(ok=False, first_bad=r["seq"])
        prev = r["chain"]
    out["head"] = prev if out["rows"] > out["unchained"] else None
    return out
