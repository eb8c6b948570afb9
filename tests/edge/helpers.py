"""Bundle builders shared by the edge tests."""

from __future__ import annotations

import io
import json
import zipfile

from datamoat.edge.bundle import build_bundle, pack_bundle, read_bundle
from datamoat.edge.keys import load_public_key
from datamoat.inference.inputs import parse_json


def bundle(env, v: int, seq: int, key: str = "release", **config) -> bytes:
    from datamoat.edge.bundle import BundleConfig

    return build_bundle(env.reg, env.v[v], env.keys[key].private, seq, BundleConfig(**config) if config else None)


def bad_selftest_bundle(env, v: int, seq: int, other: int) -> bytes:
    """Validly signed, but its self-test expectations come from another model."""
    trust = [load_public_key(env.keys["release"].public)]
    mine = read_bundle(bundle(env, v, seq), trust)
    theirs = read_bundle(bundle(env, other, seq), trust)
    parts = {**mine.parts, "selftest.json": theirs.parts["selftest.json"]}
    m = mine.manifest
    return pack_bundle(
        parts, sequence=seq, version_id=m["version_id"], name=m["name"], kind=m["kind"], key=env.keys["release"].private
    )


def flip_model_byte(data: bytes) -> bytes:
    """One byte changed in the middle of model.onnx's stored data."""
    zi = zipfile.ZipFile(io.BytesIO(data)).getinfo("model.onnx")
    pos = zi.header_offset + 30 + len(zi.filename) + zi.file_size // 2
    out = bytearray(data)
    out[pos] ^= 0xFF
    return bytes(out)


def body(x):
    """A request's prepare function for raw pixels `x` (N, C, H, W)."""
    return parse_json(json.dumps({"inputs": x.tolist()}).encode())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An ASGI app under uvicorn on a real loopback port, in a background thread."""

    def __init__(self, app, lifespan: str = "off"):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan=lifespan
            )
        )

    def __enter__(self) -> Served:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
