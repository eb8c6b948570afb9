"""What every datamoat HTTP app shares: reading the bearer token, and one set
of error handlers, so the cloud server, the control server and a device all
answer errors alike: ``{"error": "<one line: what is wrong and how to fix it>"}``
with the status of the `DatamoatError` raised (401 adds ``WWW-Authenticate``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from datamoat.errors import DatamoatError

__all__ = ["bearer", "install_error_handlers"]

log = logging.getLogger("datamoat.http")


def bearer(request: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    >>> from starlette.requests import Request
    >>> bearer(Request({"type": "http", "headers": [(b"authorization", b"Bearer dm_x")]}))
    'dm_x'
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def install_error_handlers(app: Any, who: str = "server", endpoints_hint: str = "the README lists them") -> None:
    """Map user errors, unknown paths, invalid bodies and crashes to JSON error answers.

    `who` names the process in a crash message ("the device logged it").

    >>> from fastapi import FastAPI
    >>> install_error_handlers(FastAPI(), "device")
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    async def on_datamoat(request: Any, exc: DatamoatError) -> JSONResponse:
        return error(exc.http_status, str(exc), {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None)

    async def on_http(request: Any, exc: HTTPException) -> JSONResponse:
        msg = str(exc.detail)
        if exc.status_code in (404, 405) and msg in ("Not Found", "Method Not Allowed"):
            msg = f"{msg}: {request.method} {request.url.path} is not an endpoint here ({endpoints_hint})"
        return error(exc.status_code, msg, exc.headers)

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        errs = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in exc.errors()[:20]
        ]
        where = ".".join(errs[0]["loc"]) if errs else "body"
        what = errs[0]["msg"] if errs else "invalid"
        return error(422, f"invalid request at {where}: {what}; the README shows the expected body", detail=errs)

    async def on_crash(request: Any, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error(500, f"internal error: the {who} logged it; please report it with the request that caused it")

    app.add_exception_handler(DatamoatError, on_datamoat)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_crash)
