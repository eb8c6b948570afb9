"""Test helpers for the server tests."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import anyio.from_thread
import httpx
import numpy as np


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Live:
    """An app running with its lifespan in a background event loop, with a
    synchronous `request` for plain tests and `run` for concurrent async ones."""

    def __init__(self, app):
        self.app = app
        self.ctx = app.state.serve

    def __enter__(self) -> Live:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._life = self.app.router.lifespan_context(self.app)
        self.portal.call(self._life.__aenter__)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self.portal.call(self.client.aclose)
            self.portal.call(self._life.__aexit__, None, None, None)
        finally:
            self._portal_cm.__exit__(*exc)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.portal.call(functools.partial(self.client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def run(self, fn, *args):
        """Run `await fn(*args)` on the app's event loop."""
        return self.portal.call(fn, *args)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples with this exact name in /metrics."""
        text = self.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name
        )


def png_bytes(a: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(a, np.uint8)).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


@contextlib.contextmanager
def registry_out_of_reach(registry, away: Path):
    """The registry's database file gone from where servers look for it (a stopped or unreachable
    database), then back: every connection made meanwhile finds no registry."""
    db = Path(registry.engine.url.database)
    with registry.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    files = [(db.with_name(db.name + s), away / f"reg.db{s}") for s in ("", "-wal", "-shm")]
    away.mkdir()
    for here, there in files:
        if here.exists():
            here.rename(there)
    registry.engine.dispose()  # pooled connections still hold the moved file
    try:
        yield
    finally:
        registry.engine.dispose()
        for here, there in files:
            here.unlink(missing_ok=True)  # the empty database a failed poll made
            if there.exists():
                there.rename(here)
        registry.engine.dispose()
