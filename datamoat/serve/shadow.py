"""Canary routing and the off-path runner of canary and shadow releases (`datamoat.registry.releases`).

`route` sends a request to the canary by a stable hash: of its first input (route key "request":
the same image always lands on the same side) or of its client (route key "client": the
``X-Datamoat-Client`` header, else the token's name), so a client sees one version throughout.

`ShadowRunner` runs, after the answer was returned, the other side of each released request: the
shadow candidate on a production request, or the production version on a canary request. Its
answers go to the release log (`datamoat.registry.pairs`), never to a client. It runs in a process
of its own, started with the first released request, at a lower OS priority and with
`ServeConfig.shadow_threads` ONNX Runtime threads: a thread in the server would share the server's
GIL, and a low-priority thread holding the GIL stalls every request behind it. The server only
queues the inputs; the queue is bounded, so when the runner falls behind pairs are dropped and
counted, and the request path never waits. The runner loads the versions from the registry itself
and checks every job against the newest control state the server sent it, so a candidate taken
down or a release ended is not run however many of its jobs were queued.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.inference.engine import renormalized
from datamoat.inference.inputs import Prepare
from datamoat.registry.pairs import pair_row, write_pairs

__all__ = ["route", "in_canary", "top_answers", "ShadowRunner"]

log = logging.getLogger("datamoat.serve")
_IN_MEMORY = ("sqlite://", "sqlite:///:memory:")  # another process cannot open these


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


class ShadowRunner:
    """The release log's producer; `submit` never blocks the request.

    >>> runner = ShadowRunner("sqlite:///reg.db", lambda: ctl.state)  # doctest: +SKIP
    >>> runner.submit("shadow", served_state, shadow_version, prepare, x, answers)  # doctest: +SKIP
    """

    def __init__(
        self,
        registry_url: str,
        current_state: Callable[[], Any],
        max_queued: int = 1024,
        threads: int = 1,
        on_drop: Callable[[int], None] = lambda n: None,
        on_pairs: Callable[[str, int], None] = lambda role, n: None,
        batch: int = 64,
        flush_s: float = 0.5,
    ):
        self.url, self.current_state, self.threads = registry_url, current_state, threads
        self.max_queued, self.on_drop, self.on_pairs = max_queued, on_drop, on_pairs
        self.batch, self.flush_s = batch, flush_s  # most inputs in one off-path model call; longest wait to write
        self._lock = threading.Lock()
        self.queued = 0  # inputs sent to the runner and not yet done (under the lock)
        self.idle = threading.Event()  # set while nothing waits, runs or is unwritten (tests, shutdown)
        self.idle.set()
        self._proc: Any = None
        self._jobs: Any = None
        self._sent: tuple[Any, ...] | None = None  # the control state the runner last got
        self._seen = -1  # the generation `refresh` last looked at

    # -- the server's side ------------------------------------------------------------------
    def refresh(self) -> None:
        """Send the runner what it may run as of the current state ({(role, version)} and the
        suppressions), if that changed: the controller calls this on every change, so queued jobs of
        a version just taken down are not run, and `submit` on a generation it has not seen yet."""
        st = self.current_state()
        if self._proc is None or st.generation == self._seen:
            return
        self._seen = st.generation
        ok = set()
        if st.model is not None and st.shadow is not None:
            ok.add(("shadow", st.shadow.model.version_id))
        if st.model is not None and st.canary is not None:
            ok.add(("canary", st.model.version_id))
        now = (frozenset(ok), dict(st.suppressed))
        if now != self._sent:
            self._sent = now
            self._jobs.put(("allow", *now))

    def _start(self) -> bool:
        if self.url in _IN_MEMORY:
            log.warning("an in-memory registry cannot be shared with the off-path runner: releases are not compared")
            return False
        ctx = multiprocessing.get_context("spawn")  # fork would copy the server's threads' locks
        self._jobs, done = ctx.Queue(), ctx.Queue()
        args = (self.url, self.threads, self.batch, self.flush_s, self._jobs, done)
        self._proc = ctx.Process(target=_runner_main, args=args, name="datamoat-shadow", daemon=True)
        self._proc.start()
        threading.Thread(target=self._receive, args=(done,), name="datamoat-shadow-done", daemon=True).start()
        return True

    def submit(self, role: str, served: Any, version: str, prepare: Prepare, x: np.ndarray, answers: list) -> bool:
        """Queue the off-path run of one request; False (and counted) when the queue is full."""
        st = self.current_state()
        side = st.shadow if role == "shadow" else st
        if side is None or side.model is None or side.model.version_id != version:
            return False
        with self._lock:
            if self.queued + len(x) > self.max_queued or (self._proc is None and not self._start()):
                self.on_drop(len(x))
                return False
            self.queued += len(x)
            self.idle.clear()
        model = side.model
        if x.shape[1:] != model.input_shape:  # the candidate reads another size: prepare it here, once
            x = prepare(model.input_shape, model.photo)
        self.refresh()
        conf = [float(a["top_k"][0]["probability"]) if a["top_k"] and not a["abstained"] else 0.0 for a in answers]
        served_rows = [(a["prediction_id"], a["label"], c) for a, c in zip(answers, conf, strict=True)]
        self._jobs.put(("job", role, st.alias, served.model.version_id, version, np.ascontiguousarray(x), served_rows))
        return True

    def _receive(self, done: Any) -> None:
        """The runner's reports: inputs done, pairs written per role, whether anything is unwritten."""
        while True:
            try:
                msg = done.get()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            n, pairs, clean = msg
            for role, k in pairs.items():
                self.on_pairs(role, k)
            with self._lock:
                self.queued -= n
                if self.queued == 0 and clean:
                    self.idle.set()

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        self._jobs.put(("stop",))
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc = None


