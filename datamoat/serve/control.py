"""Live control: follow the registry, swap the serving state, acknowledge.

A watcher polls ``registry.generation()`` every `poll_interval_s`. On a
change it reads one `snapshot()`, computes the target version
(`Registry.serving_target`: the alias, or a takedown's fallback, or None for
503), the suppressions and the version's review policy, loads the version's
session if it is not cached, swaps the serving state in one assignment,
waits for the predictions that started under an older state to finish, and
only then acknowledges the new generation with a heartbeat. The operator's
command (`wait_for_acks`) returns once every live server has acknowledged.

The guarantee, and its bound. After a change to generation G, this server
acknowledges G within

    poll_interval_s + snapshot read + session load (none if cached)
    + min(drain of older predictions, drain_timeout_s) + one heartbeat write

With the defaults that is at most 0.1 s + ~10-50 ms for a small model +
1 s, and in practice, with fast predictions, a few hundred ms at worst
(a rollback across two servers on real ports acknowledged in ~0.1 s on a
busy 2-core machine). The operator's command returns when every live
server acknowledged. Once this server has acknowledged, no answer computed
by the superseded state leaves it:

- a prediction is counted in flight, under the generation current when it
  arrived, until its response has been handed to the socket, and the ack
  waits for every prediction of an older generation;
- a batch reads the state when it is dispatched, never earlier;
- after inference each prediction re-checks the current state: if its
  version is no longer the target it is recomputed (or answered 503), and
  the current suppressions are applied to the answer in any case.

A server cut off from its registry (a network partition, a stopped
database) cannot learn of a takedown, and the operator's command stops
waiting for a server whose last heartbeat is `LIVE_WITHIN_S` (10 s) old.
So a server that has not read the registry for `fence_s` (5 s; at most
10 s less one heartbeat) fences itself: it answers 503, and /readyz says
not ready, until a read succeeds again. Among servers whose clocks agree,
one the command did not wait for no longer answers.

The drain and the re-check each suffice alone (tests/serve checks the
guarantee under concurrent load with inference slowed to widen the race).
The drain wait is bounded so one stuck client cannot hold up an incident
response; the re-check still covers such a request, so the only answer
that can still be on its way after the ack is one that passed its re-check
before the change was applied and is being written to a client slower than
`drain_timeout_s`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from datamoat.inference.engine import LoadedVersion
from datamoat.registry.core import Registry
from datamoat.serve.config import ServeConfig
from datamoat.serve.engine import SessionCache

__all__ = ["ServingState", "Controller"]

log = logging.getLogger("datamoat.serve")


@dataclasses.dataclass(frozen=True)
class ServingState:
    """What this server answers with, as of one registry generation."""

    generation: int
    alias: str
    model: LoadedVersion | None  # None: answer 503 with `reason`
    reason: str
    suppressed: dict[str, str]  # label -> mode
    alias_version: str | None  # what the alias points at (may be taken down)
    takedowns: dict[str, Any]
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)  # the served version's `Registry.policy`
    role: str = "primary"  # primary | canary | shadow: which side of the alias's releases this state is
    canary: ServingState | None = None  # the canary's side (its model and policy), if one runs
    canary_percent: float = 0.0
    canary_key: str = "request"
    shadow: ServingState | None = None  # the shadow's side, run off the request path

    @property
    def version_id(self) -> str | None:
        return self.model.version_id if self.model else None

    def side(self, role: str) -> ServingState:
        """The state that answers a request routed to `role`: the canary's while one runs, else this."""
        return self.canary if role == "canary" and self.canary is not None else self


