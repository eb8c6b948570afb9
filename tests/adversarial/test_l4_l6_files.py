"""L4: a temp file a crash left behind was never swept (and the rename that
publishes a file was not made durable). L6 (files): workspace and registry
files were created 0644, readable by every local user."""

from __future__ import annotations

import os
import stat
import time

from datamoat.registry.core import Registry
from datamoat.workspace import Workspace, atomic_write


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_l4_temp_files_left_by_a_crash_are_swept_when_the_workspace_opens(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    stale = ws.objects / ".abc.npy.x1y2.tmp"  # what a crash between write and rename leaves
    fresh = ws.objects / ".def.npy.z3w4.tmp"  # another process writing right now
    for p in (stale, fresh):
        p.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    Workspace.open(ws.root)
    assert not stale.exists() and fresh.exists()


def test_l6_workspace_and_registry_files_are_the_owners_alone(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    sha = ws.put_bytes(b"weights")
    atomic_write(ws.path_for("reports", "r1") / "report.html", b"<html>")
    reg = Registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    reg.create_token("admin", "ops", actor="t")
    assert mode(ws.root) == 0o700 and mode(ws.objects) == 0o700 and mode(ws.root / "reports") == 0o700
    assert mode(ws.db_path) == 0o600
    assert all(mode(p) == 0o600 for p in ws.objects.rglob("*") if p.is_file()), sha
    assert mode(ws.root / "reports" / "r1" / "report.html") == 0o600
    assert mode(tmp_path / "reg" / "registry.db") == 0o600 and mode(tmp_path / "reg") == 0o700


def test_a_private_signing_key_readable_by_others_is_refused(tmp_path):
    import pytest

    from datamoat.edge.keys import generate_keys, load_private_key
    from datamoat.errors import BadInput

    paths = generate_keys(tmp_path / "release.pem")
    assert mode(paths["private"]) == 0o600 and load_private_key(paths["private"]) is not None
    os.chmod(paths["private"], 0o644)
    with pytest.raises(BadInput, match="readable by others"):
        load_private_key(paths["private"])
