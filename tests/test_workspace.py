import multiprocessing as mp
import sqlite3

import pytest

from datamoat.errors import BadInput, NotFound
from datamoat.workspace import Workspace


def test_init_is_idempotent_and_open_requires_init(tmp_path):
    with pytest.raises(NotFound, match="datamoat init"):
        Workspace.open(tmp_path / "nope")
    ws = Workspace.init(tmp_path / "w")
    ws.insert("datasets", {"id": "abc", "name": "n", "manifest": {"a": 1}})
    Workspace.init(tmp_path / "w")  # again: keeps the data
    assert Workspace.open(tmp_path / "w").resolve("datasets", "abc")["manifest"] == {"a": 1}


def test_blobs_are_content_addressed_and_verified(ws):
    sha = ws.put_bytes(b"payload")
    assert ws.put_bytes(b"payload") == sha
    assert ws.get_bytes(sha) == b"payload"
    assert not list(ws.objects.rglob("*.tmp"))
    ws.object_path(sha).write_bytes(b"tampered")
    with pytest.raises(BadInput, match="corrupt"):
        ws.get_bytes(sha)


def test_resolve_by_id_prefix_and_name(ws):
    ws.insert("datasets", {"id": "aaaa1111", "name": "first", "manifest": {}})
    ws.insert("datasets", {"id": "aaaa2222", "name": "second", "manifest": {}})
    assert ws.resolve("datasets", "aaaa1111")["name"] == "first"
    assert ws.resolve("datasets", "aaaa2")["name"] == "second"
    assert ws.resolve("datasets", "second")["id"] == "aaaa2222"
    with pytest.raises(BadInput, match="ambiguous"):
        ws.resolve("datasets", "aaaa")
    with pytest.raises(NotFound, match="unknown dataset"):
        ws.resolve("datasets", "zzzz")


def test_failed_transaction_leaves_catalog_untouched(ws):
    with pytest.raises(RuntimeError), ws.tx() as conn:
        ws.insert("datasets", {"id": "x1", "name": "x", "manifest": {}}, conn=conn)
        raise RuntimeError("boom")
    assert ws.rows("datasets") == []


def _writer(root: str, who: int, n: int) -> None:
    ws = Workspace.open(root)
    for i in range(n):
        ws.put_bytes(f"{who}-{i}".encode())
        ws.insert("runs", {"id": f"{who}-{i}", "name": "r", "dataset_id": "d", "arch": "mlp",
                           "status": "running", "config": {"i": i}})  # fmt: skip


def test_two_processes_writing_at_once_corrupt_nothing(tmp_path):
    ws = Workspace.init(tmp_path / "w")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(ws.root), who, 150)) for who in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(ws.rows("runs")) == 300
    conn = sqlite3.connect(ws.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert all(ws.get_bytes(ws.put_bytes(f"{w}-{i}".encode())) for w in range(2) for i in range(0, 150, 37))
