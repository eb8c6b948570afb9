"""L3: edge_events claimed to be append-only but had no trigger, and anyone
who could write the database could drop the audit triggers unnoticed. Both
logs now have triggers and a hash chain, and `registry audit --verify`
finds a deleted or altered row even after the triggers are gone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from datamoat.edge.fleet import Fleet
from datamoat.registry.core import Registry


def busy_registry(url: str) -> tuple[Registry, Fleet]:
    reg = Registry(url)
    for i in range(3):
        reg.create_token("predict", f"app{i}", actor="ops")
    fleet = Fleet(reg)
    for d in ("cam-1", "cam-2", "cam-3"):
        fleet.enroll(d, "lab", actor="ops")
    return reg, fleet


@pytest.mark.parametrize("table", ["reg_audit", "edge_events"])
def test_l3_both_logs_refuse_updates_and_deletes(url, table):
    reg, _ = busy_registry(url)
    for stmt in (f"DELETE FROM {table}", f"UPDATE {table} SET ts = 0"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), reg.engine.begin() as conn:
            conn.exec_driver_sql(stmt)
    reg.engine.dispose()


def drop_triggers(reg: Registry) -> None:
    with reg.engine.begin() as conn:
        if reg.engine.dialect.name == "sqlite":
            for (name,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").all():
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            for t in ("reg_audit", "edge_events"):
                conn.exec_driver_sql(f"DROP TRIGGER {t}_no_change ON {t}")


def verify(home, url: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "datamoat",
            "--home",
            str(home),
            "registry",
            "audit",
            "--verify",
            "--registry",
            url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow
def test_l3_a_deleted_or_altered_row_is_found_after_the_triggers_are_dropped(url, ws):
    reg, _ = busy_registry(url)
    code, out = verify(ws.root, url)
    assert code == 0 and out["audit"]["ok"] and out["edge_events"]["ok"] and out["audit"]["rows"] == 3
    drop_triggers(reg)
    with reg.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM reg_audit WHERE seq = 2")  # the middle one
        conn.exec_driver_sql('UPDATE edge_events SET detail = \'{"device": "cam-9"}\' WHERE seq = 1')
    code, out = verify(ws.root, url)
    assert code == 1 and out["audit"]["first_bad"] == 3 and out["edge_events"]["first_bad"] == 1
    assert not out["audit"]["ok"] and not out["edge_events"]["ok"]
    reg.engine.dispose()
