"""A device under attack, in a process of its own so its peak memory is its own.

    python bomb_device.py MODE STATE_DIR TRUST.pub BUNDLE   (MODE: usb | local | ota)

Sets up a runtime (and, for `local`, its HTTP API on a real port; for `ota`, a
control server that assigns BUNDLE), notes the process's peak RSS, sends
BUNDLE down the route, and prints one JSON line: the outcome and how far the
peak RSS rose above the baseline, in MB.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def serve(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, thread


def main(mode: str, state_dir: str, trust: str, bundle_path: str) -> None:
    import httpx

    from datamoat.edge.agent import SyncAgent
    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.runtime import EdgeRuntime
    from datamoat.edge.server import create_edge_app

    bomb = Path(bundle_path).read_bytes()
    rt = EdgeRuntime(EdgeConfig(device_id="dev", state_dir=state_dir, trust=(trust,)))
    out: dict = {}
    if mode == "local":
        url, server, _ = serve(create_edge_app(rt))
        headers = {"Authorization": f"Bearer {rt.install_token}", "Content-Type": "application/octet-stream"}
        httpx.get(f"{url}/healthz")  # every code path warm before the baseline
        base = peak_rss_mb()
        r = httpx.post(f"{url}/v1/edge/install", content=bomb, headers=headers, timeout=60)
        out = {"http_status": r.status_code, **r.json()}
    elif mode == "ota":
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def download(request):
            return Response(bomb, media_type="application/octet-stream")

        url, server, _ = serve(Starlette(routes=[Route("/bundle", download)]))
        agent = SyncAgent(rt, client=httpx.Client(base_url=url, timeout=60))
        base = peak_rss_mb()
        sha = hashlib.sha256(bomb).hexdigest()
        out = (
            agent.follow(
                {
                    "bundle": {"sha256": sha, "size": len(bomb), "url": "/bundle", "sequence": 1},
                    "allow_downgrade": False,
                }
            )
            or {}
        )
    else:
        base = peak_rss_mb()
        out = rt.install_bytes(bomb, source="usb")
    out["grew_mb"] = peak_rss_mb() - base
    rt.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