class Controller:
    """Owns the serving state, in-flight accounting and acknowledgements.

    >>> ctl = Controller(registry, ServeConfig(), cache, "srv-1", "http://h:8000")  # doctest: +SKIP
    >>> await ctl.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        registry: Registry,
        config: ServeConfig,
        cache: SessionCache,
        server_id: str,
        url: str,
        on_ack: Callable[[int], None] | None = None,
        shadow_cache: SessionCache | None = None,
    ):
        self.registry, self.config, self.cache, self.shadow_cache = registry, config, cache, shadow_cache
        self.server_id, self.url, self.on_ack = server_id, url, on_ack
        self.state = ServingState(-1, config.alias, None, "starting", {}, None, {})
        self.acked = -1
        self.confirmed = -float("inf")  # monotonic time of the last registry read that confirmed `state`
        self._inflight: collections.Counter[int] = collections.Counter()
        self._beat = asyncio.Lock()

    # -- in-flight accounting (event-loop thread only) --------------------------------
    def enter(self) -> int:
        g = self.state.generation
        self._inflight[g] += 1
        return g

    def leave(self, g: int) -> None:
        self._inflight[g] -= 1
        if self._inflight[g] <= 0:
            del self._inflight[g]

    def older_in_flight(self, generation: int) -> int:
        return sum(n for g, n in self._inflight.items() if g < generation)

    # -- applying registry state ------------------------------------------------------
    def _build(self, snap: dict[str, Any]) -> ServingState:
        alias = self.config.alias
        target, why = Registry.serving_target(snap, alias)
        model = None
        if target is not None:
            try:
                model = self.cache.get(target)
            except Exception as e:  # a broken artifact must not take the server down: answer 503
                log.exception("loading version %s failed", target)
                why = f"version {target} could not be loaded ({type(e).__name__}: {e}): promote or roll back"
        policy = Registry.policy_of(snap, model.version_id, model.info) if model else {}
        suppressed = Registry.suppressed_for(snap, alias)
        base = ServingState(
            snap["generation"], alias, model, why, suppressed, snap["aliases"].get(alias), snap["takedowns"], policy
        )
        if model is None:
            return base  # nothing answers: neither does a release beside it
        sides: dict[str, ServingState] = {}
        for kind, rel in snap.get("releases", {}).get(alias, {}).items():
            vid = rel["version"]
            if vid in snap["takedowns"] or vid == model.version_id:
                continue  # a taken-down candidate never runs; its requests stay with the alias's version
            cache = self.shadow_cache if kind == "shadow" and self.shadow_cache is not None else self.cache
            try:
                m = cache.get(vid)
            except Exception:  # a broken candidate must not take the alias down: its release pauses
                log.exception("loading %s version %s failed", kind, vid)
                continue
            pol = Registry.policy_of(snap, vid, m.info)
            sides[kind] = dataclasses.replace(base, model=m, reason=kind, policy=pol, role=kind)
        canary = snap.get("releases", {}).get(alias, {}).get("canary", {})
        return dataclasses.replace(
            base,
            canary=sides.get("canary"),
            canary_percent=float(canary.get("percent", 0.0)),
            canary_key=canary.get("route_key", "request"),
            shadow=sides.get("shadow"),
        )

    def unavailable(self) -> str | None:
        """Why this server answers 503 now (no servable model, or fenced), else None."""
        return self.state.reason if self.state.model is None else self.fenced()

    def fenced(self) -> str | None:
        """Why this server must not answer, if it has lost the registry: after `fence_s` without a
        registry read it cannot know whether its model was taken down, and the operator's command
        stops waiting for it once its heartbeat is `LIVE_WITHIN_S` old, so it stops answering first."""
        age = time.monotonic() - self.confirmed
        if self.config.fence_s <= 0 or age <= self.config.fence_s:
            return None
        since = f"for {age:.1f} s" if age < float("inf") else "yet"
        return (
            f"this server has not reached its registry {since} (fence_s={self.config.fence_s:g}), so it cannot tell "
            "whether its model was taken down: it answers again once the registry database is reachable"
        )

    async def apply(self) -> ServingState:
        """Read the registry, swap state, drain, acknowledge. Returns the new state."""
        read_at = time.monotonic()
        snap = await asyncio.to_thread(self.registry.snapshot)
        if snap["generation"] != self.state.generation:
            new = await asyncio.to_thread(self._build, snap)
            self.state = new  # the swap: one assignment on the event loop
            self.confirmed = read_at
            deadline = time.monotonic() + self.config.drain_timeout_s
            while self.older_in_flight(new.generation) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
        else:
            self.confirmed = read_at
        await self.heartbeat(self.state.generation)
        return self.state

    async def heartbeat(self, acked: int | None = None) -> None:
        # Serialised, so a slow periodic beat cannot overwrite a newer ack with an older one.
        async with self._beat:
            if acked is not None:
                self.acked = acked
                if self.on_ack is not None:
                    self.on_ack(acked)  # e.g. the generation gauge, current in every worker, not just a scraped one
            await asyncio.to_thread(self.registry.heartbeat, self.server_id, self.url, self.config.alias, self.acked)

    # -- background tasks -----------------------------------------------------------------
    async def start(self) -> None:
        """Load the current state and register this server (before serving)."""
        await self.apply()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                read_at = time.monotonic()
                gen = await asyncio.to_thread(self.registry.generation)
                if gen != self.state.generation:
                    await self.apply()
                else:
                    self.confirmed = read_at
            except Exception:  # a database hiccup: keep serving the last state (until fence_s), retry next poll
                log.exception("registry poll failed")

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    async def stop(self) -> None:
        await asyncio.to_thread(self.registry.forget_server, self.server_id)
