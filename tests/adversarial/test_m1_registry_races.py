"""M1: pysqlite sends BEGIN only before the first write, so promote and
rollback read the alias outside their transaction. Two concurrent rollbacks
of v3 (history v1, v2) both answered "v3 -> v2": the alias ended on v2, not
v1, a history row was lost, and the audit log recorded a rollback that never
happened. Here 50 operators promote and roll back at once, on SQLite and on
PostgreSQL, and the audit log must replay to exactly the alias and history
that are stored."""

from __future__ import annotations

import json
import threading

import sqlalchemy as sa

from datamoat.errors import BadInput
from datamoat.registry.core import Registry
from datamoat.registry.tables import aliases

INFO = {"classes": ["a", "b"], "preprocess": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}}
OPERATORS = 50


def test_m1_concurrent_promotes_and_rollbacks_keep_alias_history_and_audit_consistent(url):
    setup = Registry(url)
    vids = [setup.register(f"onnx-{i}".encode(), name=f"m{i}", kind="fp32", info=INFO, actor="ops") for i in range(5)]
    for v in vids[:4]:
        setup.promote(v, "production", actor="ops")  # current v3, history [v0, v1, v2]
    start_gen = setup.generation()
    regs = [Registry(url) for _ in range(10)]  # ten operators' processes, in effect
    barrier, results, errors = threading.Barrier(OPERATORS), [], []

    def operator(i: int) -> None:
        reg = regs[i % len(regs)]
        barrier.wait()
        try:
            if i % 2:
                results.append(reg.rollback("production", actor=f"op{i}"))
            else:
                results.append(reg.promote(vids[(i // 2) % 5], "production", actor=f"op{i}"))
        except BadInput as e:  # a rollback with nothing left to roll back to: fine, and audited as nothing
            errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - any other failure is the test's failure
            errors.append(f"UNEXPECTED {type(e).__name__}: {e}")

    threads = [threading.Thread(target=operator, args=(i,)) for i in range(OPERATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not [e for e in errors if e.startswith("UNEXPECTED")], errors
    assert len(results) + len(errors) == OPERATORS

    # Replay the audit log from the state before the race: each entry must start
    # where the previous one left the alias, and the replay must end where the
    # database says the alias is, with the same history.
    log = [e for e in setup.audit_log() if e["generation"] > start_gen]
    assert sorted(e["generation"] for e in log) == list(range(start_gen + 1, start_gen + 1 + len(results)))
    current, history = vids[3], vids[:3]
    for e in sorted(log, key=lambda e: e["generation"]):
        assert e["details"]["previous"] == current, e
        if e["action"] == "rollback":
            assert e["details"]["version"] == history.pop(), e
        else:
            history += [current] if e["details"]["version"] != current else []
        current = e["details"]["version"]
    with setup.engine.connect() as conn:
        row = conn.execute(sa.select(aliases).where(aliases.c.alias == "production")).one()
    assert (row.version_id, json.loads(row.history)) == (current, history)
    by_gen = {r["generation"]: r for r in results}
    assert all(by_gen[e["generation"]]["version"] == e["details"]["version"] for e in log)
    for r in regs + [setup]:
        r.engine.dispose()