# -- the runner's side (its own process) ---------------------------------------------------------
def _take(jobs: Any, batch: int, wait_s: float) -> list[tuple]:
    """The messages queued now: the first waited for up to `wait_s`, then up to `batch` inputs more."""
    try:
        msgs = [jobs.get(timeout=wait_s)]
    except queue.Empty:
        return []
    n = len(msgs[0][5]) if msgs[0][0] == "job" else 0
    while n < batch and msgs[-1][0] != "stop":
        try:
            m = jobs.get_nowait()
        except queue.Empty:
            break
        msgs.append(m)
        n += len(m[5]) if m[0] == "job" else 0
    return msgs


def _runner_main(url: str, threads: int, batch: int, flush_s: float, jobs: Any, done: Any) -> None:
    """The off-path runner: run allowed jobs, one model call per version, write pairs, report."""
    from datamoat.registry.core import Registry
    from datamoat.registry.register import load_version

    with contextlib.suppress(OSError):
        os.nice(10)  # the whole process: it takes what the server leaves
    reg = Registry(url)
    models: dict[str, Any] = {}
    allowed: frozenset = frozenset()
    suppressed: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    last, stop = time.monotonic(), False
    while not stop:
        msgs = _take(jobs, batch, flush_s)
        todo, n_in, pairs = [], 0, Counter[str]()
        for m in msgs:
            if m[0] == "stop":
                stop = True
            elif m[0] == "allow":
                allowed, suppressed = m[1], m[2]  # newest first: queued jobs are checked against it
            else:
                todo.append(m)
                n_in += len(m[5])
        for role, version in dict.fromkeys((m[1], m[4]) for m in todo):
            mine = [m for m in todo if (m[1], m[4]) == (role, version)]
            if (role, version) not in allowed:
                continue  # taken down or ended since it was queued: never run
            try:
                if version not in models:
                    if len(models) >= 3:
                        models.pop(next(iter(models)))
                    models[version] = load_version(reg, version, threads)
                model = models[version]
                probs, _ = model.run(np.concatenate([m[5] for m in mine]))  # (sum n, K)
            except Exception:  # a broken candidate loses its pairs, never the runner
                log.exception("off-path run of version %s failed", version)
                continue
            labels, conf = top_answers(probs, model.classes, suppressed)
            served = [(m, s) for m in mine for s in m[6]]
            for (m, (pid, s_label, s_conf)), label, c in zip(served, labels, conf, strict=True):
                ans = {
                    "prediction_id": pid,
                    "label": s_label,
                    "abstained": s_label is None,
                    "top_k": [{"probability": s_conf}],
                }
                rows.append(pair_row(role, m[2], m[3], ans, version, label, c))
            pairs[role] += len(served)
        wrote = bool(rows) and (stop or len(rows) >= 256 or time.monotonic() - last >= flush_s or jobs.empty())
        if wrote:
            try:
                write_pairs(reg.engine, rows)
            except Exception:  # a database hiccup loses these pairs, never the server
                log.exception("writing %d release-log rows failed", len(rows))
            rows, last = [], time.monotonic()
        if msgs or wrote:
            done.put((n_in, dict(pairs), not rows))
    done.put(None)
