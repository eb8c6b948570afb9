"""Helpers shared by tests (a uniquely named module: tests/serve has its own conftest):
IDX files, the one way tests run the `datamoat` command, and a webhook receiver."""

import json
import os
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (the inverse of read_idx)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.tobytes())
    return path


def dm(home: Path | None, *args: Any, check: bool = False, timeout: float = 300, env: dict | None = None, popen=False):
    """Run `python -m datamoat [--home HOME] ARGS` in a subprocess, the way a user does.

    Returns the `CompletedProcess` (text stdout/stderr); `check` asserts exit code 0 and shows
    stderr otherwise; `popen` starts it and returns the `Popen` (for concurrent runs).
    """
    cmd = [sys.executable, "-m", "datamoat", *(["--home", str(home)] if home is not None else []), *map(str, args)]
    environ = {**os.environ, **(env or {})}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def dm_ok(home: Path | None, *args: Any, **kw: Any) -> subprocess.CompletedProcess:
    """`dm` that must exit 0."""
    return dm(home, *args, check=True, **kw)


def dm_main(monkeypatch, capture, home: Path | None, *args: Any) -> tuple[int, str, str]:
    """Run `datamoat [--home HOME] ARGS` in this process through its real entry point
    (`datamoat.cli.main`: exit codes, the --json stdout guarantee); returns (exit code, stdout, stderr).
    `capture` is pytest's capsys or capfd."""
    from datamoat.cli import main

    argv = ["datamoat", *(["--home", str(home)] if home is not None else []), *map(str, args)]
    monkeypatch.setattr(sys, "argv", argv)
    capture.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capture.readouterr()
    return code, out.out, out.err


class Receiver:
    """A real HTTP server: answers `statuses` in turn (then 200) and keeps what it got."""

    def __init__(self, statuses=()):
        self.statuses, self.got = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self):
        return [json.loads(body)["event"] for _, body in self.got]

    def close(self):
        self.server.shutdown()


def served_answers(ids: list[str], needs_review: bool = True) -> list[dict[str, Any]]:
    """A server's answers (the fields `log_rows` and `review_rows` read) labelled "cat" for `ids`."""
    top = [{"label": "cat", "probability": 0.5}]
    return [
        {
            "prediction_id": i,
            "label": "cat",
            "abstained": False,
            "needs_review": needs_review,
            "reason": "low",
            "top_k": top,
        }
        for i in ids
    ]


# What `log_rows` and `review_rows` read of a server's serving state.
SERVED_STATE = SimpleNamespace(alias="production", model=SimpleNamespace(version_id="v1"), generation=1)
