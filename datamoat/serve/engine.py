"""Registry versions as loaded sessions, cached so a rollback costs nothing."""

from __future__ import annotations

import threading

from datamoat.inference.engine import LoadedVersion
from datamoat.registry.core import Registry
from datamoat.registry.register import load_version

__all__ = ["SessionCache", "load_version"]


class SessionCache:
    """Loaded versions by id, so switching back (rollback) costs nothing."""

    def __init__(
        self, registry: Registry, threads: int = 0, size: int = 4, *, embeddings: bool = False, device: str = "cpu"
    ):
        self.registry, self.threads, self.size, self.embeddings = registry, threads, size, embeddings
        self.device = device  # resolved: cpu or cuda
        self._lock = threading.Lock()
        self._items: dict[str, LoadedVersion] = {}

    def get(self, version_id: str) -> LoadedVersion:
        with self._lock:
            hit = self._items.pop(version_id, None)
            if hit is not None:
                self._items[version_id] = hit  # most recently used last
                return hit
        loaded = load_version(  # outside the lock
            self.registry, version_id, self.threads, embeddings=self.embeddings, device=self.device
        )
        with self._lock:
            self._items[version_id] = loaded
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))
        return loaded
