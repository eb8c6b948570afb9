"""The edge runtime's local HTTP API, and `run_edge` which starts everything.

The request and answer shapes are the cloud API's (`POST /v1/predict`
with JSON ``{"inputs": ...}`` or a PNG/JPEG upload), so a client can switch
between the device and the cloud (`datamoat.edge.client.Predictor`). Inference
runs on the event loop itself, not a worker thread: a device serves one
local application, and at batch 1 a thread hop would cost more than the
model. Verification, downloads and self-tests run on the sync thread and
never block a prediction.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from datamoat.edge.config import EdgeConfig
from datamoat.edge.runtime import EdgeRuntime
from datamoat.errors import DatamoatError, TooLarge, Unavailable, UnsupportedMedia
from datamoat.inference.engine import describe
from datamoat.inference.http import install_error_handlers
from datamoat.inference.inputs import (
    PREDICT_BODY,
    install_pillow_limits,
    parse_json,
    parse_payload,
    read_body,
    read_payload,
)

__all__ = ["create_edge_app", "run_edge"]

log = logging.getLogger("datamoat.edge")


def create_edge_app(runtime: EdgeRuntime, agent: Any = None) -> FastAPI:
    """The local API over a runtime (and its `SyncAgent`, if it polls a server).

    >>> app = create_edge_app(EdgeRuntime(EdgeConfig(trust=("release.pub",))))  # doctest: +SKIP
    """
    install_pillow_limits(runtime.cfg.max_image_pixels)
    app = FastAPI(title="datamoat edge", version="1", description=__doc__)
    app.state.runtime, app.state.agent = runtime, agent

    install_error_handlers(app, "device")

    app.add_middleware(_JsonPredict, runtime=runtime)

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY, response_class=Response)
    async def predict(request: Request) -> Response:
        """Classify one image or a batch, as the cloud API does."""
        rt: EdgeRuntime = request.app.state.runtime
        kind, data = await read_payload(request, rt.cfg.max_upload_bytes)
        prepare = parse_payload(kind, data, rt.cfg.max_image_pixels)
        return Response(await _predict(rt, prepare), media_type="application/json")

    @app.get("/v1/model")
    async def model_info(request: Request) -> dict[str, Any]:
        """What this device serves, and why."""
        rt: EdgeRuntime = request.app.state.runtime
        s = rt.serving
        m = s.model
        return {
            "version": m.version_id if m else None,
            **describe(m),
            "reason": s.reason,
            "bundle_sequence": s.bundle.sequence if s.bundle else None,
            "suppressed": [{"label": k, "mode": v} for k, v in sorted(s.suppressed.items())],
            "generation": s.generation,
            "device_id": rt.cfg.device_id,
        }

    @app.get("/v1/edge/status")
    async def edge_status(request: Request) -> dict[str, Any]:
        """Version, health, counters, the event log, and the sync state (the install token's holder only)."""
        rt: EdgeRuntime = request.app.state.runtime
        if not _owner(request, rt):
            raise DeviceAuth("the device status needs the device's install token: send it as a Bearer token")
        ag = request.app.state.agent
        return {
            **rt.status(),
            "events": rt.state["events"][-100:],
            "online": ag.online if ag else None,
            "downloading": ag.downloading if ag else None,
        }

    @app.post("/v1/edge/install")
    async def install(request: Request) -> dict[str, Any]:
        """Apply a bundle file sent as the request body (hand-carried), with the usual verification.

        Needs the device's install token (``Authorization: Bearer``, from
        ``STATE_DIR/install.token``, readable by the device's owner only) and
        ``Content-Type: application/octet-stream``, which no cross-site form
        can send; the body is capped at `max_bundle_bytes` as it streams.
        Never a downgrade: that needs the runtime stopped and `edge install
        --state-dir DIR --allow-downgrade`."""
        rt: EdgeRuntime = request.app.state.runtime
        if not _owner(request, rt):
            raise DeviceAuth(
                "install needs the device's install token: `datamoat edge install FILE --runtime URL "
                "--state-dir DIR` reads it from DIR/install.token"
            )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            raise UnsupportedMedia(f"send the bundle as application/octet-stream, not {ctype or 'no Content-Type'}")
        data = await read_body(request, rt.cfg.max_bundle_bytes, "the bundle")
        return await asyncio.to_thread(rt.install_bytes, data, source="local")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        """A model is being served (503 otherwise)."""
        s = request.app.state.runtime.serving
        if s.model is None:
            raise Unavailable(f"not ready: {s.reason}")
        return {"ready": True, "version": s.model.version_id, "bundle_sequence": s.bundle.sequence}

    return app


class DeviceAuth(DatamoatError):
    """A device-local endpoint called without the device's install token."""

    http_status = 401


def _owner(request: Request, rt: EdgeRuntime) -> bool:
    """Whether the caller holds the device's install token (STATE_DIR/install.token)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), rt.install_token.encode())


async def _predict(rt: EdgeRuntime, prepare: Any) -> bytes:
    out, verdict = rt.predict(prepare)
    if verdict:  # the post-swap health window failed: back to the last known good bundle
        await asyncio.to_thread(rt.rollback, verdict)
    return json.dumps(out).encode()  # plain JSON types already: no jsonable_encoder pass


class _JsonPredict:
    """``POST /v1/predict`` with a JSON body, answered below FastAPI's routing
    and dependency machinery (about 0.15 ms a request, which matters at
    batch 1 next to a sub-millisecond model). Uploads and every other
    request go through the app; the route above documents both."""

    def __init__(self, app: Any, runtime: EdgeRuntime):
        self.app, self.rt = app, runtime

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
        if (
            scope["type"] != "http"
            or scope["path"] != "/v1/predict"
            or scope["method"] != "POST"
            or ctype != b"application/json"
        ):
            return await self.app(scope, receive, send)
        limit, body = self.rt.cfg.max_upload_bytes, bytearray()
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                if len(body) > limit:
                    raise TooLarge(f"the request body is over the {limit}-byte limit: send fewer inputs")
                if not msg.get("more_body"):
                    break
            status, payload = 200, await _predict(self.rt, parse_json(bytes(body)))
        except DatamoatError as e:
            status, payload = e.http_status, json.dumps({"error": str(e)}).encode()
        except Exception:
            log.exception("prediction failed")
            status, payload = 500, b'{"error": "internal error: the device logged it"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def run_edge(config: EdgeConfig, host: str = "127.0.0.1", port: int = 8100, log_level: str = "warning") -> None:
    """Run a device: poll once before serving (so a takedown learned while
    offline applies first), then serve and keep polling in the background.

    >>> run_edge(EdgeConfig(server="http://ctl:8200", token="dm_device_...", trust=("release.pub",)))  # doctest: +SKIP
    """
    import uvicorn

    from datamoat.edge.agent import SyncAgent

    rt = EdgeRuntime(config)
    agent = SyncAgent(rt) if config.server else None
    try:
        if agent is not None:
            try:
                agent.sync_once(download=rt.active is None)
            except Exception as e:  # offline at boot: serve the last good bundle under the last known policy
                agent.online = False
                rt.event("offline", reason=f"at boot: {type(e).__name__}: {e}")
            agent.start()
        uvicorn.run(create_edge_app(rt, agent), host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if agent is not None:
            agent.stop()
        rt.close()
