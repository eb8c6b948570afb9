"""The Open Inference Protocol (KServe v2) beside `/v1`, so Triton, KServe and Seldon clients
(``tritonclient.http``) call datamoat unchanged.

The model's name is the alias the server serves (``production``); its version is the registry
version serving it now. Infer requests go through the same path as `/v1/predict` (`answer`): the
same batcher, control guarantee, suppressions, review policy, prediction log and drift monitor.
Health endpoints need no token, as `/healthz` and `/readyz`; metadata needs a reading token, as
`/v1/model`; infer needs a predict token, as `/v1/predict`. Errors are ``{"error": "..."}`` with a
4xx status, which is the protocol's own error shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from datamoat.errors import BadInput, NotFound, Unavailable
from datamoat.inference.engine import renormalized
from datamoat.inference.inputs import parse_array, read_body
from datamoat.inference.v2 import HEADER_LENGTH, encode_infer_response, model_metadata, parse_infer_request
from datamoat.serve.admin import predict_actor, reader
from datamoat.serve.answer import answer

__all__ = ["v2_router"]

v2_router = APIRouter(prefix="/v2")


def _served(request: Request, name: str, version: str | None = None) -> Any:
    """The current state, if `name` (and `version`, when given) is what this server serves."""
    ctl = request.app.state.serve.controller
    st = ctl.state
    if name != st.alias:
        raise NotFound(f"unknown model {name!r}: this server serves {st.alias!r}")
    if why := ctl.unavailable():
        raise Unavailable(f"model {name!r} is not ready: {why}")
    if version is not None and version != st.model.version_id:
        raise NotFound(f"model {name!r} is at version {st.model.version_id}, not {version!r}")
    return st


@v2_router.get("")
async def server_metadata(_: str = Depends(reader)) -> dict[str, Any]:
    """The server's name and the protocol extensions it supports."""
    from importlib.metadata import version

    return {"name": "datamoat", "version": version("datamoat"), "extensions": ["binary_tensor_data"]}


@v2_router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@v2_router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if why := request.app.state.serve.controller.unavailable():
        raise Unavailable(f"not ready: {why}")
    return {"ready": True}


@v2_router.get("/models/{name}")
@v2_router.get("/models/{name}/versions/{version}")
async def metadata(request: Request, name: str, version: str | None = None, _: str = Depends(reader)) -> dict[str, Any]:
    """The model's input and outputs; its classes in ``parameters``."""
    st = _served(request, name, version)
    return model_metadata(name, st.model.version_id, st.model.input_shape, st.model.classes)


@v2_router.get("/models/{name}/ready")
@v2_router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    _served(request, name, version)
    return {"name": name, "ready": True}


@v2_router.post("/models/{name}/infer")
@v2_router.post("/models/{name}/versions/{version}/infer")
async def infer(
    request: Request, name: str, version: str | None = None, actor: str = Depends(predict_actor)
) -> Response:
    """Classify the images of the one input tensor; outputs `datamoat.inference.v2.OUTPUTS`."""
    ctx = request.app.state.serve
    st = _served(request, name, version)
    body = await read_body(request, ctx.config.max_upload_bytes)
    raw = request.headers.get(HEADER_LENGTH)
    if raw is not None and not raw.isdigit():
        raise BadInput(f"{HEADER_LENGTH} must be a byte count, got {raw!r}")
    length = None if raw is None else int(raw)
    # Small bodies parse faster than a thread hop costs (as /v1/predict's); big ones stay off the loop.
    if len(body) <= 65536:
        tensor, request_id, requested, binary = parse_infer_request(body, length)
    else:
        tensor, request_id, requested, binary = await asyncio.to_thread(parse_infer_request, body, length)
    prepare = parse_array(tensor)
    x = prepare(st.model.input_shape, None)
    cur, answers, probs = await answer(ctx, actor, prepare, x, request.headers.get("x-datamoat-client"))
    p, _, abstain = renormalized(probs, cur.model.classes, cur.suppressed)  # (N, K)
    p[:, abstain] = 0.0  # a suppressed label is never output, in any protocol
    tensors: dict[str, Any] = {
        "label": [a["label"] or "" for a in answers],
        "label_index": np.array([-1 if a["label_index"] is None else a["label_index"] for a in answers], np.int64),
        "probabilities": p.astype(np.float32),
        "needs_review": np.array([a["needs_review"] for a in answers], np.bool_),
    }
    out, headers = encode_infer_response(name, cur.model.version_id, request_id, tensors, requested, binary)
    media = "application/octet-stream" if headers else "application/json"
    return Response(out, media_type=media, headers=headers)
