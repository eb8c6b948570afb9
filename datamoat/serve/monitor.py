"""Live drift windows on a server: every answer's embedding, confidence and pixel statistics join a
window of the served version; each full window is tested against the version's reference profile
(`datamoat.evaluate.drift.check_window`) on a thread of its own, off the request path, and the
result goes to the Prometheus gauges and the registry.

The inference thread only appends what it already computed (no image is kept: brightness and
contrast are taken at once); the projection, the permutation test and the database write happen on
the monitor's thread. A version without a profile is not tested; its windows are counted as
``unprofiled`` and the profile is looked up again after a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from datamoat.evaluate.drift import WindowBuffer, check_parts
from datamoat.registry.alerts import send_alert

__all__ = ["DriftMonitor"]

PROFILE_RETRY_S = 60.0
log = logging.getLogger("datamoat.serve")


class DriftMonitor:
    """Windows of `window` answers per (alias, version), tested as they fill.

    >>> m = DriftMonitor(registry, "web-1", window=500, on_result=print)  # doctest: +SKIP
    >>> m.observe("production", "0e25a8328810", probs, emb, x)  # doctest: +SKIP
    """

    def __init__(
        self,
        registry: Any,
        server_id: str,
        window: int,
        on_result: Any,
        *,
        accuracy_floor: float = 0.0,
        alert_interval_s: float = 600.0,
    ) -> None:
        self.registry, self.server_id, self.window, self.on_result = registry, server_id, window, on_result
        self.accuracy_floor, self.alert_interval_s = accuracy_floor, alert_interval_s
        self._last_alert: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._buffer = WindowBuffer(window)
        self._profiles: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="datamoat-drift")
        self.pending: list[Any] = []  # futures of windows being tested (tests wait on them)

    def observe(self, alias: str, version_id: str, probs: np.ndarray, emb: np.ndarray, x: np.ndarray) -> None:
        """Add one batch's answers (inference thread): probs (B, K), emb (B, D), x (B, C, H, W)."""
        key = (alias, version_id)
        parts = self._buffer.add(key, probs, emb, x)
        if parts is None:
            return
        with self._lock:
            self.pending = [f for f in self.pending if not f.done()]
            self.pending.append(self._pool.submit(self._test, key, parts))

    def _profile(self, version_id: str) -> dict[str, Any] | None:
        prof, at = self._profiles.get(version_id, (None, -PROFILE_RETRY_S))
        if prof is None and time.monotonic() - at >= PROFILE_RETRY_S:
            prof = self.registry.profile(version_id)
            self._profiles = {version_id: (prof, time.monotonic())}  # the served version's only
        return prof

    def _test(self, key: tuple[str, str], parts: list[Any]) -> None:
        try:
            self._test_window(key, parts)
        except Exception:  # a failed test loses one window, never the server
            log.exception("drift window of %s/%s failed", *key)

    def _test_window(self, key: tuple[str, str], parts: list[Any]) -> None:
        alias, version_id = key
        prof = self._profile(version_id)
        if prof is None:
            self.on_result(alias, version_id, None)
            return
        result = check_parts(prof, parts)
        self.registry.record_window(self.server_id, alias, version_id, result)
        self.on_result(alias, version_id, result)
        data = {"server_id": self.server_id, "alias": alias, "version": version_id, **result}
        if result["alarm"]:
            self._alert("drift", data)
        if result["estimate"]["estimate"] < self.accuracy_floor:
            self._alert("estimate_below_floor", {**data, "floor": self.accuracy_floor})

    def _alert(self, event: str, data: dict[str, Any]) -> None:
        """A webhook, at most once per `alert_interval_s` per event, alias and version: a drift that
        lasts alarms every window, and one message per interval says so without flooding."""
        key = (event, data["alias"], data["version"])
        now = time.monotonic()
        if now - self._last_alert.get(key, -self.alert_interval_s) < self.alert_interval_s:
            return
        self._last_alert[key] = now
        for failed in (a for a in send_alert(self.registry, event, data) if not a["ok"]):
            log.warning(
                "webhook %s not delivered after %d tries: %s", failed["id"], failed["attempts"], failed["status"]
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
