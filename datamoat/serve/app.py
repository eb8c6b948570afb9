"""The FastAPI app: predict, feedback, model info, health, metrics, control, review.

`create_app(registry, config)` returns an ASGI app; its lifespan loads the
alias's version, registers the server, and runs the background tasks (the
control watcher, heartbeats, the batcher and the prediction-log writer).
Every error is ``{"error": "<what is wrong and how to fix it>"}`` with a 4xx
status (503 while no model is servable); bad input never reaches a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from datamoat.errors import Unavailable
from datamoat.feedback.releases import apply_rules
from datamoat.feedback.review import ReviewQueue
from datamoat.inference.engine import describe
from datamoat.inference.http import install_error_handlers
from datamoat.inference.inputs import PREDICT_BODY, Prepare, install_pillow_limits, parse_payload, read_payload
from datamoat.registry.core import Registry
from datamoat.registry.pairs import ensure_pairs
from datamoat.serve.admin import TokenCache, admin_router, feedback_actor, predict_actor, reader
from datamoat.serve.answer import answer
from datamoat.serve.batcher import Batcher
from datamoat.serve.config import ServeConfig
from datamoat.serve.control import Controller
from datamoat.serve.engine import SessionCache
from datamoat.serve.logstore import PredictionLog
from datamoat.serve.metrics import ServeMetrics, worker_exited
from datamoat.serve.monitor import DriftMonitor
from datamoat.serve.monitor_page import monitor_router
from datamoat.serve.quota import Quotas
from datamoat.serve.review import review_router
from datamoat.serve.shadow import ShadowRunner
from datamoat.serve.v2 import v2_router

__all__ = ["create_app", "app_from_env", "ServeContext"]

log = logging.getLogger("datamoat.serve")


@dataclasses.dataclass
class ServeContext:
    """Everything one app owns; reachable as ``app.state.serve``."""

    registry: Registry
    config: ServeConfig
    server_id: str
    metrics: ServeMetrics
    controller: Controller
    batcher: Batcher
    plog: PredictionLog
    auth: TokenCache
    review: ReviewQueue
    predict_quota: Quotas
    review_quota: Quotas
    monitor: DriftMonitor | None = None
    shadow: ShadowRunner | None = None
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)  # what it serves on (/v1/model)


def create_app(registry: Registry, config: ServeConfig | None = None) -> FastAPI:
    """An ASGI app serving `config.alias` from `registry`.

    >>> app = create_app(Registry("sqlite:///reg.db"), ServeConfig(alias="production"))  # doctest: +SKIP
    >>> uvicorn.run(app, port=8000)  # doctest: +SKIP
    """
    cfg = config or ServeConfig()
    server_id = cfg.server_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    from datamoat.inference.hardware import describe_hardware, resolve_ort_device

    device = resolve_ort_device(cfg.device)  # refused here, before anything starts, if it cannot run
    install_pillow_limits(cfg.max_image_pixels)
    metrics = ServeMetrics()
    ctl = Controller(
        registry,
        cfg,
        SessionCache(registry, cfg.ort_threads, embeddings=cfg.drift_window > 0, device=device),
        server_id,
        cfg.url or f"inprocess:{server_id}",
        on_ack=metrics.generation.set,
        shadow_cache=SessionCache(registry, cfg.shadow_threads, device=device),
    )
    monitor = None
    if cfg.drift_window:
        monitor = DriftMonitor(
            registry,
            server_id,
            cfg.drift_window,
            metrics.drift,
            accuracy_floor=cfg.accuracy_floor,
            alert_interval_s=cfg.alert_interval_s,
        )
    batcher = Batcher(
        lambda: ctl.state,
        cfg.max_batch_size,
        cfg.max_wait_ms,
        metrics.batch_size.observe,
        max_queued=cfg.max_queued_inputs,
        on_outputs=(lambda st, p, e, x: monitor.observe(st.alias, st.model.version_id, p, e, x)) if monitor else None,
    )
    plog = PredictionLog(
        registry, cfg.log_predictions, review_max_open=cfg.review_max_open, on_review_skipped=metrics.review_skipped.inc
    )
    ctx = ServeContext(
        registry,
        cfg,
        server_id,
        metrics,
        ctl,
        batcher,
        plog,
        TokenCache(registry, cfg.auth_cache_s, lambda: ctl.state.generation),
        ReviewQueue(registry, cfg.guarantee_action),
        Quotas(cfg.predict_rate_per_token, 10 * cfg.predict_rate_per_token),
        Quotas(cfg.review_rate_per_token, 100),
        monitor,
        ShadowRunner(
            registry.url,
            lambda: ctl.state,
            cfg.shadow_queue,
            cfg.shadow_threads,
            on_drop=metrics.shadow_dropped.inc,
            on_pairs=lambda role, n: metrics.release_pairs.labels(role).inc(n),
        ),
        describe_hardware(device),
    )
    runner = ctx.shadow
    assert runner is not None

    def acked(generation: int) -> None:
        metrics.generation.set(generation)
        runner.refresh()  # the off-path runner's queued jobs see a takedown at once

    ctl.on_ack = acked
    docs = "/docs" in cfg.open_paths  # the schema lists every endpoint: closed unless opened
    app = FastAPI(
        title="datamoat",
        version="1",
        lifespan=_lifespan,
        description=__doc__,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.serve = ctx
    install_error_handlers(app, "server", "the README lists them; `serve --open /docs` shows them")
    app.add_exception_handler(sa.exc.OperationalError, _registry_unreachable)
    app.add_middleware(_Gate, ctx=ctx)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(review_router)
    app.include_router(v2_router)
    app.include_router(monitor_router)
    return app


CONFIG_ENV, REGISTRY_ENV = "DATAMOAT_SERVE_CONFIG", "DATAMOAT_SERVE_REGISTRY"


def app_from_env() -> FastAPI:
    """The app factory that `datamoat serve --workers N` hands to uvicorn.

    Each worker process builds its own app from the parent's config and
    registry URL: its own batcher, ONNX Runtime session and registry
    acknowledgement, under the server id ``<id>/w<pid>``, so a control
    command returns only when every worker has applied it.

    >>> os.environ[CONFIG_ENV] = ServeConfig(server_id="web-1").to_json()  # doctest: +SKIP
    >>> os.environ[REGISTRY_ENV] = "sqlite:///reg.db"; app = app_from_env()  # doctest: +SKIP
    """
    import json

    from datamoat.configs import config_from_dict

    cfg = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
    assert isinstance(cfg, ServeConfig)
    cfg = cfg.replace(server_id=f"{cfg.server_id or socket.gethostname()}/w{os.getpid()}")
    return create_app(Registry(os.environ[REGISTRY_ENV]), cfg)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    ctx: ServeContext = app.state.serve
    await ctx.controller.start()
    ctl = ctx.controller
    loops = [ctl.watch(), ctl.heartbeats(), ctx.batcher.run(), ctx.plog.run()]
    if ctx.config.release_check_s > 0:
        loops.append(_release_rules(ctx))
    await asyncio.to_thread(ensure_pairs, ctx.registry.engine)
    tasks = [asyncio.create_task(c) for c in loops]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await ctx.plog.flush()
        finally:
            if ctx.monitor is not None:
                await asyncio.to_thread(ctx.monitor.close)
            if ctx.shadow is not None:
                await asyncio.to_thread(ctx.shadow.stop)
            await ctl.stop()
            worker_exited(os.getpid())


async def _release_rules(ctx: ServeContext) -> None:
    """Apply the alias's releases' automatic rules every `release_check_s` while a release runs."""
    while True:
        await asyncio.sleep(ctx.config.release_check_s)
        st = ctx.controller.state
        if st.canary is None and st.shadow is None:
            continue
        try:
            await asyncio.to_thread(apply_rules, ctx.registry, st.alias, actor=f"rules:{ctx.server_id}")
        except Exception:  # a database hiccup: try again next time
            log.exception("release rules failed")


async def _registry_unreachable(request: Request, exc: Exception) -> JSONResponse:
    # A request that needs the registry (a token check, feedback, review) while its database is
    # down or locked: the server's fault, not the client's, and worth a retry.
    log.warning("registry unreachable on %s: %s", request.url.path, exc)
    return JSONResponse(
        {"error": "the registry database is unreachable right now: retry shortly (the server logged why)"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Gate:
    """Per request, around everything else: the upload limit (Content-Length,
    then the streamed body), in-flight accounting of predictions for the
    control guarantee (until the response is handed to the socket), metrics."""

    def __init__(self, app: Any, ctx: ServeContext):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, t0, status, path = self.ctx.config.max_upload_bytes, time.perf_counter(), [500], scope["path"]
        too_big = f"the request body is over the {limit}-byte limit: send a smaller image or fewer inputs"

        async def counted_send(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise HTTPException(413, too_big)
            return msg

        predicting = path == "/v1/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))
        gen = self.ctx.controller.enter() if predicting else None
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                bad = not length.isdigit()
                await _error(400 if bad else 413, "invalid Content-Length header" if bad else too_big)(
                    scope, receive, counted_send
                )
            else:
                await self.app(scope, limited_receive, counted_send)
        finally:
            if gen is not None:
                self.ctx.controller.leave(gen)
            self.ctx.metrics.request(path, status[0], time.perf_counter() - t0)


# -- endpoints ------------------------------------------------------------------------------
router = APIRouter()


@router.post("/v1/predict", openapi_extra=PREDICT_BODY)
async def predict(request: Request, actor: str = Depends(predict_actor)) -> JSONResponse:
    """Classify one image or a batch: PNG/JPEG upload, JSON or .npy raw pixel values."""
    ctx: ServeContext = request.app.state.serve
    cfg = ctx.config
    kind, data = await read_payload(request, cfg.max_upload_bytes)
    state, why = ctx.controller.state, ctx.controller.unavailable()
    if why or state.model is None:
        raise Unavailable(why or state.reason)

    shape, photo = state.model.input_shape, state.model.photo  # the state is a frozen snapshot

    def parse() -> tuple[Prepare, np.ndarray]:
        prep = parse_payload(kind, data, cfg.max_image_pixels)
        return prep, prep(shape, photo)

    # Small bodies parse faster than a thread hop costs; big ones (a large PNG) stay off the loop.
    prepare, x = parse() if len(data) <= 65536 else await asyncio.to_thread(parse)
    cur, answers, _ = await answer(ctx, actor, prepare, x, request.headers.get("x-datamoat-client"))
    # A response object skips FastAPI's validation and re-encoding of the returned dict: the answer is
    # built here from plain types, so that pass would only repeat work on the hot path.
    return JSONResponse(
        {
            "model_version": cur.model.version_id,
            "model_name": cur.model.name,
            "alias": cur.alias,
            "release": cur.role,
            "generation": cur.generation,
            "predictions": answers,
        }
    )


class FeedbackIn(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200, description="The correct class name.")
    source: str = Field("api", min_length=1, max_length=100, description="Who says so: one answer per source.")


@router.post("/v1/feedback", status_code=201)
async def feedback(body: FeedbackIn, request: Request, actor: str = Depends(feedback_actor)) -> dict[str, Any]:
    """Record the correct label for a prediction id (for the data flywheel)."""
    ctx: ServeContext = request.app.state.serve
    await ctx.plog.flush()  # a prediction made a moment ago may still be buffered
    return await asyncio.to_thread(
        ctx.plog.record_feedback, body.prediction_id, body.label, body.source, actor, ctx.config.feedback_max_per_hour
    )


@router.get("/v1/model")
async def model_info(request: Request, _: str = Depends(reader)) -> dict[str, Any]:
    """What this server serves: version, alias, suppressions, takedown state."""
    ctx: ServeContext = request.app.state.serve
    st = ctx.controller.state
    m = st.model
    takedown = st.takedowns.get(st.alias_version) if st.alias_version is not None else None
    return {
        "alias": st.alias,
        "version": st.version_id,
        **describe(m),
        "reason": st.reason,
        "suppressed": [{"label": k, "mode": v} for k, v in sorted(st.suppressed.items())],
        "alias_version": st.alias_version,
        "taken_down": takedown is not None,
        "takedown": takedown,
        "generation": st.generation,
        "acked_generation": ctx.controller.acked,
        "fenced": ctx.controller.fenced(),  # why it answers 503 while its registry is out of reach, else None
        "releases": {
            side.role: {"version": side.version_id, "percent": st.canary_percent if side.role == "canary" else 100.0}
            for side in (st.canary, st.shadow)
            if side is not None
        },
        "server_id": ctx.server_id,
        "hardware": ctx.hardware,  # what `datamoat loadtest` records, so capacity plans name what was measured
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    """A servable model is loaded and the registry reachable (503 otherwise)."""
    ctl = request.app.state.serve.controller
    st = ctl.state
    if why := ctl.unavailable():
        raise Unavailable(f"not ready: {why}")
    return {"ready": True, "version": st.version_id, "generation": st.generation}


@router.get("/metrics")
async def metrics(request: Request, _: str = Depends(reader)) -> Response:
    """Prometheus text format."""
    ctx: ServeContext = request.app.state.serve
    body, ctype = ctx.metrics.render()
    return Response(body, media_type=ctype)
