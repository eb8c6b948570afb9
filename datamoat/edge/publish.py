"""Published bundles (`edge_bundles`, in the registry database): the files
devices may download, by content address. `Fleet` holds them through
`BundleShelf`; nothing else touches the table.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa

from datamoat.edge.bundle import peek_manifest
from datamoat.edge.events import EventLog
from datamoat.errors import NotFound

__all__ = ["BundleShelf", "BUNDLE_CACHE", "bundles"]

BUNDLE_CACHE = 4  # published bundles kept in memory, newest used last

meta = sa.MetaData()
bundles = sa.Table(
    "edge_bundles",
    meta,
    sa.Column("sha", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),  # as the manifest claims; devices check the signed one
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)


class BundleShelf(EventLog):
    """Publishing and reading bundles; mixed into `Fleet`, whose transaction and event log it uses."""

    engine: sa.Engine
    registry: Any
    _blobs: OrderedDict[str, bytes]
    _blobs_lock: threading.Lock

    # -- bundles ---------------------------------------------------------------------------
    def next_sequence(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(bundles.c.seq))).scalar() or 0) + 1

    def publish(self, data: bytes, *, actor: str, sequence: int | None = None, version_id: str | None = None) -> dict:
        """Make a bundle file downloadable by devices; returns its info (idempotent).

        The control server does not verify signatures (devices do, against
        their own trust list); it only reads the manifest for listings.
        """
        if sequence is None or version_id is None:
            m = peek_manifest(data)
            sequence, version_id = m["sequence"], m["version_id"]
        sha = hashlib.sha256(data).hexdigest()
        with self._tx() as conn:
            if not conn.execute(sa.select(bundles.c.sha).where(bundles.c.sha == sha)).first():
                conn.execute(
                    bundles.insert().values(
                        sha=sha,
                        seq=int(sequence),
                        version_id=str(version_id),
                        size=len(data),
                        created=time.time(),
                        data=data,
                    )
                )
                self._event(conn, "", "publish", sha=sha, sequence=sequence, version=version_id, actor=actor)
        return self.bundle(sha)

    def publish_version(self, ref: str, key: Any, *, actor: str, config: Any = None) -> dict:
        """Build, sign and publish a bundle of registry version `ref` with the next sequence number."""
        from datamoat.edge.bundle import build_bundle

        return self.publish(build_bundle(self.registry, ref, key, self.next_sequence(), config), actor=actor)

    def bundles(self) -> list[dict[str, Any]]:
        cols = [c for c in bundles.c if c.name != "data"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(*cols).order_by(bundles.c.created)).mappings()]

    def bundle(self, ref: str) -> dict[str, Any]:
        """A published bundle by sha (or unique prefix), without its bytes."""
        rows = [b for b in self.bundles() if b["sha"].startswith(ref)] if len(ref) >= 6 else []
        if len(rows) != 1:
            raise NotFound(f"no single published bundle matches {ref!r}: `datamoat fleet status --json` lists them")
        return rows[0]

    def latest_bundle(self, version_id: str) -> dict[str, Any] | None:
        rows = [b for b in self.bundles() if b["version_id"] == version_id]
        return max(rows, key=lambda b: (b["seq"], b["created"])) if rows else None

    def bundle_bytes(self, sha: str) -> bytes:
        """A published bundle's bytes. The few newest are cached (immutable by
        content address), so a rollout's downloads do not each hit the database,
        while a fleet with many versions holds no more than BUNDLE_CACHE of them."""
        with self._blobs_lock:
            if sha in self._blobs:
                self._blobs.move_to_end(sha)
                return self._blobs[sha]
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(bundles.c.data).where(bundles.c.sha == sha)).scalar_one_or_none()
        if data is None:
            raise NotFound(f"bundle {sha[:12]} is not published")
        with self._blobs_lock:
            self._blobs[sha] = bytes(data)
            while len(self._blobs) > BUNDLE_CACHE:
                self._blobs.popitem(last=False)
            return self._blobs[sha]
