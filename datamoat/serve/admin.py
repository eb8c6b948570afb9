"""Tokens and the HTTP control endpoints.

Prediction and control are separate: `/v1/predict` and `/v1/feedback` take a
predict token (feedback also a review token), the `/v1/admin/*` endpoints
only an admin token. A missing or unknown token is 401, a token of the wrong
role 403. Each control endpoint calls the same `Registry` method as the CLI,
with the token's name as the actor in the audit log, and returns once every
live server acknowledged the change (or says which did not, under
``servers.missing``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from datamoat.errors import TooMany
from datamoat.inference.http import bearer
from datamoat.registry.alerts import send_alert
from datamoat.registry.core import AuthError, Registry

__all__ = ["TokenCache", "predict_actor", "feedback_actor", "admin_actor", "reader", "admin_router"]


class TokenCache:
    """`Registry.check_token` with accepted tokens remembered for `ttl` seconds,
    so a prediction does not cost a database read. Rejections are never cached.

    >>> import asyncio
    >>> asyncio.run(TokenCache(Registry("sqlite://"), 5.0).check(None, ("admin",)))
    Traceback (most recent call last):
    ...
    datamoat.registry.tokens.AuthError: missing token: this endpoint needs a token with role admin, sent as 'Authorization: Bearer <token>'
    """

    def __init__(self, registry: Registry, ttl: float, generation: Callable[[], int] = lambda: 0):
        # An accepted token is remembered only while the registry generation it
        # was checked at is current: a revocation moves the generation, so every
        # server stops accepting the token at its next poll (M3).
        self.registry, self.ttl, self.generation = registry, ttl, generation
        self._ok: dict[tuple[str, tuple[str, ...]], tuple[str, float, int]] = {}

    async def check(self, token: str | None, roles: tuple[str, ...]) -> str:
        """The token's name if it has one of `roles` (admin has all), else `AuthError`."""
        if not token:
            need = " or ".join(roles)
            raise AuthError(
                f"missing token: this endpoint needs a token with role {need}, sent as 'Authorization: Bearer <token>'"
            )
        key = (hashlib.sha256(token.encode()).hexdigest(), roles)
        hit, gen = self._ok.get(key), self.generation()
        if hit and hit[1] > time.monotonic() and hit[2] == gen:
            return hit[0]
        name = await asyncio.to_thread(self._check, token, roles)
        if len(self._ok) > 10_000:  # bound memory whatever clients send
            self._ok.clear()
        self._ok[key] = (name, time.monotonic() + self.ttl, gen)
        return name

    def _check(self, token: str, roles: tuple[str, ...]) -> str:
        for i, role in enumerate(roles):
            try:
                return self.registry.check_token(token, role)
            except AuthError as e:
                if e.http_status != 403 or i == len(roles) - 1:
                    raise
        raise AssertionError("unreachable")


async def predict_actor(request: Request) -> str:
    ctx = request.app.state.serve
    actor = "anonymous" if not ctx.config.require_predict_token else await ctx.auth.check(bearer(request), ("predict",))
    if not ctx.predict_quota.take(actor):
        raise TooMany(f"token {actor!r} is over its {ctx.config.predict_rate_per_token:g} requests/s: slow down")
    return actor


async def reader(request: Request) -> str:
    """Who reads /v1/model or /metrics: anyone where the operator opened the path,
    else a token of role monitor (or predict and review for /v1/model; admin has all)."""
    ctx = request.app.state.serve
    path = request.url.path
    if path in ctx.config.open_paths:
        return "anonymous"
    roles = ("monitor",) if path == "/metrics" else ("monitor", "predict", "review")
    return await ctx.auth.check(bearer(request), roles)


async def feedback_actor(request: Request) -> str:
    ctx = request.app.state.serve
    if not ctx.config.require_predict_token:
        return "anonymous"
    return await ctx.auth.check(bearer(request), ("predict", "review"))


