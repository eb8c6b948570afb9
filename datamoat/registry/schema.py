"""The one create-or-migrate routine for the registry database.

Several modules own tables in the registry database: the registry itself
(`core`), the ledger of predictions, feedback and reviews (`ledger`), the
feedback quarantine and the fleet. Each owner calls `ensure_schema` with its
own tables, a component name and that component's schema version. The
routine creates what is missing, runs the component's migrations from the
stored version up, records the new version in ``schema_versions``, and
retries when processes starting together race to create the same tables.
A database written by a newer datamoat is refused, with the fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from datamoat.errors import BadInput

__all__ = ["WRITE_OPTION", "begin_write", "ensure_schema", "schema_versions", "stored_version", "Migration"]

Migration = Callable[[sa.Connection], None]  # migrates a component from version i to i + 1

_meta = sa.MetaData()
schema_versions = sa.Table(
    "schema_versions",
    _meta,
    sa.Column("component", sa.String(40), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
ATTEMPTS = 5
# Execution option: this transaction writes. Registry's engine opens such a transaction with
# BEGIN IMMEDIATE on SQLite, so it waits for the write lock (busy timeout) instead of failing
# when a read inside it would have to upgrade while another process writes.
WRITE_OPTION = "datamoat_write"


def begin_write(engine: sa.Engine) -> Any:
    """A transaction that writes (`engine.begin()` with `WRITE_OPTION`). A plain one reads from a
    snapshot, and on SQLite its first write after another connection committed fails at once with
    "database is locked", without waiting; this one takes the write lock at BEGIN.

    >>> e = sa.create_engine("sqlite://")
    >>> with begin_write(e) as conn:
    ...     conn.execute(sa.text("select 1")).scalar_one()
    1
    """
    return engine.execution_options(**{WRITE_OPTION: True}).begin()


def stored_version(conn: sa.Connection, component: str) -> int | None:
    """The schema version recorded for `component`, or None before its first `ensure_schema`."""
    q = sa.select(schema_versions.c.version).where(schema_versions.c.component == component)
    return conn.execute(q).scalar()


def ensure_schema(
    engine: sa.Engine,
    component: str,
    metadata: sa.MetaData,
    migrations: Sequence[Migration] = (),
    after: Callable[[sa.Connection], None] | None = None,
) -> int:
    """Create `metadata`'s missing tables and migrate `component` to ``len(migrations)``.

    Migrations must tolerate tables that `create_all` just made at the latest
    shape (a database older than schema versions is migrated from 0, so each
    step checks before it changes). `after` runs in the same transaction
    (triggers, seed rows). Returns the version now stored.

    >>> e = sa.create_engine("sqlite://")
    >>> ensure_schema(e, "demo", sa.MetaData())
    0
    """
    target = len(migrations)
    for attempt in range(ATTEMPTS):  # processes starting together race to create tables: the loser retries
        try:
            with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
                _meta.create_all(conn)
                metadata.create_all(conn)
                have = stored_version(conn, component)
                if have is not None and have > target:
                    raise BadInput(
                        f"the registry database's {component} schema is version {have}, newer than this "
                        f"datamoat's {target}: upgrade datamoat (pip install -U datamoat)"
                    )
                for step in migrations[have or 0 :]:
                    step(conn)
                if after is not None:
                    after(conn)
                if have is None:
                    conn.execute(schema_versions.insert().values(component=component, version=target))
                elif have != target:
                    conn.execute(
                        schema_versions.update().where(schema_versions.c.component == component).values(version=target)
                    )
            return target
        except (sa.exc.DBAPIError, sa.exc.IntegrityError):
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")
