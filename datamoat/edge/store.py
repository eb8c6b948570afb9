"""A device's files, and the crash-safe install sequence over them.

    state_dir/
      active.dmb        the bundle being served
      lkg.dmb           the last known good bundle (the previous active)
      staged.dmb        a verified bundle under self-test, not yet serving
      downloads/*.part  partial downloads, kept across restarts to resume
      state.json        events, counters, rejected bundles, the policy overlay,
                        the newest signed control answer's sequence (its floor)
      outbox/*.json     low-confidence samples waiting for upload (`Outbox`)
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
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput
from datamoat.workspace import atomic_write, fsync_dir

__all__ = ["DeviceStore", "Outbox", "is_sha256"]

_SLOTS = ("active", "lkg", "staged")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: object) -> bool:
    """Whether `text` is a sha256 hex digest, and so safe as a file name.

    >>> is_sha256("0" * 64), is_sha256("../" + "0" * 61)
    (True, False)
    """
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


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
        fsync_dir(self.root)

    def restore_lkg(self) -> bool:
        """lkg -> active (the active bundle is dropped). False if there is no lkg."""
        if not self.path("lkg").exists():
            self.path("active").unlink(missing_ok=True)
            return False
        os.replace(self.path("lkg"), self.path("active"))
        fsync_dir(self.root)
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
        if not is_sha256(sha):  # a hash from the network must not reach outside downloads/
            raise BadInput(f"download name {sha[:80]!r} is not a plain file name: expected a sha256 hex digest")
        return self.root / "downloads" / f"{sha}.part"

    def clear_downloads(self, keep: str | None = None) -> None:
        for p in (self.root / "downloads").glob("*.part"):
            if p.stem != keep:
                p.unlink(missing_ok=True)

    def install_token(self) -> str:
        """The device-local secret that `POST /v1/edge/install` asks for, made on
        first use and readable by the device's owner only (0600)."""
        p = self.root / "install.token"
        if not p.exists():
            with contextlib.suppress(FileExistsError):
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32))
        return p.read_text().strip()

    # -- state.json ------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        p = self.root / "state.json"
        state = json.loads(p.read_text()) if p.exists() else {}
        for key, default in (
            ("rejected", {}),
            ("refused", {}),
            ("events", []),
            ("next_event", 1),
            ("acked_event", 0),
            ("pending", None),
            ("policy", None),
            ("active_rollout", None),
            ("control_floor", [0, 0]),
        ):
            state.setdefault(key, default)
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        # Insertion order kept: the rejected and refused maps evict their oldest entry first.
        atomic_write(self.root / "state.json", json.dumps(state, default=str).encode())


class Outbox:
    """Samples waiting for upload: one JSON file each under ``outbox/``, named
    by a sequence number so the oldest sorts first, oldest dropped first.

    Capped by count and bytes: a new item pushes the oldest out, counted in
    ``dropped``. Files are written by rename (a reader never sees half an
    item) but not fsynced: `add` runs inside a prediction, which must not
    wait on the disk, and a sample lost in a power cut costs nothing that
    matters. The counters live in ``outbox/stats.json``, so they survive a
    restart.

    >>> import tempfile
    >>> box = Outbox(tempfile.mkdtemp(), max_items=2, max_bytes=1 << 20)
    >>> for i in range(3): box.add({"i": i})
    >>> [item["i"] for _, item in box.peek(5)], box.stats()["dropped"]
    ([1, 2], 1)
    """

    def __init__(self, root: str | Path, max_items: int, max_bytes: int):
        self.dir = Path(root) / "outbox"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_items, self.max_bytes = max_items, max_bytes
        self._lock = threading.Lock()
        for p in self.dir.glob(".*.tmp"):  # a crash mid-write leaves only a temp file
            p.unlink(missing_ok=True)
        self._files = {p.name: p.stat().st_size for p in sorted(self.dir.glob("[0-9]*.json"))}  # oldest first
        self._next = max((int(n.split(".")[0]) for n in self._files), default=0) + 1
        p = self.dir / "stats.json"
        self._stats = {"uploaded": 0, "dropped": 0, "rejected": 0}
        if p.exists():
            with contextlib.suppress(ValueError):
                self._stats.update(json.loads(p.read_text()))
        with self._lock:
            self._enforce()  # the caps may have shrunk since the last run

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.dir / name)

    def _save_stats(self) -> None:
        self._write("stats.json", json.dumps(self._stats).encode())

    def _enforce(self) -> int:
        dropped = 0
        while self._files and (len(self._files) > self.max_items or sum(self._files.values()) > self.max_bytes):
            oldest = next(iter(self._files))
            (self.dir / oldest).unlink(missing_ok=True)
            del self._files[oldest]
            dropped += 1
        if dropped:
            self._stats["dropped"] += dropped
            self._save_stats()
        return dropped

    def add(self, item: dict[str, Any]) -> None:
        """Queue one item (JSON-able), dropping the oldest beyond the caps."""
        data = json.dumps(item, separators=(",", ":")).encode()
        with self._lock:
            if len(data) > self.max_bytes:  # could never fit: keep the older ones
                self._stats["dropped"] += 1
                self._save_stats()
                return
            name = f"{self._next:012d}.json"
            self._next += 1
            self._write(name, data)
            self._files[name] = len(data)
            self._enforce()

    def peek(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        """The `n` oldest items as (name, item); they stay until `remove`."""
        out, bad = [], []
        with self._lock:
            for name in list(self._files)[:n]:
                try:
                    out.append((name, json.loads((self.dir / name).read_bytes())))
                except (OSError, ValueError):  # damaged on disk: nothing to send
                    bad.append(name)
        if bad:
            self.remove(bad, "dropped")
        return out

    def remove(self, names: list[str], outcome: str) -> None:
        """Take items out, counting them as uploaded, rejected or dropped.
        An item the cap dropped meanwhile is not counted twice."""
        with self._lock:
            gone = [n for n in names if self._files.pop(n, None) is not None]
            for n in gone:
                (self.dir / n).unlink(missing_ok=True)
            if gone:
                self._stats[outcome] += len(gone)
                self._save_stats()

    def stats(self) -> dict[str, int]:
        """uploaded / dropped / rejected (all time), pending and pending_bytes (now)."""
        with self._lock:
            return {**self._stats, "pending": len(self._files), "pending_bytes": sum(self._files.values())}