async def admin_actor(request: Request) -> str:
    return await request.app.state.serve.auth.check(bearer(request), ("admin",))


admin_router = APIRouter(prefix="/v1/admin", tags=["admin"])
Ref = Field(min_length=1, max_length=200, description="Version id, unique id prefix, or name.")
Reason = Field(min_length=1, max_length=2000, description="Why, for the audit log (required).")
Wait = Field(5.0, ge=0, le=60, description="Seconds to wait for running servers to acknowledge.")
AliasF = Field(None, min_length=1, max_length=100, description="Default: the alias this server serves.")


class PromoteIn(BaseModel):
    version: str = Ref
    alias: str | None = AliasF
    reason: str = Field("", max_length=2000)
    wait_s: float = Wait


class RollbackIn(BaseModel):
    alias: str | None = AliasF
    reason: str = Field("", max_length=2000)
    wait_s: float = Wait


class TakedownIn(BaseModel):
    version: str = Ref
    reason: str = Reason
    fallback: str | None = Field(None, min_length=1, max_length=200, description="A safe version to serve instead.")
    wait_s: float = Wait


class RestoreIn(BaseModel):
    version: str = Ref
    reason: str = Reason
    wait_s: float = Wait


class SuppressIn(BaseModel):
    label: str = Field(min_length=1, max_length=200)
    reason: str = Reason
    alias: str = Field("*", min_length=1, max_length=100, description="'*': every alias.")
    mode: Literal["abstain", "renormalize"] = "abstain"
    wait_s: float = Wait


class UnsuppressIn(BaseModel):
    label: str = Field(min_length=1, max_length=200)
    reason: str = Reason
    alias: str = Field("*", min_length=1, max_length=100)
    wait_s: float = Wait


async def _control(request: Request, method: str, wait_s: float, *args: Any, **kwargs: Any) -> dict[str, Any]:
    reg: Registry = request.app.state.serve.registry
    out = await asyncio.to_thread(getattr(reg, method), *args, **kwargs)
    out["servers"] = await asyncio.to_thread(reg.wait_for_acks, out["generation"], wait_s)
    out["alerts"] = await asyncio.to_thread(send_alert, reg, method, {k: v for k, v in out.items() if k != "servers"})
    return out


def _alias(request: Request, alias: str | None) -> str:
    return alias or request.app.state.serve.config.alias


@admin_router.post("/promote")
async def promote(body: PromoteIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Point an alias at a registered version."""
    return await _control(
        request, "promote", body.wait_s, body.version, _alias(request, body.alias), actor=actor, reason=body.reason
    )


@admin_router.post("/rollback")
async def rollback(body: RollbackIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Point an alias back at its previous version."""
    return await _control(
        request, "rollback", body.wait_s, _alias(request, body.alias), actor=actor, reason=body.reason
    )


@admin_router.post("/takedown")
async def takedown(body: TakedownIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Kill switch: stop answering with a version (503, or the fallback)."""
    return await _control(
        request, "takedown", body.wait_s, body.version, actor=actor, reason=body.reason, fallback=body.fallback
    )


@admin_router.post("/restore")
async def restore(body: RestoreIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Undo a takedown."""
    return await _control(request, "restore", body.wait_s, body.version, actor=actor, reason=body.reason)


@admin_router.post("/suppress")
async def suppress(body: SuppressIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Never output a label: abstain (needs review) or renormalise over the rest."""
    return await _control(
        request, "suppress", body.wait_s, body.label, actor=actor, reason=body.reason, alias=body.alias, mode=body.mode
    )


@admin_router.post("/unsuppress")
async def unsuppress(body: UnsuppressIn, request: Request, actor: str = Depends(admin_actor)) -> dict[str, Any]:
    """Undo a suppression."""
    return await _control(
        request, "unsuppress", body.wait_s, body.label, actor=actor, reason=body.reason, alias=body.alias
    )
