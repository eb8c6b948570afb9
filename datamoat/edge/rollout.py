"""Staged rollouts, as pure functions over plain dicts.

A rollout sends one bundle to a percentage of one device group. Which
devices are in is a stable hash, ``sha256(device_id + rollout_id) mod 100 <
percent``: the same device is always in or out for a given rollout, and
raising the percent only adds devices (a device in at 20% is in at 50%).
Devices left out get the group's *baseline*: the bundle of the last rollout
that reached 100% and that at least one device installed.

A rollout with an abort threshold stops when the share of its assigned
devices that reported a failed install (rejected, refused, or rolled back)
reaches the threshold; every device then gets the baseline again, and the
assignment allows that downgrade explicitly. Without such an explicit
allowance a device refuses a bundle with a lower sequence number than the
one it runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["selected", "assign", "baseline_for_next", "abort_verdict", "FAILED"]

FAILED = ("rejected", "refused", "rolled_back")  # install outcomes that count against a rollout


def selected(device_id: str, rollout_id: str, percent: float) -> bool:
    """Is the device in a rollout at `percent`? Stable, and monotone in `percent`.

    >>> selected("dev-1", "lab-1", 0), selected("dev-1", "lab-1", 100)
    (False, True)
    >>> all(selected(d, "r", 50) <= selected(d, "r", 80) for d in map(str, range(200)))
    True
    """
    bucket = int(hashlib.sha256((device_id + rollout_id).encode()).hexdigest(), 16) % 100
    return bucket < percent


def assign(device_id: str, rollout: dict[str, Any] | None) -> dict[str, Any]:
    """What a device should run under its group's current rollout.

    Returns ``{"bundle_sha", "allow_downgrade", "rollout_id", "selected"}``;
    ``rollout_id`` is set only when the bundle is the rollout's target, so
    install reports count against the right rollout.

    >>> r = {"id": "lab-2", "bundle_sha": "new", "baseline_sha": "old", "percent": 100,
    ...      "state": "aborted", "allow_downgrade": False}
    >>> assign("dev-1", r)["bundle_sha"], assign("dev-1", r)["allow_downgrade"]
    ('old', True)
    """
    if rollout is None:
        return {"bundle_sha": None, "allow_downgrade": False, "rollout_id": None, "selected": False}
    if rollout["state"] == "aborted":  # the operator's threshold authorised returning the fleet
        return {"bundle_sha": rollout["baseline_sha"], "allow_downgrade": True, "rollout_id": None, "selected": False}
    if selected(device_id, rollout["id"], rollout["percent"]):
        return {
            "bundle_sha": rollout["bundle_sha"],
            "allow_downgrade": bool(rollout["allow_downgrade"]),
            "rollout_id": rollout["id"],
            "selected": True,
        }
    return {"bundle_sha": rollout["baseline_sha"], "allow_downgrade": False, "rollout_id": None, "selected": False}


def baseline_for_next(current: dict[str, Any] | None, installed: int) -> str | None:
    """The baseline a new rollout inherits from the group's current one.

    A completed rollout (100%, not aborted, installed by at least one device)
    becomes the baseline; otherwise the current rollout's own baseline stays.

    >>> baseline_for_next({"bundle_sha": "b", "baseline_sha": "a", "percent": 100, "state": "active"}, 3)
    'b'
    >>> baseline_for_next({"bundle_sha": "b", "baseline_sha": "a", "percent": 100, "state": "active"}, 0)
    'a'
    """
    if current is None:
        return None
    if current["percent"] >= 100 and current["state"] != "aborted" and installed > 0:
        return current["bundle_sha"]
    return current["baseline_sha"]


def abort_verdict(failed: int, assigned: int, abort_percent: float | None) -> str | None:
    """Why the rollout must abort now, or None.

    >>> abort_verdict(2, 5, 50.0) is None, abort_verdict(3, 5, 50.0)
    (True, 'failure rate 60% (3 of 5 assigned devices) reached the abort threshold of 50%')
    """
    if abort_percent is None or assigned <= 0 or failed <= 0:
        return None
    rate = 100.0 * failed / assigned
    if rate >= abort_percent:
        return (
            f"failure rate {rate:.0f}% ({failed} of {assigned} assigned devices) "
            f"reached the abort threshold of {abort_percent:g}%"
        )
    return None
