"""Canary routing and the off-path runner of canary and shadow releases (`datamoat.registry.releases`).

`route` sends a request to the canary by a stable hash: of its first input (route key "request":
the same image always lands on the same side) or of its client (route key "client": the
``X-Datamoat-Client`` header, else the token's name), so a client sees one version throughout.

`ShadowRunner` runs, on a thread of its own and after the answer was returned, the other side of
each released request: the shadow candidate on a production request, or the production version on
a canary request. Its answers go to the release log (`datamoat.registry.pairs`), never to a client.
Its queue is bounded: when the model falls behind, pairs are dropped and counted, and the request
path never waits. Its thread asks the OS for a lower priority, and a shadow's session runs on
`ServeConfig.shadow_threads` threads, so it takes what the primary leaves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.inference.engine import decide
from datamoat.inference.inputs import Prepare
from datamoat.registry.pairs import pair_row, write_pairs

__all__ = ["route", "in_canary", "ShadowRunner"]

log = logging.getLogger("datamoat.serve")
_STOP = object()


def in_canary(key: bytes, percent: float) -> bool:
    """Whether `key` falls in the first `percent` of a uniform hash space (stable everywhere).

    >>> sum(in_canary(str(i).encode(), 10) for i in range(10_000))  # about 1,000
    1029
    """
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")  # uniform on [0, 2**64)
    return h < percent / 100 * 2**64


def route(state: Any, x: np.ndarray, client: str) -> str:
    """ "canary" or "primary" for a request with inputs `x` (N, C, H, W) from `client`."""
    if state.canary is None:
        return "primary"
    key = client.encode()[:200] if state.canary_key == "client" else np.ascontiguousarray(x[0]).tobytes()
    return "canary" if in_canary(key, state.canary_percent) else "primary"


@dataclasses.dataclass
class _Job:
    role: str  # shadow | canary
    served: Any  # the state that answered
    version: str  # the version to run off the path
    prepare: Prepare
    x: np.ndarray  # (n, C, H, W) the inputs the served answers came from
    answers: list[dict[str, Any]]


class ShadowRunner:
    """The release log's producer; `submit` never blocks the request.

    >>> runner = ShadowRunner(registry.engine, lambda: ctl.state, top_k=3)  # doctest: +SKIP
    >>> runner.submit("shadow", served_state, shadow_version, prepare, x, answers)  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: Any,
        current_state: Callable[[], Any],
        top_k: int,
        max_queued: int = 1024,
        on_drop: Callable[[int], None] = lambda n: None,
        on_pairs: Callable[[str, int], None] = lambda role, n: None,
        flush_s: float = 0.5,
    ):
        self.engine, self.current_state, self.top_k = engine, current_state, top_k
        self.max_queued, self.on_drop, self.on_pairs, self.flush_s = max_queued, on_drop, on_pairs, flush_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued = 0  # inputs waiting (any thread, under the lock)
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()  # set while nothing waits or runs (tests and flushes)
        self.idle.set()

    def submit(self, role: str, served: Any, version: str, prepare: Prepare, x: np.ndarray, answers: list) -> bool:
        """Queue the off-path run of one request; False (and counted) when the queue is full."""
        with self._lock:
            if self.queued + len(x) > self.max_queued:
                self.on_drop(len(x))
                return False
            self.queued += len(x)
            self.idle.clear()
        self._queue.put(_Job(role, served, version, prepare, x, answers))
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="datamoat-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread is a task, so only this one is lowered
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        rows: list[dict[str, Any]] = []
        last = time.monotonic()
        while True:
            try:
                job = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                job = None
            if job is _STOP:
                break
            if job is not None:
                try:
                    rows += self._run(job)
                except Exception:  # a failing candidate must not stop the log
                    log.exception("off-path run of version %s failed", job.version)
                finally:
                    with self._lock:
                        self.queued -= len(job.x)
            if rows and (len(rows) >= 256 or time.monotonic() - last >= self.flush_s or self.queued == 0):
                rows = self._flush(rows)
                last = time.monotonic()
            with self._lock:
                if self.queued == 0 and not rows:
                    self.idle.set()
        self._flush(rows)

    def _flush(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            write_pairs(self.engine, rows)
        except Exception:  # a database hiccup loses these pairs, never the server
            log.exception("writing %d release-log rows failed", len(rows))
        return []

    def _run(self, job: _Job) -> list[dict[str, Any]]:
        """The off-path answers of one job, under the control state current now: a version taken
        down or a release ended since the request is not run, and suppressions apply."""
        now = self.current_state()
        side = now.shadow if job.role == "shadow" else now
        if side is None or side.model is None or side.model.version_id != job.version:
            return []
        model = side.model
        x = job.x if job.x.shape[1:] == model.input_shape else job.prepare(model.input_shape, model.photo)
        probs, _ = model.run(x)  # (n, K)
        pol = side.policy
        other = decide(probs, model.classes, now.suppressed, self.top_k, pol.get("threshold"), pol.get("per_class"))
        served_version = job.served.model.version_id
        out = [
            pair_row(job.role, now.alias, served_version, a, model.version_id, b)
            for a, b in zip(job.answers, other, strict=True)
        ]
        self.on_pairs(job.role, len(out))
        return out
