"""The Open Inference Protocol (KServe v2): tritonclient, which no one here wrote, against a real
port; then bad requests in-process, each a 4xx with the protocol's {"error": ...} body."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .serve_util import auth
from .test_real_port import _free_port, _wait_ready


@pytest.fixture
def real_server(reg, artifacts, tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "datamoat", "--home", str(artifacts.ws.root), "serve", "--port", str(port),
           "--registry", reg.r.url, "--poll-interval", "0.05", "--ort-threads", "1"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_tritonclient_round_trips_json_and_binary(real_server, reg, artifacts):
    client = httpclient.InferenceServerClient(url=real_server)
    h = auth(reg.tokens["predict"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("production")
    meta = client.get_model_metadata("production", headers=auth(reg.tokens["admin"]))
    assert meta["versions"] == [reg.v1] and meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    x = np.clip(np.rint(artifacts.x[:6]), 0, 255).astype(np.uint8)  # (6, 1, 8, 8)
    want = reg.ref[reg.v1][:6]  # PyTorch's probabilities for the same images
    for binary in (False, True):
        inp = httpclient.InferInput("input", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [
            httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "label_index")
        ]
        res = client.infer("production", [inp], outputs=outs, headers=h)
        probs = res.as_numpy("probabilities")
        assert probs.shape == (6, 10) and np.allclose(probs, want, atol=1e-4)
        assert (res.as_numpy("label_index") == want.argmax(1)).all()
        assert [v.decode() if isinstance(v, bytes) else v for v in res.as_numpy("label")] == [
            str(i) for i in want.argmax(1)
        ]
    # Suppression holds on this door too: the label is never output and its probability is 0.
    top = str(int(want[0].argmax()))
    reg.r.suppress(top, actor="test", reason="test", mode="abstain")
    reg.r.wait_for_acks(reg.r.generation(), timeout=10)
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(x[:1].astype(np.float32))
    res = client.infer("production", [inp], headers=h)
    assert res.as_numpy("probabilities")[0, int(top)] == 0 and res.as_numpy("needs_review")[0]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("other", [inp], headers=h)
    with pytest.raises(InferenceServerException):
        client.infer("production", [inp])  # no token


def _infer(srv, reg, body, headers=None, name="production"):
    h = {**auth(reg.tokens["predict"]), **(headers or {})}
    return srv.post(f"/v2/models/{name}/infer", content=body, headers=h)


def _err(r, status):
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_bad_requests_get_a_4xx_naming_the_problem(live, reg):
    srv = live()
    good = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [0] * 64}
    doc = lambda **kw: json.dumps({"inputs": [{**good, **kw}]}).encode()  # noqa: E731
    assert _infer(srv, reg, doc()).status_code == 200
    assert "unknown model" in _err(_infer(srv, reg, doc(), name="nope"), 404)
    assert "takes" in _err(_infer(srv, reg, doc(shape=[1, 1, 4, 16])), 422)  # wrong shape for the model
    assert "needs 72" in _err(_infer(srv, reg, doc(shape=[1, 1, 8, 9])), 400)  # data and shape disagree
    assert "datatype" in _err(_infer(srv, reg, doc(datatype="BYTES")), 422)
    assert "0..255" in _err(_infer(srv, reg, doc(datatype="FP32", data=[300.0] * 64)), 422)
    assert "not valid JSON" in _err(_infer(srv, reg, b"{nope"), 400)
    # The binary extension: a header length past the body, and a binary size that lies.
    head = json.dumps({"inputs": [{**good, "data": None, "parameters": {"binary_data_size": 64}}]}).encode()
    hdr = {"Inference-Header-Content-Length": str(len(head) + 999), "Content-Type": "application/octet-stream"}
    assert "within the body" in _err(_infer(srv, reg, head + bytes(64), hdr), 400)
    hdr["Inference-Header-Content-Length"] = str(len(head))
    assert "binary_data_size" in _err(_infer(srv, reg, head + bytes(10), hdr), 400)
    assert _infer(srv, reg, head + bytes(64), hdr).status_code == 200
    hdr["Inference-Header-Content-Length"] = "-5"
    assert "byte count" in _err(_infer(srv, reg, head + bytes(64), hdr), 400)
    assert srv.post("/v2/models/production/infer", content=doc()).status_code == 401
