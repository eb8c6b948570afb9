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

from datamoat.inference.engine import renormalized
from datamoat.inference.inputs import Prepare
from datamoat.registry.pairs import pair_row, write_pairs

__all__ = ["route", "in_canary", "top_answers", "ShadowRunner"]

log = logging.getLogger("datamoat.serve")
_STOP = object()


def in_canary(key: bytes, percent: float) -> bool:
    """Whether `key` falls in the first `percent` of a uniform hash space (stable everywhere).

    >>> sum(in_canary(str(i).encode(), 10) for i in range(10_000))  # about 1,000
    1029
    """
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")  # uniform on [0, 2**64)
    return h < percent / 100 * 2**64


def top_answers(
    probs: np.ndarray, classes: list[str], suppressed: dict[str, str]
) -> tuple[list[str | None], np.ndarray]:
    """The label (None: abstained) and confidence `decide` would give each row of probs (N, K)
    under the suppressions, without building its answers: the off-path runner needs only these.

    >>> top_answers(np.array([[0.6, 0.3, 0.1]]), ["a", "b", "c"], {"a": "abstain"})[0]
    [None]
    """
    p, renorm, abstain = renormalized(probs, classes, suppressed)  # (N, K), (K,), (K,)
    best = np.where(renorm, -1.0, p).argmax(1)  # (N,) as decide picks it
    out = renorm[best] | abstain[best]  # (N,) abstained
    conf = np.where(out, 0.0, p[np.arange(len(p)), best])  # (N,)
    return [None if a else classes[b] for a, b in zip(out.tolist(), best.tolist(), strict=True)], conf


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

    >>> runner = ShadowRunner(registry.engine, lambda: ctl.state)  # doctest: +SKIP
    >>> runner.submit("shadow", served_state, shadow_version, prepare, x, answers)  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: Any,
        current_state: Callable[[], Any],
        max_queued: int = 1024,
        batch: int = 64,
        on_drop: Callable[[int], None] = lambda n: None,
        on_pairs: Callable[[str, int], None] = lambda role, n: None,
        flush_s: float = 0.5,
    ):
        self.engine, self.current_state = engine, current_state
        self.max_queued, self.on_drop, self.on_pairs, self.flush_s = max_queued, on_drop, on_pairs, flush_s
        self.batch = batch  # most inputs in one off-path model call
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

    def _take(self) -> tuple[list[_Job], bool]:
        """(the jobs queued now, up to `batch` inputs, waiting up to `flush_s` for the first; stop?)."""
        try:
            first = self._queue.get(timeout=self.flush_s)
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        jobs, n = [first], len(first.x)
        while n < self.batch:  # one model call for what piled up: the per-call cost is paid once
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            n += len(job.x)
        return jobs, False

    def _work(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread is a task, so only this one is lowered
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        rows: list[dict[str, Any]] = []
        last, stop = time.monotonic(), False
        while not stop:
            jobs, stop = self._take()
            if jobs:
                try:
                    rows += self._run(jobs)
                except Exception:  # a failing candidate must not stop the log
                    log.exception("off-path run of version %s failed", jobs[0].version)
                finally:
                    with self._lock:
                        self.queued -= sum(len(j.x) for j in jobs)
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

    def _run(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """The off-path answers of some jobs, one model call per version, under the control state
        current now: a version taken down or a release ended since the request is not run, and
        suppressions apply."""
        now = self.current_state()
        out: list[dict[str, Any]] = []
        for role, version in dict.fromkeys((j.role, j.version) for j in jobs):
            side = now.shadow if role == "shadow" else now
            if side is None or side.model is None or side.model.version_id != version:
                continue
            model, mine = side.model, [j for j in jobs if (j.role, j.version) == (role, version)]
            xs = [
                j.x if j.x.shape[1:] == model.input_shape else j.prepare(model.input_shape, model.photo) for j in mine
            ]
            probs, _ = model.run(np.concatenate(xs))  # (sum n, K)
            labels, conf = top_answers(probs, model.classes, now.suppressed)
            answers = [(j, a) for j in mine for a in j.answers]
            for (j, a), label, c in zip(answers, labels, conf, strict=True):
                out.append(pair_row(role, now.alias, j.served.model.version_id, a, version, label, c))
            self.on_pairs(role, len(answers))
        return out
