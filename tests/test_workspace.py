import multiprocessing as mp
import sqlite3

import pytest

from datamoat.errors import BadInput, NotFound
from datamoat.workspace import Workspace, atomic_path, safe_name


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
        ws.insert(
            "runs",
            {
                "id": f"{who}-{i}",
                "name": "r",
                "dataset_id": "d",
                "arch": "mlp",
                "status": "running",
                "config": {"i": i},
            },
        )


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


HOSTILE = [
    "a/b",
    "../../etc",
    "..",
    ".",
    ".hidden",
    "c:d",
    "with space",
    "naïve-名前",
    "",
    "x" * 300,
    "a\\b",
    "nul\x00",
]


def test_safe_name_never_leaves_the_folder_and_never_collides(tmp_path):
    names = [safe_name(t) for t in HOSTILE]
    assert len(set(names)) == len(names)  # distinct strings, distinct names
    for n in names:
        assert n and n not in (".", "..") and not n.startswith(".") and len(n) <= 73
        assert (tmp_path / n).parent == tmp_path
        (tmp_path / n).write_text("ok")  # a real file system takes it
    assert len(list(tmp_path.iterdir())) == len(HOSTILE)
    assert safe_name("teacher-int8.onnx") == "teacher-int8.onnx"  # a safe name is kept as it is
    assert safe_name("a/b") != safe_name("a_b")


def test_workspace_paths_refuse_unsafe_parts(ws):
    assert ws.path_for("reports", "abc123") == ws.root / "reports" / "abc123"
    for bad in HOSTILE:
        with pytest.raises(ValueError, match="unsafe workspace path part"):
            ws.path_for("reports", bad)


