"""`resolve_checkpoint` on ``hub:`` references, against a Hugging Face hub that this file serves on loopback.

The server answers the two requests hf_hub_download makes: ``HEAD``/``GET
{endpoint}/{repo}/resolve/{revision}/{file}``, either directly (a small git file,
ETag the git blob sha1) or, like the hub for an LFS file, with a redirect to a
CDN host that carries X-Linked-Etag (the sha256) and X-Linked-Size. Nothing here
reaches the internet: HF_ENDPOINT points at this server and HF_HOME at tmp_path.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from datamoat.errors import BadInput, NotFound, TooLarge
from datamoat.models.weights import HubRef, load_weights, parse_hub_ref, read_state_dict, resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(ThreadingHTTPServer):
    """Repos as {repo: {revision: {file: bytes}}}; every request is logged as (method, path)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.lfs = True  # False: answer like a small git file, no redirect, ETag the git blob sha1
        self.log: list[tuple[str, str]] = []
        self.headers: dict[str, str] = {}  # extra or replaced headers on the metadata answer
        self.body: bytes | None = None  # served in place of the file's bytes, while its headers describe the file
        self.stream = 0  # > 0: serve this many bytes, no Content-Length, whatever the headers said
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, repo: str, file: str, data: bytes, revision: str = "main") -> None:
        self.repos.setdefault(repo, {}).setdefault(revision, {})[file] = data

    def gets(self) -> list[str]:
        return [path for method, path in self.log if method == "GET"]


