"""The server image's dependency set (deploy/serve-requirements.txt) is enough: `datamoat serve`
starts and answers every kind of route with each other distribution the lock pins (torch,
scikit-learn, pandas, cleanlab, optuna, the dev tools...) made unimportable, as in the image."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SERVE_REQS = ROOT / "deploy" / "serve-requirements.txt"

# Installed ahead of everything (sitecustomize runs at every interpreter's start, uvicorn workers and
# the shadow process included): an import of a blocked top-level module fails as if it were absent,
# and is logged with the file that tried it.
BLOCKER = """
import os, sys

BLOCKED = frozenset(os.environ["DM_BLOCKED"].split(","))
LOG = os.environ["DM_BLOCK_LOG"]


class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in BLOCKED:
            return None
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith("<frozen"):
            f = f.f_back
        with open(LOG, "a") as log:
            log.write(f"{name}\\t{f.f_code.co_filename if f is not None else '?'}\\n")
        raise ModuleNotFoundError(f"No module named {name!r} (not in the server image)", name=name)


with open(LOG, "a") as log:  # a .pth file may have imported one before this ran
    log.writelines(f"{m}\\tpreloaded\\n" for m in sys.modules if m.partition(".")[0] in BLOCKED)
sys.meta_path.insert(0, NotInTheImage())
"""


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pins() -> dict[str, str]:
    check = _check_lock()
    return {check.canon(m.group(1)): m.group(2) for m in check.PIN.finditer((ROOT / "requirements.lock").read_text())}


def _server_requirements() -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in SERVE_REQS.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _closure(reqs: list[Requirement]) -> set[str]:
    """The listed distributions and everything they depend on here (markers and extras applied)."""
    canon = _check_lock().canon
    todo, seen = [(r, frozenset(r.extras)) for r in reqs], set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canon(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for dep in map(Requirement, metadata.requires(req.name) or []):
            env = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(e) for e in env):
                dep.marker = None
                todo.append((dep, frozenset(dep.extras)))
    return {name for name, _ in seen}


def _blocked_modules(allowed: set[str]) -> set[str]:
    """Top-level modules of distributions the lock pins that the server set does not bring in."""
    canon, pinned = _check_lock().canon, set(_pins())
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        names = {canon(d) for d in dists}
        if names & pinned and not names & (allowed | {"datamoat"}) and module not in sys.stdlib_module_names:
            blocked.add(module)
    return blocked


def test_the_server_set_is_pinned_by_the_lock_and_leaves_the_heavy_libraries_out():
    pins = _pins()
    canon = _check_lock().canon
    reqs = _server_requirements()
    assert reqs and all(not r.specifier for r in reqs)  # names only: the versions come from the lock (-c)
    missing = [r.name for r in reqs if canon(r.name) not in pins]
    assert not missing, f"{SERVE_REQS.name} names distributions requirements.lock does not pin: {missing}"
    closure = _closure(reqs)
    assert not closure - set(pins), f"the server set pulls in unpinned distributions: {closure - set(pins)}"
    assert {"fastapi", "uvicorn", "onnxruntime", "sqlalchemy", "psycopg-binary"} <= closure
    assert not closure & {"torch", "scikit-learn", "pandas", "cleanlab", "optuna", "matplotlib", "pyarrow", "pytest"}
    assert {"torch", "sklearn", "pandas", "cleanlab", "optuna", "pytest"} <= _blocked_modules(closure)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A registry with a tiny trained digits MLP promoted to production, profiled for drift, and
    tokens; built here, with torch, before the server starts without it."""
    from datamoat.data import import_digits
    from datamoat.evaluate.drift import DriftConfig
    from datamoat.models import new_model, save_model
    from datamoat.registry.core import Registry
    from datamoat.registry.register import profile_version, register_model
    from datamoat.train.loop import TrainConfig, train
    from datamoat.workspace import Workspace

    tmp = tmp_path_factory.mktemp("image")
    ws = Workspace.init(tmp / "ws")
    ds = import_digits(ws)
    model = train(new_model("mlp", ds, seed=0), ds, TrainConfig(epochs=3, seed=0, threads=1), progress=False)
    model = save_model(ws, model, name="digits-mlp")
    reg = Registry(f"sqlite:///{tmp / 'registry.db'}")
    version = register_model(ws, reg, model.id, actor="test")
    reg.promote(version, "production", actor="test")
    profile_version(ws, reg, version, actor="test", config=DriftConfig(permutations=100))
    tokens = {role: reg.create_token(role, f"{role}-bot", actor="test") for role in ("predict", "review", "admin")}
    x = np.asarray(ds.subset("test")[0][:30], np.uint8)  # (30, 1, 8, 8)
    return reg, version, tokens, x, tmp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _blocked_env(tmp: Path) -> dict[str, str]:
    """The environment of a Python process that can import only the server set (and the stdlib)."""
    site = tmp / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "DM_BLOCKED": ",".join(sorted(_blocked_modules(_closure(_server_requirements())))),
        "DM_BLOCK_LOG": str(tmp / "blocked.log"),
        "SETUPTOOLS_USE_DISTUTILS": "stdlib",  # else setuptools' .pth imports its shim first
        "OMP_NUM_THREADS": "1",
    }