def test_atomic_path_never_leaves_half_a_file_and_never_replaces_one_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BadInput, match="already exists"), atomic_path(out, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
        out.write_bytes(b"theirs")  # another writer got there first
    assert out.read_bytes() == b"theirs" and list(tmp_path.iterdir()) == [out]
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and list(tmp_path.iterdir()) == [out]
    assert out.stat().st_mode & 0o777 == 0o600


def test_objects_at_an_fsspec_url_live_there_and_are_checked_like_local_ones(tmp_path):
    import uuid

    import fsspec

    url = f"memory://dm-{uuid.uuid4().hex}/objects"
    ws = Workspace.init(tmp_path / "ws", objects=url + "/")
    sha = ws.put_bytes(b"weights")
    assert ws.object_location(sha) == f"{url}/{sha[:2]}/{sha[2:]}"
    assert list((tmp_path / "ws" / "objects").iterdir()) == []  # nothing local
    again = Workspace.open(tmp_path / "ws")  # the store is part of the workspace
    assert again.objects_url == url and again.get_bytes(sha) == b"weights" and again.object_size(sha) == 7
    fs, path = fsspec.core.url_to_fs(ws.object_location(sha))
    fs.pipe_file(path, b"tampered")  # the store is never trusted: the hash is checked on every read
    with pytest.raises(BadInput, match="corrupt"):
        again.get_bytes(sha)
    fs.rm_file(path)
    with pytest.raises(NotFound, match=f"missing from {url}"):
        again.get_bytes(sha)
    with pytest.raises(BadInput, match="local files"):
        again.object_path(sha)


def test_object_store_urls_that_cannot_work_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(BadInput, match="carries credentials: remove them"):
        Workspace.init(tmp_path / "a", objects="s3://AKIAXXXX:secret@bucket/dm")
    assert not (tmp_path / "a" / "objects.url").exists()
    with pytest.raises(BadInput, match="no protocol"):
        Workspace.init(tmp_path / "b", objects="/mnt/store")
    with pytest.raises(BadInput, match="gcsfs"):  # its package is not installed here
        Workspace.init(tmp_path / "c", objects="gcs://bucket/dm")
    local = Workspace.init(tmp_path / "d")
    local.put_bytes(b"x")
    with pytest.raises(BadInput, match="keeps the store it was created with"):
        Workspace.init(tmp_path / "d", objects=f"file://{tmp_path}/elsewhere")
    assert local.get_bytes(local.put_bytes(b"x")) == b"x"
    with pytest.raises(BadInput, match="is relative"):
        Workspace.init(tmp_path / "e", objects="file://store")


def test_a_file_url_store_is_a_folder_written_atomically_and_init_again_keeps_it(tmp_path):
    url = f"file://{tmp_path}/store"
    ws = Workspace.init(tmp_path / "ws", objects=url)
    sha = ws.put_bytes(b"blob")
    assert (tmp_path / "store" / sha[:2] / sha[2:]).read_bytes() == b"blob"
    again = Workspace.init(tmp_path / "ws", objects=url)  # idempotent, as init is
    assert again.url == url and again.get_bytes(sha) == b"blob"
    assert list((tmp_path / "ws" / "objects").iterdir()) == []


def test_an_array_at_a_url_is_mapped_from_a_checked_local_copy_never_read_into_memory(tmp_path):
    """A dataset's images are mapped for random rows; from a bucket they were read whole into memory
    at every load, a million photos' 3 GB in each process. `local://` is fsspec's local filesystem
    reached as a URL store, like s3://, so the memory measured here is the code's, not a server's."""
    import subprocess
    import sys
    import textwrap

    import numpy as np

    ws = Workspace.init(tmp_path / "ws", objects=f"local://{tmp_path}/store")
    sha = ws.put_array(np.random.default_rng(0).integers(0, 256, (32_768, 4096), dtype=np.uint8))  # 128 MiB
    script = textwrap.dedent(
        f"""
        import numpy as np
        from datamoat.data.dataset import read_rows
        from datamoat.workspace import Workspace
        def peak_mib():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
        ws = Workspace.open({str(tmp_path / "ws")!r})
        before = peak_mib()
        x = ws.get_array({sha!r}, mmap=True)
        rows = read_rows(x, np.array([5, 32_000, 7]))
        grew = peak_mib() - before
        want = np.random.default_rng(0).integers(0, 256, (32_768, 4096), dtype=np.uint8)[[5, 32_000, 7]]
        assert x.shape == (32_768, 4096) and np.array_equal(rows, want)
        print(grew, isinstance(x, np.memmap))
        """
    )
    for _ in range(2):  # the download, then the copy it left
        grew, mapped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout.split()  # fmt: skip
        assert int(grew) < 32 and mapped == "True"  # MiB; reading the blob whole took twice its size
    cache = tmp_path / "ws" / "objects" / "cache" / sha[:2]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [sha[2:]]

    small = ws.put_array(np.arange(1000))
    assert ws.get_array(small, mmap=True).tolist() == list(range(1000))
    copy = tmp_path / "ws" / "objects" / "cache" / small[:2] / small[2:]
    copy.write_bytes(copy.read_bytes()[:-8] + np.int64(7).tobytes())  # the local copy is not trusted either
    with pytest.raises(BadInput, match="corrupt"):
        ws.get_array(small, mmap=True)
    copy.unlink()
    remote = tmp_path / "store" / small[:2] / small[2:]
    remote.write_bytes(remote.read_bytes()[:-8] + np.int64(7).tobytes())
    with pytest.raises(BadInput, match="corrupt"):
        ws.get_array(small, mmap=True)
    assert [p.name for p in copy.parent.iterdir()] == [f".{small[2:]}.lock"]  # a failed download leaves no data
    remote.unlink()
    with pytest.raises(NotFound, match="missing from local://"):
        ws.get_array(small, mmap=True)


def test_processes_asking_for_the_same_array_at_once_fetch_it_once(tmp_path):
    """DDP ranks on one machine load a bucket's dataset together: one fetches, the others wait for its
    copy instead of each downloading the whole array beside it."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    import numpy as np

    ws = Workspace.init(tmp_path / "ws", objects=f"local://{tmp_path}/store")
    sha = ws.put_array(np.arange(100_000))
    cache = tmp_path / "ws" / "objects" / "cache" / sha[:2]
    cache.mkdir(parents=True)
    fd = os.open(cache / f".{sha[2:]}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a rank that is fetching it holds it
    script = (
        f"from datamoat.workspace import Workspace; "
        f"print(int(Workspace.open({str(tmp_path / 'ws')!r}).get_array({sha!r}, mmap=True).sum()))"
    )
    waiter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    assert waiter.poll() is None and not (cache / sha[2:]).exists()  # waiting, not fetching beside it
    # What the holder would have written; the waiter then uses it (checked) rather than fetching again.
    (cache / sha[2:]).write_bytes((tmp_path / "store" / sha[:2] / sha[2:]).read_bytes())
    (tmp_path / "store" / sha[:2] / sha[2:]).unlink()  # so a second fetch would fail
    os.close(fd)
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and int(out) == sum(range(100_000))