class _Handler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub = self.server
        hub.log.append((self.command, self.path))
        if self.path.startswith("/cdn/"):  # the "CDN": content addressed by sha256
            sha = self.path.removeprefix("/cdn/")
            files = [d for revs in hub.repos.values() for fs in revs.values() for d in fs.values()]
            data = next((d for d in files if hashlib.sha256(d).hexdigest() == sha), None)
            return self._send(200, {}, data, body) if data is not None else self._send(404, {}, b"", body)
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        revision, _, file = rest.partition("/")
        revision, file = unquote(revision), unquote(file)
        if repo not in hub.repos:
            return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"", body)
        if revision not in hub.repos[repo]:
            return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"", body)
        if file not in hub.repos[repo][revision]:
            return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", body)
        data = hub.repos[repo][revision][file]
        sha = hashlib.sha256(data).hexdigest()
        meta = {"X-Repo-Commit": COMMIT}
        if hub.lfs:
            port = hub.server_address[1]
            meta |= {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            meta |= {"Location": f"http://localhost:{port}/cdn/{sha}"}  # another host: the client does not follow it
            return self._send(302, meta | hub.headers, b"", body)
        git_sha1 = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        return self._send(200, meta | {"ETag": f'"{git_sha1}"'} | hub.headers, data, body)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        hub = self.server
        if body and status == 200 and hub.stream:
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(hub.stream // 65536):
                    self.wfile.write(b"\0" * 65536)
                    hub.sent += 65536
            except OSError:  # the client hung up: what the cap is for
                pass
            return
        data = hub.body if body and status == 200 and hub.body is not None else data
        self.send_response(status)
        for k, v in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A hub on loopback, its address in HF_ENDPOINT, and an empty Hugging Face cache under tmp_path."""
    from huggingface_hub import constants

    server = Hub()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read once, when first imported
    # huggingface_hub's user agent would fetch {HF's own endpoint}/api/agent-harnesses: not from a test
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    elsewhere: list[str] = []
    lookup = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            elsewhere.append(str(host))
            raise OSError(f"a test asked for {host}: only loopback is served here")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield server
    server.shutdown()
    server.server_close()
    assert elsewhere == []  # nothing left this machine, not even a name lookup


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _safetensors(net: nn.Module, tmp_path: Path) -> bytes:
    save_file(net.state_dict(), tmp_path / "src.safetensors")
    return (tmp_path / "src.safetensors").read_bytes()


def _offline(monkeypatch) -> None:
    """Point HF_ENDPOINT at a loopback port nobody listens on: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


@pytest.mark.parametrize(
    "ref, want",
    [
        ("hub:me/nets", HubRef("me/nets", "model.safetensors", "main")),
        ("hub:me/nets:resnet18.pth", HubRef("me/nets", "resnet18.pth", "main")),
        ("hub:me/nets@v2", HubRef("me/nets", "model.safetensors", "v2")),
        ("hub:me/nets@refs/pr/1:sub/w.bin", HubRef("me/nets", "sub/w.bin", "refs/pr/1")),
        (f"hub:timm/resnet18.a1_in1k@{COMMIT}:model.safetensors", HubRef("timm/resnet18.a1_in1k", revision=COMMIT)),
    ],
)
def test_hub_references_parse(ref, want):
    assert parse_hub_ref(ref) == want


@pytest.mark.parametrize(
    "ref, match",
    [
        ("hub:nets", "names no hub repo"),
        ("hub:me/nets/more", "names no hub repo"),
        ("hub:me/../etc", "names no hub repo"),
        ("hub:me/nets@a..b", "not a branch, tag or commit"),
        ("hub:me/nets:../w.pth", "not a path inside the repo"),
        ("hub:me/nets:/etc/w.pth", "not a path inside the repo"),
        ("hub:me/nets:config.json", "is not a checkpoint"),
    ],
)
def test_bad_hub_references_are_refused_with_the_syntax(ref, match):
    with pytest.raises(BadInput, match=match) as e:
        parse_hub_ref(ref)
    assert "hub:OWNER/REPO@REVISION:FILE" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("lfs", [True, False], ids=["lfs-redirect", "git-file"])
def test_a_hub_file_is_fetched_checked_cached_and_loads_like_a_file(hub, tmp_path, monkeypatch, lfs):
    net = _tiny()
    data = _safetensors(net, tmp_path)
    hub.lfs = lfs
    hub.add("me/nets", "model.safetensors", data)
    ckpt = resolve_checkpoint("hub:me/nets")
    assert ckpt.sha256 == hashlib.sha256(data).hexdigest() and ckpt.size == len(data)
    assert ckpt.path.is_relative_to(tmp_path / "hf" / "hub") and ckpt.path.read_bytes() == data
    assert ckpt.hub == {
        "ref": f"hub:me/nets@{COMMIT}:model.safetensors",  # pinned: passing it again fetches these very bytes
        "repo": "me/nets",
        "file": "model.safetensors",
        "revision": "main",
        "commit": COMMIT,
    }
    fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert load_weights(fresh, ckpt.path) == {"loaded": 4, "skipped_head": []}
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    assert len(hub.gets()) == 1 and hub.gets()[0].startswith("/cdn/" if lfs else "/me/nets/resolve/main/")
    assert all("/resolve/main/" in p or p.startswith("/cdn/") for _, p in hub.log)

    again = resolve_checkpoint("hub:me/nets")  # from the cache: one HEAD, no download
    assert again == ckpt and len(hub.gets()) == 1
    _offline(monkeypatch)
    started = time.monotonic()
    assert resolve_checkpoint("hub:me/nets") == ckpt  # offline: the cached copy, checked against its blob's name
    assert time.monotonic() - started < 5  # no half-minute of retries


@pytest.mark.parametrize(
    "ref, error, match",
    [
        ("hub:nobody/nets", NotFound, "has no repo nobody/nets .*private or gated"),
        ("hub:me/nets:other.safetensors", NotFound, "has no file 'other.safetensors' in me/nets"),
        ("hub:me/nets@v9", NotFound, "has no revision 'v9' in me/nets"),
        ("offline", BadInput, r"cannot fetch model\.safetensors from .* not in the cache"),
    ],
)
def test_unknown_repo_file_revision_and_offline_say_how_to_go_on(hub, monkeypatch, ref, error, match):
    hub.add("me/nets", "model.safetensors", b"x")
    if ref == "offline":
        _offline(monkeypatch)
        ref = "hub:me/nets"
    with pytest.raises(error, match=match) as e:
        resolve_checkpoint(ref)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{parse_hub_ref(ref)}: ")
    assert "yourself and pass its path to --weights" in msg
    assert hub.gets() == []


def test_safetensors_from_the_hub_starts_a_training_run_and_the_lineage_names_it(hub, ws, digits, tmp_path):
    from datamoat.models.backbones import build_backbone
    from datamoat.train.loop import TrainConfig
    from datamoat.train.run import train_in_workspace

    torch.manual_seed(7)
    src = build_backbone("mobilenet_v3_small", num_classes=4, in_channels=1)
    data = _safetensors(src, tmp_path)
    hub.add("me/nets", "mnv3s.safetensors", data, revision="v1")
    cfg = TrainConfig(epochs=1, lr=1e-9, max_train_samples=64, batch_size=32, threads=1, patience=0)
    model, _ = train_in_workspace(
        ws, digits.id, "mobilenet_v3_small", cfg, weights="hub:me/nets@v1:mnv3s.safetensors", progress=False
    )
    pre = model.lineage["pretrained"]
    assert pre["sha256"] == hashlib.sha256(data).hexdigest()
    assert pre["hub"]["ref"] == f"hub:me/nets@{COMMIT}:mnv3s.safetensors" and pre["hub"]["revision"] == "v1"
    assert pre["skipped_head"] == ["classifier.3.bias", "classifier.3.weight"] and pre["loaded"] > 100
    got = model.net.state_dict()["features.0.0.weight"]
    assert torch.allclose(got, src.state_dict()["features.0.0.weight"], atol=1e-5)


# --- adversarial: what a mirror, a proxy or a hostile HF_ENDPOINT can send ---


@pytest.mark.parametrize("lfs", [True, False], ids=["lfs-redirect", "git-file"])
def test_bytes_that_do_not_match_the_hubs_id_are_refused(hub, tmp_path, lfs):
    data = _safetensors(_tiny(), tmp_path)
    hub.lfs = lfs
    hub.add("me/nets", "model.safetensors", data)
    hub.body = data[:-4] + b"\xff" * 4  # same size, other bytes, under the original's id
    with pytest.raises(BadInput, match=r"do not match the id the hub gave them .* delete .* and retry") as e:
        resolve_checkpoint("hub:me/nets")
    assert "\n" not in str(e.value)


class _Payload:
    ran: list[str] = []

    def __reduce__(self):
        return (_Payload.ran.append, ("unpickled code ran",))


def test_a_pickle_with_code_from_the_hub_is_never_unpickled(hub, tmp_path):
    torch.save({"0.weight": torch.zeros(3, 4), "payload": _Payload()}, tmp_path / "evil.pth")
    hub.add("me/nets", "evil.pth", (tmp_path / "evil.pth").read_bytes())
    ckpt = resolve_checkpoint("hub:me/nets:evil.pth")  # honest bytes: the hub's id matches
    with pytest.raises(BadInput, match=r"pickled objects .*weights_only"):
        load_weights(_tiny(), ckpt.path)
    assert _Payload.ran == []


@pytest.mark.parametrize(
    "headers, match",
    [
        ({"X-Repo-Commit": "main"}, r"without a commit id \(X-Repo-Commit\)"),
        ({"ETag": '"v1"'}, "gave no sha256 or git id"),
    ],
)
def test_answers_without_the_hubs_ids_are_refused_before_downloading(hub, headers, match):
    hub.lfs = False
    hub.add("me/nets", "model.safetensors", b"x")
    hub.headers = headers
    with pytest.raises(BadInput, match=match):
        resolve_checkpoint("hub:me/nets")
    assert hub.gets() == []


def test_the_size_cap_holds_before_the_download_while_it_streams_and_on_local_files(hub, tmp_path):
    hub.add("me/nets", "model.safetensors", b"\0" * 2000)
    with pytest.raises(TooLarge, match=r"hub:me/nets@main:model\.safetensors is 2,000 bytes, over the 1,000-byte cap"):
        resolve_checkpoint("hub:me/nets", max_bytes=1000)
    assert hub.gets() == []  # refused from the HEAD alone

    hub.stream = 32 << 20  # the body runs on past the 2,000 bytes announced
    with pytest.raises(TooLarge, match="the download ran past the 1,048,576-byte cap"):
        resolve_checkpoint("hub:me/nets", max_bytes=1 << 20)
    assert hub.sent < hub.stream  # cut off, not read whole
    assert not list((tmp_path / "hf" / "hub").rglob("*.incomplete"))

    path = tmp_path / "big.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    for call in (lambda: resolve_checkpoint(path, max_bytes=1000), lambda: read_state_dict(path, max_bytes=1000)):
        with pytest.raises(TooLarge, match=r"big\.pth is [\d,]+ bytes, over the 1,000-byte cap"):
            call()
