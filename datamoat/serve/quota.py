"""Per-token quotas: a token bucket for each caller, in this server's memory.

A bucket holds at most `burst` units and refills at `rate` per second; a
request that finds too few units is refused (429), never queued. Buckets
live per server process, so N servers allow N times the rate: quotas bound
what one token can make one server do, not a global budget (the feedback
quota, which must hold across servers, counts rows in the database).
"""

from __future__ import annotations

import threading
import time

__all__ = ["Quotas"]


class Quotas:
    """Token buckets by key (a token's name).

    >>> q = Quotas(rate=1.0, burst=2)
    >>> [q.take("app") for _ in range(3)]
    [True, True, False]
    >>> Quotas(rate=0, burst=0).take("anyone", 10**6)  # rate 0: no quota
    True
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000):
        self.rate, self.burst, self.max_keys = float(rate), float(burst), max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (units, last refill)
        self._lock = threading.Lock()

    def take(self, key: str, units: float = 1.0) -> bool:
        """Spend `units` of `key`'s bucket; False (and nothing spent) if it holds fewer."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            have, last = self._buckets.get(key, (self.burst, now))
            have = min(self.burst, have + (now - last) * self.rate)
            ok = have >= units
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bound memory whatever keys arrive: everyone starts full again
            self._buckets[key] = (have - units if ok else have, now)
            return ok
