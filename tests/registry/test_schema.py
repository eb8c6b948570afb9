"""The one create-or-migrate routine: versions recorded per component, migrations run once
from the stored version up, a database from a newer datamoat refused, racing creators retried."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from datamoat.edge.fleet import Fleet
from datamoat.errors import BadInput
from datamoat.feedback.store import Quarantine
from datamoat.registry import Registry
from datamoat.registry.schema import ensure_schema, schema_versions, stored_version


def test_every_table_owner_records_its_schema_version(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    Quarantine(reg)
    Fleet(reg)
    with reg.engine.connect() as conn:
        got = dict(conn.execute(sa.select(schema_versions.c.component, schema_versions.c.version)).all())
    assert set(got) == {"registry", "ledger", "feedback", "edge", "edge_events", "edge_uploads", "edge_bundles"}
    assert got["registry"] == 1 and got["edge_events"] == 1  # each has one migration: the audit chain column


def test_migrations_run_once_from_the_stored_version_and_newer_databases_are_refused(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    meta = sa.MetaData()
    sa.Table("things", meta, sa.Column("id", sa.Integer, primary_key=True))
    ran: list[int] = []
    steps = [lambda conn: ran.append(1), lambda conn: ran.append(2)]
    assert ensure_schema(engine, "things", meta, steps[:1]) == 1
    assert ensure_schema(engine, "things", meta, steps) == 2  # only the new step runs
    assert ensure_schema(engine, "things", meta, steps) == 2  # and nothing twice
    assert ran == [1, 2]
    with pytest.raises(BadInput, match="newer than this datamoat's 1: upgrade datamoat"):
        ensure_schema(engine, "things", meta, steps[:1])
    with engine.connect() as conn:
        assert stored_version(conn, "things") == 2  # the refusal changed nothing


def test_processes_starting_together_all_get_the_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Fleet(Registry(url))
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sa.create_engine(url).connect() as conn:
        assert stored_version(conn, "edge") == 0 and stored_version(conn, "ledger") == 0
