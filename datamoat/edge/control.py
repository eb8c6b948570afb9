"""The control server: what devices talk to.

Endpoints (all under ``/v1/edge``, device endpoints need the device's own
token as ``Authorization: Bearer``):

- ``POST /devices/{id}/sync``: heartbeat in, assignment out (one request
  per poll), signed with the control key. Another device's id is 403.
- ``GET /devices/{id}/assignment``: the assignment alone, read-only.
- ``GET /bundles/{sha256}``: the bundle file, with HTTP Range support for
  resumable downloads; only the bundle currently assigned to the calling
  device (403 otherwise). ``chunk_delay_s`` throttles it (bandwidth caps,
  and tests that need a download to be really "in the middle").
- ``POST /devices/{id}/uploads``: ``{"items": [...]}``, the device's
  low-confidence samples (pixels, top-3, model version, time); they go to
  the review queue for a person to label, never straight to training (see
  `Fleet.record_uploads`). Answers ``{"acked": [prediction ids], ...}``.
  Another device's id is 403, an invalid item 422 (or 409) naming it as
  ``"item"``, a body or batch over the limits 413, a device over its
  hourly allowance 429.
- ``GET /fleet``: every device's status and the rollouts (admin token).

`edge_router` can be mounted on another app with `attach_edge`;
`create_control_app` serves it standalone (`datamoat fleet serve`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from datamoat.configs import Config, check
from datamoat.edge.drift import fleet_metrics
from datamoat.edge.fleet import Fleet, RateLimited, UploadRefused
from datamoat.errors import BadInput, TooLarge, Unprocessable
from datamoat.inference.http import bearer, install_error_handlers
from datamoat.inference.inputs import read_body
from datamoat.registry.core import AuthError, Registry

__all__ = ["ControlConfig", "edge_router", "attach_edge", "create_control_app"]

_MAX_HEARTBEAT = 256 * 1024


@dataclasses.dataclass
class ControlConfig(Config):
    """Knobs of the control server.

    >>> ControlConfig(chunk_delay_s=0.05).chunk_size
    65536
    """

    chunk_size: int = 64 * 1024
    chunk_delay_s: float = 0.0  # pause after each chunk of a bundle download
    upload_max_bytes: int = 4 << 20  # one upload request's body
    upload_max_items: int = 64  # samples in one upload request
    upload_max_per_hour: int = 600  # samples a device may upload an hour
    review_max_open: int = 10_000  # open review items the registry may hold (as `datamoat serve` keeps)

    def validate(self) -> None:
        check(self.chunk_size >= 512, f"chunk_size must be at least 512 bytes, got {self.chunk_size}")
        check(0 <= self.chunk_delay_s <= 10, f"chunk_delay_s must be in 0..10, got {self.chunk_delay_s}")
        for name in ("upload_max_bytes", "upload_max_items", "upload_max_per_hour", "review_max_open"):
            check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")


@dataclasses.dataclass
class EdgeContext:
    fleet: Fleet
    config: ControlConfig


edge_router = APIRouter(prefix="/v1/edge", tags=["edge"])


def _ctx(request: Request) -> EdgeContext:
    return request.app.state.edge


@edge_router.post("/devices/{device_id}/sync")
async def sync(device_id: str, request: Request) -> dict[str, Any]:
    """Heartbeat in (version, health, counters, new events), assignment out."""
    fleet = _ctx(request).fleet
    dev = await asyncio.to_thread(fleet.authenticate, bearer(request), device_id)
    body = await read_body(request, _MAX_HEARTBEAT, "the heartbeat")
    try:
        hb = json.loads(body or b"{}")
    except ValueError:
        raise BadInput("the heartbeat is not valid JSON") from None
    if not isinstance(hb, dict) or not isinstance(hb.get("events", []), list):
        raise BadInput('the heartbeat must be a JSON object with an "events" list')
    return await asyncio.to_thread(fleet.sync, dev, hb)


@edge_router.post("/devices/{device_id}/uploads")
async def upload(device_id: str, request: Request) -> Response:
    """A device's low-confidence samples, into the review queue (its own token only)."""
    ctx = _ctx(request)
    dev = await asyncio.to_thread(ctx.fleet.authenticate, bearer(request), device_id)
    body = await read_body(request, ctx.config.upload_max_bytes, "the upload (send fewer samples per request)")
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unprocessable('the upload is not valid JSON: send {"items": [...]}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise Unprocessable('the upload must be a JSON object with an "items" list')
    if len(doc["items"]) > ctx.config.upload_max_items:
        raise TooLarge(
            f"{len(doc['items'])} samples in one upload, the limit is {ctx.config.upload_max_items}: "
            "send smaller batches"
        )
    try:
        out = await asyncio.to_thread(
            ctx.fleet.record_uploads,
            dev,
            doc["items"],
            max_per_hour=ctx.config.upload_max_per_hour,
            max_open=ctx.config.review_max_open,
        )
    except UploadRefused as e:  # the device drops this item and sends the others again
        return JSONResponse({"error": str(e), "item": e.item}, e.http_status)
    except RateLimited as e:
        return JSONResponse({"error": str(e)}, 429, headers={"Retry-After": "60"})
    return JSONResponse(out)


@edge_router.get("/devices/{device_id}/assignment")
async def assignment(device_id: str, request: Request) -> dict[str, Any]:
    """What this device should run, and the current policy overlay."""
    fleet = _ctx(request).fleet
    dev = await asyncio.to_thread(fleet.authenticate, bearer(request), device_id)
    return await asyncio.to_thread(fleet.assignment, dev)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single 'bytes=' range; None: send it all."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not m or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    start, end = (size - int(last), size - 1) if first == "" else (int(first), int(last) if last else size - 1)
    if start < 0 or start >= size or start > end:
        return (-1, -1)
    return start, min(end, size - 1)


@edge_router.get("/bundles/{sha}")
async def bundle(sha: str, request: Request) -> Response:
    """The bundle assigned to the calling device; supports ``Range: bytes=N-``."""
    ctx = _ctx(request)
    dev = await asyncio.to_thread(ctx.fleet.authenticate, bearer(request))
    a = await asyncio.to_thread(ctx.fleet.assignment, dev)
    if not a["bundle"] or a["bundle"]["sha256"] != sha:
        err = AuthError(f"bundle {sha[:12]} is not assigned to device {dev['id']!r}: poll for the assignment")
        err.http_status = 403
        raise err
    data = await asyncio.to_thread(ctx.fleet.bundle_bytes, sha)
    size = len(data)
    rng = _byte_range(request.headers.get("range"), size)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha}"'}
    if rng == (-1, -1):
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = rng or (0, size - 1)
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    step, delay = ctx.config.chunk_size, ctx.config.chunk_delay_s

    async def chunks():
        for pos in range(start, end + 1, step):
            yield data[pos : min(pos + step, end + 1)]
            if delay:
                await asyncio.sleep(delay)

    return StreamingResponse(chunks(), 206 if rng else 200, headers, media_type="application/octet-stream")


