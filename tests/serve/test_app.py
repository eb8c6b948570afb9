"""The app in-process: predictions, suppression, takedown, tokens, feedback,
bad input and metrics."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import sqlalchemy as sa

from datamoat.registry.ledger import feedback, predictions

from .serve_util import auth, png_bytes

ADMIN = ("promote", "rollback", "takedown", "restore", "suppress", "unsuppress")


def _predict(srv, reg, inputs, token="predict", **kw):
    return srv.post("/v1/predict", json={"inputs": inputs}, headers=auth(reg.tokens[token]), **kw)


def _error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    return body["error"]


def test_json_single_and_batch_match_the_model(live, reg, artifacts):
    srv = live(top_k=10)
    x, ref = artifacts.x, reg.ref[reg.v1]
    for inputs, idx in (
        (x[0].tolist(), [0]),  # (C, H, W)
        (x[1, 0].tolist(), [1]),  # (H, W)
        (x[:7].tolist(), range(7)),  # (N, C, H, W)
        (x[7:12, 0].tolist(), range(7, 12)),  # (N, H, W)
    ):
        body = _predict(srv, reg, inputs).json()
        assert body["model_version"] == reg.v1 and body["alias"] == "production"
        preds = body["predictions"]
        assert [p["label_index"] for p in preds] == [int(ref[i].argmax()) for i in idx]
        for p, i in zip(preds, idx, strict=True):
            assert p["label"] == str(ref[i].argmax()) and not p["abstained"] and p["abstain_probability"] is None
            probs = [t["probability"] for t in p["top_k"]]
            assert len(probs) == 10 and probs == sorted(probs, reverse=True)
            assert sum(probs) == pytest.approx(1.0, abs=1e-6)
            assert np.allclose([ref[i][int(t["label"])] for t in p["top_k"]], probs, atol=1e-4)
    assert len({p["prediction_id"] for p in preds}) == len(preds)


def test_png_jpeg_uploads_are_decoded_like_the_pixels(live, reg, artifacts):
    from PIL import Image

    srv = live()
    x, ref = artifacts.x, reg.ref[reg.v1]
    h = auth(reg.tokens["predict"])
    r = srv.post("/v1/predict", files={"file": ("d.png", png_bytes(x[3, 0]), "image/png")}, headers=h)
    assert r.json()["predictions"][0]["label_index"] == int(ref[3].argmax())
    r = srv.post("/v1/predict", content=png_bytes(x[4, 0]), headers={**h, "content-type": "image/png"})
    assert r.json()["predictions"][0]["label_index"] == int(ref[4].argmax())
    # JPEG is lossy: the reference is the model on the decoded pixels, sent as JSON.
    jpg = png_bytes(x[5, 0], "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(jpg)).convert("L")).tolist()
    r = srv.post("/v1/predict", files={"file": ("d.jpg", jpg, "image/jpeg")}, headers=h)
    assert r.json()["predictions"] == [
        {**p, "prediction_id": r.json()["predictions"][0]["prediction_id"]}
        for p in _predict(srv, reg, decoded).json()["predictions"]
    ]
    # A larger RGB image is converted to the model's 1 channel and resized to 8x8.
    rgb = np.repeat(np.kron(x[6, 0], np.ones((4, 4)))[..., None], 3, axis=2)  # (32, 32, 3)
    r = srv.post("/v1/predict", files={"file": ("big.png", png_bytes(rgb, mode="RGB"), "image/png")}, headers=h)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def _npy(arr, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def test_npy_bodies_answer_like_json_and_bad_ones_get_a_4xx(live, reg, artifacts):
    srv = live(top_k=3)
    x = artifacts.x
    h = auth(reg.tokens["predict"])

    def post(content, ctype="application/x-npy"):
        return srv.post("/v1/predict", content=content, headers={**h, "content-type": ctype})

    u8 = np.clip(np.rint(x[:5]), 0, 255).astype(np.uint8)  # (5, C, H, W)
    for body, ctype in (
        (_npy(u8), "application/x-npy"),
        (_npy(u8[:, 0].astype(np.float64)), "application/octet-stream"),
    ):
        got = post(body, ctype).json()["predictions"]
        want = _predict(srv, reg, u8.tolist()).json()["predictions"]
        assert [p["label_index"] for p in got] == [p["label_index"] for p in want]
        assert [p["top_k"] for p in got] == [p["top_k"] for p in want]
    one = post(_npy(u8[0])).json()["predictions"]  # (C, H, W): one image
    assert len(one) == 1 and one[0]["top_k"] == _predict(srv, reg, u8[0].tolist()).json()["predictions"][0]["top_k"]
    assert "readable .npy" in _error(post(b"\x93NUMPY garbage"), 400)
    assert "readable .npy" in _error(post(_npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)), 400)
    assert "non-numeric" in _error(post(_npy(np.array(["a", "b"]))), 422)
    npz = io.BytesIO()
    np.savez(npz, a=u8)
    assert ".npz archive" in _error(post(npz.getvalue()), 400)
    assert "0..255" in _error(post(_npy(np.full((8, 8), 256, np.int16))), 422)
    assert "this model takes" in _error(post(_npy(np.zeros((3, 5), np.uint8))), 422)


def test_suppression_abstain_then_renormalize(live, reg, artifacts):
    srv = live(top_k=10)
    srt = np.sort(reg.ref[reg.v1], axis=1)
    i = int(np.argmax(srt[:, -2] - srt[:, -3]))  # an image whose runner-up is clear
    ref, x = reg.ref[reg.v1][i], artifacts.x[i].tolist()
    top, second = (str(k) for k in np.argsort(-ref)[:2])
    out = reg.r.suppress(top, actor="test", reason="incident", mode="abstain")
    assert reg.r.wait_for_acks(out["generation"], 5)["missing"] == []
    p = _predict(srv, reg, x).json()["predictions"][0]
    assert p["label"] is None and p["abstained"] and p["needs_review"] and top in p["reason"]
    assert top not in [t["label"] for t in p["top_k"]]
    assert p["abstain_probability"] == pytest.approx(ref[int(top)], abs=1e-4)
    assert sum(t["probability"] for t in p["top_k"]) + p["abstain_probability"] == pytest.approx(1.0, abs=1e-6)
    assert srv.get("/v1/model").json()["suppressed"] == [{"label": top, "mode": "abstain"}]

    out = reg.r.suppress(top, actor="test", reason="incident", mode="renormalize")
    reg.r.wait_for_acks(out["generation"], 5)
    p = _predict(srv, reg, x).json()["predictions"][0]
    assert p["label"] == second and not p["abstained"] and p["abstain_probability"] is None
    assert top not in [t["label"] for t in p["top_k"]]
    assert sum(t["probability"] for t in p["top_k"]) == pytest.approx(1.0, abs=1e-6)
    assert p["top_k"][0]["probability"] == pytest.approx(ref[int(second)] / (1 - ref[int(top)]), abs=1e-4)

    reg.r.wait_for_acks(reg.r.suppress(second, actor="t", reason="other alias only", alias="staging")["generation"], 5)
    reg.r.wait_for_acks(reg.r.unsuppress(top, actor="test", reason="fixed")["generation"], 5)
    assert _predict(srv, reg, x).json()["predictions"][0]["label"] == top


def test_takedown_with_fallback_then_without(live, reg, artifacts):
    srv = live()
    x = artifacts.x[:5].tolist()
    out = reg.r.takedown(reg.v1, actor="test", reason="bad answers", fallback=reg.v2)
    assert reg.r.wait_for_acks(out["generation"], 5)["missing"] == []
    body = _predict(srv, reg, x).json()
    assert body["model_version"] == reg.v2
    assert [p["label_index"] for p in body["predictions"]] == reg.ref[reg.v2][:5].argmax(1).tolist()
    info = srv.get("/v1/model").json()
    assert info["taken_down"] and info["version"] == reg.v2 and info["alias_version"] == reg.v1

    reg.r.wait_for_acks(reg.r.takedown(reg.v2, actor="test", reason="also bad")["generation"], 5)
    assert "taken down" in _error(_predict(srv, reg, x), 503)
    assert _error(srv.get("/readyz"), 503).startswith("not ready")
    assert srv.get("/v1/model").json()["serving"] is False

    reg.r.wait_for_acks(reg.r.restore(reg.v1, actor="test", reason="fixed")["generation"], 5)
    assert _predict(srv, reg, x).json()["model_version"] == reg.v1
    assert srv.get("/readyz").json()["version"] == reg.v1


def test_admin_endpoints_switch_versions_live(live, reg, artifacts):
    srv = live()
    h = auth(reg.tokens["admin"])
    x = artifacts.x[:3].tolist()
    r = srv.post("/v1/admin/promote", json={"version": reg.v2, "reason": "better"}, headers=h)
    assert r.status_code == 200 and r.json()["servers"] == {"acked": [srv.ctx.server_id], "missing": []}
    assert _predict(srv, reg, x).json()["model_version"] == reg.v2
    r = srv.post("/v1/admin/rollback", json={"reason": "worse"}, headers=h)
    assert r.json()["version"] == reg.v1 and _predict(srv, reg, x).json()["model_version"] == reg.v1
    r = srv.post("/v1/admin/takedown", json={"version": reg.v1, "reason": "x", "fallback": reg.v2}, headers=h)
    assert r.status_code == 200 and _predict(srv, reg, x).json()["model_version"] == reg.v2
    assert srv.post("/v1/admin/restore", json={"version": reg.v1, "reason": "ok"}, headers=h).status_code == 200
    r = srv.post("/v1/admin/suppress", json={"label": "3", "reason": "x", "mode": "renormalize"}, headers=h)
    assert r.json()["mode"] == "renormalize" and srv.get("/v1/model").json()["suppressed"][0]["label"] == "3"
    assert srv.post("/v1/admin/unsuppress", json={"label": "3", "reason": "ok"}, headers=h).status_code == 200
    assert [e["actor"] for e in reg.r.audit_log()][-6:] == ["admin-bot"] * 6
    _error(srv.post("/v1/admin/takedown", json={"version": "nope-nope", "reason": "x"}, headers=h), 404)
    _error(srv.post("/v1/admin/takedown", json={"version": reg.v1, "reason": ""}, headers=h), 422)


@pytest.mark.parametrize("endpoint", ADMIN)
def test_admin_endpoints_need_an_admin_token(live, reg, endpoint):
    srv = live()
    body = {"version": reg.v2, "label": "3", "reason": "x"}
    url = f"/v1/admin/{endpoint}"
    assert "missing token" in _error(srv.post(url, json=body), 401)
    _error(srv.post(url, json=body, headers=auth("dm_admin_forged")), 401)
    _error(srv.post(url, json=body, headers={"Authorization": f"Basic {reg.tokens['admin']}"}), 401)
    for role in ("predict", "review"):
        assert "role" in _error(srv.post(url, json=body, headers=auth(reg.tokens[role])), 403)
    assert reg.r.audit_log()[-1]["action"] == "token-create"  # nothing changed


def test_predict_needs_a_predict_token_unless_disabled(live, reg, artifacts):
    srv = live()
    x = artifacts.x[0].tolist()
    _error(srv.post("/v1/predict", json={"inputs": x}), 401)
    _error(_predict(srv, reg, x, token="review"), 403)
    assert _predict(srv, reg, x).status_code == 200
    assert _predict(srv, reg, x, token="admin").status_code == 200
    assert live(require_predict_token=False).post("/v1/predict", json={"inputs": x}).status_code == 200


def test_feedback_is_stored_once_per_source(live, reg, artifacts):
    srv = live()
    h = auth(reg.tokens["predict"])
    pid = _predict(srv, reg, artifacts.x[0].tolist()).json()["predictions"][0]["prediction_id"]
    r = srv.post("/v1/feedback", json={"prediction_id": pid, "label": "7"}, headers=h)
    assert r.status_code == 201 and r.json()["model_version"] == reg.v1 and r.json()["actor"] == "predict-bot"
    assert "already recorded" in _error(
        srv.post("/v1/feedback", json={"prediction_id": pid, "label": "7"}, headers=h), 409
    )
    review = auth(reg.tokens["review"])
    r = srv.post("/v1/feedback", json={"prediction_id": pid, "label": "1", "source": "reviewer"}, headers=review)
    assert r.status_code == 201
    _error(srv.post("/v1/feedback", json={"prediction_id": "no-such-id", "label": "7"}, headers=h), 404)
    assert "choose one of" in _error(
        srv.post("/v1/feedback", json={"prediction_id": pid, "label": "cat"}, headers=h), 422
    )
    _error(srv.post("/v1/feedback", json={"prediction_id": pid, "label": "7"}), 401)
    with reg.r.engine.connect() as conn:
        labels = dict(conn.execute(sa.select(feedback.c.source, feedback.c.label)).all())
        logged = conn.execute(sa.select(predictions).where(predictions.c.id == pid)).mappings().one()
    assert labels == {"api": "7", "reviewer": "1"}
    assert (
        logged["model_version"] == reg.v1
        and logged["server_id"] == srv.ctx.server_id
        and logged["alias"] == "production"
    )
    x0 = np.asarray(artifacts.x[0], np.float32)
    import hashlib

    assert logged["input_sha256"] == hashlib.sha256(x0.tobytes()).hexdigest()
    assert json.loads(logged["output"])["label"] == logged["label"]


def test_uploads_over_the_limit_get_413(live, reg):
    srv = live(max_upload_bytes=4096)
    h = auth(reg.tokens["predict"])
    big = json.dumps({"inputs": [[0] * 64] * 100}).encode()
    assert "byte limit" in _error(
        srv.post("/v1/predict", content=big, headers={**h, "content-type": "application/json"}), 413
    )

    async def chunks():  # no Content-Length: the limit must hold on the streamed body
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = srv.post("/v1/predict", content=chunks(), headers={**h, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    _error(r, 413)
    _error(srv.post("/v1/feedback", content=big, headers={**h, "content-type": "application/json"}), 413)


def test_decompression_bombs_are_refused(live, reg):
    from PIL import Image

    srv = live()
    for side in (5000, 7500):  # over the limit, and over twice the limit (where Pillow itself raises)
        buf = io.BytesIO()
        Image.new("1", (side, side)).save(buf, format="PNG")  # megapixels inflating from a few KB
        assert len(buf.getvalue()) < 100_000
        r = srv.post(
            "/v1/predict",
            files={"file": ("bomb.png", buf.getvalue(), "image/png")},
            headers=auth(reg.tokens["predict"]),
        )
        assert "over the limit" in _error(r, 413)
    assert srv.get("/healthz").json() == {"status": "ok"}


def test_bad_inputs_get_a_json_4xx(live, reg, artifacts):
    srv = live()
    h = auth(reg.tokens["predict"])
    png = png_bytes(artifacts.x[0, 0])

    def post(content, ctype="application/json"):
        return srv.post("/v1/predict", content=content, headers={**h, "content-type": ctype})

    assert "PNG or JPEG" in _error(post(b"\x89PNG\r\n\x1a\n garbage", "image/png"), 400)
    _error(post(png[: len(png) // 2], "image/png"), 400)  # truncated
    _error(post(b"GIF89a...", "image/png"), 400)
    _error(srv.post("/v1/predict", files={"file": ("x.png", b"corrupt", "image/png")}, headers=h), 400)
    _error(srv.post("/v1/predict", files={"other": ("x.png", png, "image/png")}, headers=h), 422)
    assert "(1, 8, 8)" in _error(_predict(srv, reg, np.zeros((3, 5)).tolist()), 422)
    _error(_predict(srv, reg, np.zeros((2, 3, 8, 8)).tolist()), 422)
    _error(_predict(srv, reg, []), 422)
    assert "non-numeric" in _error(_predict(srv, reg, [["a"] * 8] * 8), 422)
    _error(_predict(srv, reg, [[True] * 8] * 8), 422)
    _error(_predict(srv, reg, "pixels"), 422)
    _error(_predict(srv, reg, [[1, 2], [3]]), 422)
    assert "0..255" in _error(_predict(srv, reg, [[300] * 8] * 8), 422)
    _error(post(b'{"inputs": [[NaN]]}'), 422)
    _error(post(b"{not json"), 400)
    _error(post(b"[" * 100_000 + b"]" * 100_000), 400)
    _error(post(b'{"pixels": []}'), 422)
    _error(post(b"abc", "text/plain"), 415)
    _error(srv.post("/v1/feedback", json={"prediction_id": 3}, headers=h), 422)
    _error(srv.post("/v1/feedback", content=b"{", headers={**h, "content-type": "application/json"}), 422)
    _error(srv.get("/v1/nothing"), 404)
    _error(srv.get("/v1/predict"), 405)
    assert _predict(srv, reg, artifacts.x[0].tolist()).status_code == 200


def test_metrics_model_and_health(live, reg, artifacts):
    srv = live()
    _predict(srv, reg, artifacts.x[:4].tolist())
    _error(srv.post("/v1/predict", json={"inputs": "x"}, headers=auth(reg.tokens["predict"])), 422)
    reg.r.wait_for_acks(reg.r.suppress(str(reg.ref[reg.v1][9].argmax()), actor="t", reason="x")["generation"], 5)
    _predict(srv, reg, artifacts.x[9].tolist())
    text = srv.get("/metrics").text
    assert 'datamoat_requests_total{endpoint="/v1/predict",status="200"} 2.0' in text
    assert 'datamoat_errors_total{endpoint="/v1/predict",status="422"} 1.0' in text
    assert 'datamoat_request_latency_seconds_count{endpoint="/v1/predict"} 3.0' in text
    assert srv.metric("datamoat_predictions_total") == 5 and srv.metric("datamoat_abstentions_total") == 1
    assert 'datamoat_predictions_total{label="abstain"} 1.0' in text
    assert srv.metric("datamoat_batch_size_sum") == 5
    assert srv.metric("datamoat_generation") == reg.r.generation()
    info = srv.get("/v1/model").json()
    assert (
        info["version"] == reg.v1
        and info["classes"] == [str(i) for i in range(10)]
        and info["input_shape"] == [1, 8, 8]
    )
    assert info["generation"] == info["acked_generation"] == reg.r.generation() and not info["taken_down"]
    from datamoat.inference.hardware import describe_hardware, resolve_ort_device

    assert info["hardware"] == describe_hardware(resolve_ort_device("auto"))  # the default: what loadtest records
    assert srv.get("/healthz").json() == {"status": "ok"} and srv.get("/readyz").json()["ready"] is True


def test_alias_without_version_is_not_ready(live, reg, artifacts):
    srv = live(alias="canary")
    assert "canary" in _error(srv.get("/readyz"), 503)
    _error(_predict(srv, reg, artifacts.x[0].tolist()), 503)
    reg.r.wait_for_acks(reg.r.promote(reg.v2, "canary", actor="t")["generation"], 5)
    assert _predict(srv, reg, artifacts.x[0].tolist()).json()["model_version"] == reg.v2