def _start(url: str, tmp: Path) -> tuple[subprocess.Popen, str, Path, Path]:
    log, out = tmp / "blocked.log", tmp / "server.log"
    port = _free_port()
    cmd = [sys.executable, "-m", "datamoat", "serve", "--registry", url, "--port", str(port)]
    cmd += ["--ort-threads", "1", "--drift-window", "20", "--max-wait-ms", "1", "--server-id", "image-test"]
    proc = subprocess.Popen(cmd, stdout=out.open("w"), stderr=subprocess.STDOUT, env=_blocked_env(tmp))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {out.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, log, out
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"serve did not answer /healthz in 90 s: {out.read_text()}")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            total += float(m.group(3))
    return total


@pytest.mark.slow
def test_serve_answers_every_route_with_only_the_server_set_importable(served):
    reg, version, tokens, x, tmp = served
    proc, base, log, out = _start(reg.url, tmp)
    auth = {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()}
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            deadline = time.monotonic() + 60
            while (ready := http.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.status_code == 200 and ready.json()["version"] == version, ready.text + out.read_text()
            assert http.post("/v1/predict", json={"inputs": x[0].tolist()}).status_code == 401

            # JSON, .npy and a PNG upload (multipart): labels from the served version
            r = http.post("/v1/predict", json={"inputs": x[:10].tolist()}, headers=auth["predict"])
            assert r.status_code == 200, r.text
            answers = r.json()["predictions"]
            assert r.json()["model_version"] == version and len(answers) == 10
            assert all(a["label"] in [str(d) for d in range(10)] for a in answers)
            npy = io.BytesIO()
            np.save(npy, x[10:20])
            r = http.post(
                "/v1/predict", content=npy.getvalue(), headers={**auth["predict"], "content-type": "application/x-npy"}
            )
            assert r.status_code == 200 and len(r.json()["predictions"]) == 10, r.text
            files = {"file": ("digit.png", _png(x[0, 0]), "image/png")}
            r = http.post("/v1/predict", files=files, headers=auth["predict"])
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["label"] == answers[0]["label"]  # the same pixels, the same answer

            # feedback on an answer (the prediction log, then the feedback quarantine)
            fb = {"prediction_id": answers[1]["prediction_id"], "label": answers[1]["label"]}
            r = http.post("/v1/feedback", json=fb, headers=auth["predict"])
            assert r.status_code == 201, r.text

            # admin: suppress the first answer's label, so the same input abstains and is queued for review
            label = answers[0]["label"]
            sup = {"label": label, "reason": "image test", "mode": "abstain", "wait_s": 10}
            r = http.post("/v1/admin/suppress", json=sup, headers=auth["admin"])
            assert r.status_code == 200, r.text
            r = http.post("/v1/predict", json={"inputs": x[0].tolist()}, headers=auth["predict"])
            flagged = r.json()["predictions"][0]
            assert flagged["label"] is None and flagged["needs_review"], flagged
            r = http.get("/v1/review/next", headers=auth["review"])
            assert r.status_code == 200, r.text
            item = r.json()["item"]
            assert item["prediction_id"] == flagged["prediction_id"]
            assert item["image"].startswith("data:image/png;base64,")  # drawn with Pillow
            r = http.post(f"/v1/review/{item['prediction_id']}", json={"label": label}, headers=auth["review"])
            assert r.status_code == 200 and r.json()["decided"], r.text
            assert "<title>datamoat review</title>" in http.get("/review").text
            unsup = {"label": label, "reason": "image test", "wait_s": 10}
            assert http.post("/v1/admin/unsuppress", json=unsup, headers=auth["admin"]).status_code == 200
            assert http.get("/v1/model", headers=auth["predict"]).json()["suppressed"] == []
            r = http.get("/v1/monitor", headers=auth["admin"])
            assert r.status_code == 200 and r.json()["report"], r.text

            # the drift monitor tests full windows of 20 answers against the version's profile
            def windows() -> float:
                text = http.get("/metrics", headers=auth["admin"]).text
                return _metric(text, "datamoat_drift_windows_total", result="ok") + _metric(
                    text, "datamoat_drift_windows_total", result="alarm"
                )

            deadline = time.monotonic() + 60
            while windows() < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert windows() >= 1, http.get("/metrics", headers=auth["admin"]).text
            text = http.get("/metrics", headers=auth["admin"]).text
            assert _metric(text, "datamoat_predictions_total") >= 21
            assert _metric(text, "datamoat_requests_total", endpoint="/v1/predict", status="200") >= 4
            assert reg.drift_windows(version=version)  # and the registry has the window's result
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    tried = log.read_text().splitlines() if log.exists() else []
    ours = [line for line in tried if line.split("\t")[1].startswith(str(ROOT / "datamoat"))]
    assert not ours, f"datamoat imported a distribution outside the server set: {ours}"
    assert not [line for line in tried if line.endswith("\tpreloaded")], tried
    assert "Traceback" not in out.read_text(), out.read_text()


@pytest.fixture(scope="module")
def photo_served(photo_world, tmp_path_factory):
    """A tiny CNN trained on the 32x32 photo render, promoted to production, and the answers an
    in-process server with torch importable gives to two JPEG uploads of other sizes."""
    from serve.serve_util import Live, auth

    from datamoat.models import new_model, save_model
    from datamoat.registry.core import Registry
    from datamoat.registry.register import register_model
    from datamoat.serve.app import create_app
    from datamoat.serve.config import ServeConfig
    from datamoat.train.loop import TrainConfig, train

    tmp = tmp_path_factory.mktemp("photo-image")
    w = photo_world
    model = train(new_model("cnn_small", w.ds, seed=0), w.ds, TrainConfig(epochs=1, seed=0, workers=0, threads=1))
    model = save_model(w.ws, model, name="photo-cnn")
    reg = Registry(f"sqlite:///{tmp / 'registry.db'}")
    version = register_model(w.ws, reg, model.id, actor="test")
    reg.promote(version, "production", actor="test")
    token = reg.create_token("predict", "predict-bot", actor="test")
    photo = np.asarray(Image.open(io.BytesIO(w.photos.read(w.photos.index[0]["sha256"]))).convert("RGB"))
    uploads = [_jpeg(photo, (640, 480)), _jpeg(photo, (150, 350))]  # landscape 4:3 and a tall portrait
    with Live(create_app(reg, ServeConfig(poll_interval_s=0.02, ort_threads=1))) as srv:
        answers = []
        for data in uploads:
            files = {"file": ("photo.jpg", data, "image/jpeg")}
            r = srv.post("/v1/predict", files=files, headers=auth(token))
            assert r.status_code == 200, r.text
            answers.append(r.json()["predictions"][0]["top_k"])
    return reg, version, token, uploads, answers, tmp


def _jpeg(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow
def test_a_photo_upload_is_answered_without_torch_as_with_it(photo_served):
    # Photo models fit uploads by datamoat.data.photo_fit (numpy and Pillow), which the image has.
    reg, version, token, uploads, with_torch, tmp = photo_served
    proc, base, log, out = _start(reg.url, tmp)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 60
            while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            for data, expected in zip(uploads, with_torch, strict=True):
                files = {"file": ("photo.jpg", data, "image/jpeg")}
                r = http.post("/v1/predict", files=files, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text + out.read_text()
                assert r.json()["model_version"] == version
                top_k = r.json()["predictions"][0]["top_k"]
                assert [a["label"] for a in top_k] == [a["label"] for a in expected]
                assert np.allclose([a["probability"] for a in top_k], [a["probability"] for a in expected], atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    tried = log.read_text().splitlines() if log.exists() else []
    ours = [line for line in tried if line.split("\t")[1].startswith(str(ROOT / "datamoat"))]
    assert not ours, f"datamoat imported a distribution outside the server set: {ours}"
    assert "Traceback" not in out.read_text(), out.read_text()
