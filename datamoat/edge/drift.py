"""Drift on a device: windows of its own traffic tested against the version's reference profile,
which the signed bundle carries (``profile.json``), so nothing but the result leaves the device.

The device keeps each window's embeddings and pixel statistics only until the window is tested (on
a thread of its own), then logs the result as a ``drift_window`` event: the heartbeat carries it,
and events outlive a device that is offline for a while. The fleet records each one in the
registry's drift windows under server ``device:<id>`` and alias ``edge:<group>`` (a group is a
site), where `/monitor`, `datamoat fleet status` and the fleet's `/fleet/metrics` read them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from datamoat.evaluate.drift import RESULT_KEYS, TESTS, WindowBuffer, check_parts

__all__ = ["DeviceDrift", "compact", "parse_window", "record_device_windows", "fleet_metrics"]

log = logging.getLogger("datamoat.edge")
MAX_CLASSES = 10_000  # a window result's class mix bounds what a device may send


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """A window's result as a device sends it: plain JSON, no per-input data.

    >>> compact({k: 0 for k in RESULT_KEYS} | {"extra": 1})["n"]
    0
    """
    return json.loads(json.dumps({k: result[k] for k in RESULT_KEYS}, default=float))


class DeviceDrift:
    """Windows of `window` answers per served version, tested against the bundle's profile.

    >>> drift = DeviceDrift(200, on_result=lambda version, result: None)  # doctest: +SKIP
    >>> drift.observe(bundle, probs, emb, x)  # doctest: +SKIP
    """

    def __init__(self, window: int, on_result: Callable[[str, dict[str, Any]], Any]) -> None:
        self.on_result = on_result
        self._buffer = WindowBuffer(window)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="datamoat-edge-drift")
        self._profiles: dict[str, dict[str, Any]] = {}
        self.last: dict[str, Any] | None = None  # the last window's compact result, with its version
        self.pending: list[Any] = []

    def observe(self, bundle: Any, probs: np.ndarray, emb: np.ndarray, x: np.ndarray) -> None:
        """Add one prediction's batch: probs (B, K), emb (B, D), x (B, C, H, W)."""
        if "profile.json" not in bundle.parts:
            return  # a bundle of a version with no profile: nothing to test against
        parts = self._buffer.add(bundle.version_id, probs, emb, x)
        if parts is not None:
            self.pending = [f for f in self.pending if not f.done()]
            self.pending.append(self._pool.submit(self._test, bundle, parts))

    def _test(self, bundle: Any, parts: list[Any]) -> None:
        try:
            prof = self._profiles.get(bundle.version_id)
            if prof is None:
                prof = bundle.part_json("profile.json")
                self._profiles = {bundle.version_id: prof}  # the served version's only
            result = compact(check_parts(prof, parts))
            self.last = {"version": bundle.version_id, **result}
            self.on_result(bundle.version_id, result)
        except Exception:  # a failed test loses one window, never a prediction
            log.exception("drift window of %s failed", bundle.version_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def parse_window(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(version, result) from a device's ``drift_window`` event, checked field by field: a device is
    trusted with its own numbers, not with their shape. Raises ValueError.

    >>> ok = {"version": "v1", "n": 200, "alarm": False, "fired": [], "p_values": {t: 0.5 for t in TESTS},
    ...       "level": 0.01, "mmd2": 0.0, "brightness_shift": 0.0, "contrast_shift": 0.0,
    ...       "class_mix": [1.0], "estimate": {"estimate": 0.9, "low": 0.8, "high": 0.95, "method": "ATC"}}
    >>> parse_window(ok)[1]["n"]
    200
    """
    version = event.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 32:
        raise ValueError("version")
    p = event.get("p_values")
    if not isinstance(p, dict) or set(p) != set(TESTS):
        raise ValueError("p_values")
    fired = event.get("fired")
    if not isinstance(fired, list) or not set(fired) <= set(TESTS):
        raise ValueError("fired")
    mix = event.get("class_mix")
    if not isinstance(mix, list) or len(mix) > MAX_CLASSES:
        raise ValueError("class_mix")
    est = event.get("estimate")
    if not isinstance(est, dict):
        raise ValueError("estimate")
    n = event.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not 10 <= n <= 10**7:
        raise ValueError("n")
    result = {
        "n": n,
        "alarm": bool(event.get("alarm")),
        "fired": [str(t) for t in fired],
        "p_values": {t: _number(p[t]) for t in TESTS},
        "level": _number(event.get("level")),
        "mmd2": _number(event.get("mmd2")),
        "brightness_shift": _number(event.get("brightness_shift")),
        "contrast_shift": _number(event.get("contrast_shift")),
        "class_mix": [_number(v) for v in mix],
        "estimate": {k: _number(est.get(k)) for k in ("estimate", "low", "high")} | {"method": "ATC"},
    }
    return version, result


def record_device_windows(registry: Any, device: dict[str, Any], events: list[dict[str, Any]]) -> int:
    """Store a heartbeat's new ``drift_window`` events in the registry (per device and site);
    returns how many. A malformed one is skipped and logged, never stored."""
    stored = 0
    for e in events:
        if e.get("kind") != "drift_window":
            continue
        try:
            version, result = parse_window(e)
        except ValueError as why:
            log.warning("device %s sent a malformed drift window (%s): skipped", device["id"], why)
            continue
        registry.record_window(f"device:{device['id']}", f"edge:{device['device_group']}", version, result)
        stored += 1
    return stored


def fleet_metrics(registry: Any, limit: int = 2000) -> tuple[bytes, str]:
    """Prometheus text of the devices' last drift windows, per site (group), device and version."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

    r = CollectorRegistry()
    labels = ["site", "device", "version"]
    alarm = Gauge("datamoat_device_drift_alarm", "1 when the device's last window alarmed.", labels, registry=r)
    est = Gauge("datamoat_device_accuracy_estimate", "The device's last window's ATC estimate.", labels, registry=r)
    p_min = Gauge("datamoat_device_drift_min_p_value", "The last window's smallest p-value.", labels, registry=r)
    seen = set()
    for w in registry.drift_windows(limit=limit):  # newest first: the first of each device is its last
        if not w["server_id"].startswith("device:") or w["server_id"] in seen:
            continue
        seen.add(w["server_id"])
        key = (w["alias"].removeprefix("edge:"), w["server_id"].removeprefix("device:"), w["version_id"])
        alarm.labels(*key).set(int(w["alarm"]))
        est.labels(*key).set(w["estimate"]["estimate"])
        p_min.labels(*key).set(min(w["p_values"].values()))
    return generate_latest(r), CONTENT_TYPE_LATEST
