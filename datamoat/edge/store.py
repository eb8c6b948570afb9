"""A device's files, and the crash-safe install sequence over them.

    state_dir/
      active.dmb        the bundle being served
      lkg.dmb           the last known good bundle (the previous active)
      staged.dmb        a verified bundle under self-test, not yet serving
      downloads/*.part  partial downloads, kept across restarts to resume
      state.json        events, counters, rejected bundles, the policy overlay
      lock              held by the one runtime that owns the directory

An install writes ``staged.dmb`` and records it as *pending* before the
self-test; committing renames active -> lkg and staged -> active (each
rename is atomic). At boot the active file's own hash says what happened:
if it is the pending bundle the commit finished; otherwise the install is
undone (staged deleted, lkg renamed back if the crash fell between the two
renames). So a power cut or a crash inside the self-test never leaves the
device without its last good bundle.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput
from datamoat.workspace import atomic_write

__all__ = ["DeviceStore"]

_SLOTS = ("active", "lkg", "staged")


class DeviceStore:
    """The files under one device state directory, owned by one process at a time.

    >>> import tempfile
    >>> store = DeviceStore(tempfile.mkdtemp())
    >>> store.read("active") is None
    True
    >>> store.close()
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "downloads").mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "a+")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BadInput(
                f"another edge runtime owns {self.root}: stop it, or send the bundle to its "
                "POST /v1/edge/install endpoint (`datamoat edge install FILE --runtime URL`)"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    # -- files --------------------------------------------------------------------------
    def path(self, slot: str) -> Path:
        assert slot in _SLOTS, slot
        return self.root / f"{slot}.dmb"

    def read(self, slot: str) -> bytes | None:
        p = self.path(slot)
        return p.read_bytes() if p.exists() else None

    def sha(self, slot: str) -> str | None:
        data = self.read(slot)
        return hashlib.sha256(data).hexdigest() if data is not None else None

    def stage(self, data: bytes) -> None:
        atomic_write(self.path("staged"), data)

    def discard_staged(self) -> None:
        self.path("staged").unlink(missing_ok=True)

    def commit(self) -> None:
        """staged -> active, the old active -> lkg: two atomic renames."""
        if self.path("active").exists():
            os.replace(self.path("active"), self.path("lkg"))
        os.replace(self.path("staged"), self.path("active"))
        _fsync_dir(self.root)

    def restore_lkg(self) -> bool:
        """lkg -> active (the active bundle is dropped). False if there is no lkg."""
        if not self.path("lkg").exists():
            self.path("active").unlink(missing_ok=True)
            return False
        os.replace(self.path("lkg"), self.path("active"))
        _fsync_dir(self.root)
        return True

    def recover(self, pending: str | None) -> str | None:
        """Finish or undo an install interrupted by a crash; returns 'committed', 'undone' or None."""
        if pending is None:
            self.discard_staged()
            return None
        if self.sha("active") == pending:
            self.discard_staged()
            return "committed"
        if not self.path("active").exists() and self.path("lkg").exists():
            os.replace(self.path("lkg"), self.path("active"))  # the crash fell between the two renames
        self.discard_staged()
        return "undone"

    def part(self, sha: str) -> Path:
        return self.root / "downloads" / f"{sha}.part"

    def clear_downloads(self, keep: str | None = None) -> None:
        for p in (self.root / "downloads").glob("*.part"):
            if p.stem != keep:
                p.unlink(missing_ok=True)

    # -- state.json ------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        p = self.root / "state.json"
        state = json.loads(p.read_text()) if p.exists() else {}
        for key, default in (("rejected", {}), ("refused", {}), ("events", []), ("next_event", 1),
                             ("acked_event", 0), ("pending", None), ("policy", None), ("active_rollout", None)):  # fmt: skip
            state.setdefault(key, default)
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.root / "state.json", json.dumps(state, sort_keys=True, default=str).encode())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
