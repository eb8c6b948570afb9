"""Scratch folders: what a killed import leaves is removed by the workspace's next open, and what a
live one holds is not, however long it has run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from datamoat.files import SCRATCH_PREFIX, scratch_dir, sweep_scratch_dirs
from datamoat.workspace import Workspace

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: scratch folders are swept on POSIX only")

# A child that sorts an import's first rows on disk and then waits, as an import of millions would.
CHILD = """
import hashlib, sys, time
from datamoat.data.index_builder import IndexBuilder
meta = {"format": "PNG", "width": 2, "height": 1, "mode": "L", "orientation": 1}
with IndexBuilder(sys.argv[1], run_rows=2) as b:
    for i in range(5):  # two runs spilled to the folder
        b.add(hashlib.sha256(str(i).encode()).digest(), "cat", meta, f"cat/{i}.png", {})
    print(b.dir, flush=True)
    time.sleep(600)
"""


def old(path, hours: float = 2.0) -> None:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))


def test_a_killed_imports_sort_folder_is_kept_while_it_lives_and_removed_after(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ws.root)], stdout=subprocess.PIPE, text=True)
    try:
        folder = ws.root / os.path.basename(child.stdout.readline().strip())
        assert folder.name.startswith(SCRATCH_PREFIX) and any(folder.glob("run-*.rows"))
        old(folder)  # an import of hours: age alone must not condemn it
        Workspace.open(ws.root)
        assert folder.exists(), "a live import's folder was swept"
    finally:
        child.send_signal(signal.SIGKILL)  # no `finally`, no `__exit__`: what a crash or OOM kill leaves
        child.wait()
    assert folder.exists()
    Workspace.open(ws.root)
    assert not folder.exists()


def test_a_folder_without_its_lock_is_removed_only_when_over_a_minute_old(tmp_path):
    """Its maker may be between creating the folder and locking it, or died there."""
    young, stale = (tmp_path / f"{SCRATCH_PREFIX}index-{k}" for k in ("a", "b"))
    for d in (young, stale):
        d.mkdir()
        (d / "run-0.rows").write_bytes(b"rows")
    old(stale)
    assert sweep_scratch_dirs(tmp_path) == 1
    assert young.exists() and not stale.exists()


def test_the_sweep_removes_only_scratch_folders_and_never_follows_a_link(tmp_path):
    """A name an attacker chose in the workspace (a link to the owner's data) is not a way to delete it."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "lock").write_bytes(b"")  # a free lock file: the link would qualify if followed
    (precious / "data").write_bytes(b"keep")
    root = tmp_path / "ws"
    root.mkdir()
    (root / f"{SCRATCH_PREFIX}evil").symlink_to(precious, target_is_directory=True)
    (root / f"{SCRATCH_PREFIX}file").write_bytes(b"not a folder")
    other = root / "index-not-scratch"
    other.mkdir()
    for p in (root / f"{SCRATCH_PREFIX}file", other, precious):
        old(p)
    assert sweep_scratch_dirs(root) == 0
    assert (precious / "data").read_bytes() == b"keep" and other.exists() and (root / f"{SCRATCH_PREFIX}file").exists()


def test_a_scratch_folder_goes_when_its_block_raises(tmp_path):
    with pytest.raises(RuntimeError), scratch_dir(tmp_path, "index") as d:
        (d / "run-0.rows").write_bytes(b"rows")
        raise RuntimeError("the import failed")
    assert not list(tmp_path.iterdir())
