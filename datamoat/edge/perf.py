"""What a device measures about itself for its heartbeat.

The latency of its recent predictions (the runtime's in-process path:
prepare, ONNX Runtime, decide; no HTTP), its resident memory and the model it
serves travel in every heartbeat, so `datamoat fleet status --json` carries
the fleet's real figures and `datamoat plan --edge-bench` can read them
instead of a guess. Only the last `keep` predictions count: a percentile of
the device as it runs now, not since boot.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Any

__all__ = ["Perf", "rss_mb", "percentile"]


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 1]) of an ascending list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


def rss_mb() -> float | None:
    """This process's resident memory in MiB (Linux /proc), or None where it cannot be read.

    >>> (rss_mb() or 1.0) > 0
    True
    """
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return round(kib / 1024, 1)


class Perf:
    """Latencies of the last `keep` predictions, and the snapshot a heartbeat carries.

    >>> p = Perf()
    >>> for ms in (1.0, 2.0, 3.0): p.add(ms)
    >>> p.snapshot({"name": "m", "version": "v1"})["latency_ms"]
    {'n': 3, 'p50': 2.0, 'p95': 3.0, 'p99': 3.0}
    """

    def __init__(self, keep: int = 1000) -> None:
        self.ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self.lock:
            self.ms.append(ms)

    def snapshot(self, model: dict[str, Any] | None) -> dict[str, Any]:
        with self.lock:
            xs = sorted(self.ms)
        latency = (
            {"n": len(xs), **{f"p{round(q * 100)}": round(percentile(xs, q), 3) for q in (0.5, 0.95, 0.99)}}
            if xs
            else None
        )
        return {"latency_ms": latency, "latency_path": "in-process predict", "rss_mb": rss_mb(), "model": model}