@edge_router.get("/fleet")
async def fleet_status(request: Request) -> dict[str, Any]:
    """Every device's version, last heartbeat, health and rollout state (admin token)."""
    fleet = _ctx(request).fleet
    await asyncio.to_thread(fleet.registry.check_token, bearer(request), "admin")
    devices, rollouts = await asyncio.gather(asyncio.to_thread(fleet.status), asyncio.to_thread(fleet.rollouts))
    return {"devices": devices, "rollouts": rollouts}


@edge_router.get("/fleet/metrics")
async def fleet_drift_metrics(request: Request) -> Response:
    """The devices' last drift windows as Prometheus gauges, per site, device and version (a monitor
    or admin token: Prometheus scrapes with one)."""
    fleet = _ctx(request).fleet
    await asyncio.to_thread(fleet.registry.check_token, bearer(request), "monitor")
    body, ctype = await asyncio.to_thread(fleet_metrics, fleet.registry)
    return Response(body, media_type=ctype)


def attach_edge(app: FastAPI, fleet: Fleet, config: ControlConfig | None = None) -> FastAPI:
    """Mount the device endpoints on an existing app (e.g. the cloud server)."""
    app.state.edge = EdgeContext(fleet, config or ControlConfig())
    app.include_router(edge_router)
    return app


def create_control_app(registry: Registry, config: ControlConfig | None = None, control_key: Any = None) -> FastAPI:
    """The control server, standalone; `control_key` signs every answer (see `datamoat.edge.controldoc`).

    >>> key = load_private_key("control.pem")  # doctest: +SKIP
    >>> app = create_control_app(Registry("sqlite:///reg.db"), ControlConfig(), key)  # doctest: +SKIP
    >>> uvicorn.run(app, port=8200)  # doctest: +SKIP
    """
    app = FastAPI(title="datamoat control", version="1", description=__doc__)

    install_error_handlers(app, "control server")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return attach_edge(app, Fleet(registry, control_key), config)
