"""The review queue in-process: flagged answers enter it with their pixels,
reviewers take and decide items over the API, decisions land in the
feedback quarantine as a trusted source, and bad tokens or input get 4xx."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import sqlalchemy as sa

from datamoat.feedback import GateConfig, Quarantine, evaluate_gate
from datamoat.registry.ledger import predictions, review

from .serve_util import auth


def _between(conf: np.ndarray) -> float:
    """A threshold in the widest gap among the middle confidences, so ONNX-vs-PyTorch noise cannot flip a side."""
    s = np.sort(conf)
    i = int(np.argmax(np.diff(s)[len(s) // 4 : 3 * len(s) // 4])) + len(s) // 4
    return float((s[i] + s[i + 1]) / 2)


def _predict(srv, reg, x) -> list[dict]:
    r = srv.post("/v1/predict", json={"inputs": np.asarray(x).tolist()}, headers=auth(reg.tokens["predict"]))
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _review_everything(reg) -> list[str]:
    classes = [str(c) for c in reg.r.version(reg.v1)["info"]["classes"]]
    reg.r.set_policy(reg.v1, {"per_class": dict.fromkeys(classes)}, actor="test")  # None: always review
    return classes


def test_answers_that_need_review_enter_the_queue_with_their_pixels(reg, artifacts, live):
    x, conf = artifacts.x[:20], reg.ref[reg.v1][:20].max(1)
    t = _between(reg.ref[reg.v1].max(1))
    reg.r.set_policy(reg.v1, {"threshold": t}, actor="test")
    top0 = str(int(reg.ref[reg.v1][0].argmax()))
    reg.r.suppress(top0, actor="test", reason="abstain on it", mode="abstain")  # the first input abstains
    srv = live()
    preds = _predict(srv, reg, x)
    low = conf < t
    low[0] = True
    assert [p["needs_review"] for p in preds] == low.tolist() and 1 < low.sum() < 20
    assert preds[0]["abstained"] and preds[0]["label"] is None

    srv.run(srv.ctx.plog.flush)
    with reg.r.engine.connect() as conn:
        rows = {r.prediction_id: r for r in conn.execute(sa.select(review))}
    flagged = {p["prediction_id"]: i for i, p in enumerate(preds) if p["needs_review"]}
    assert set(rows) == set(flagged)
    for pid, i in flagged.items():
        r = rows[pid]
        pixels = np.frombuffer(r.pixels, np.uint8).reshape(x[i].shape)
        assert np.array_equal(pixels, x[i]) and r.exact and r.status == "open"
        assert (r.model_version, r.alias, r.label) == (reg.v1, "production", preds[i]["label"])
        assert json.loads(r.top) == preds[i]["top_k"][:3]
    assert srv.ctx.review.next()["queue_length"] == len(flagged)
    assert "suppressed" in rows[preds[0]["prediction_id"]].reason

    quiet = live(review_queue=False)  # the switch: answers are still flagged, but nothing is queued
    again = _predict(quiet, reg, x)
    quiet.run(quiet.ctx.plog.flush)
    assert [p["needs_review"] for p in again] == low.tolist()
    assert len(srv.ctx.review.items()) == len(flagged)


def test_reviewers_take_the_oldest_item_and_decisions_become_trusted_feedback(reg, artifacts, live):
    classes = _review_everything(reg)
    srv = live()
    pids = [_predict(srv, reg, artifacts.x[i : i + 1])[0]["prediction_id"] for i in range(3)]
    h = auth(reg.tokens["review"])

    nxt = srv.get("/v1/review/next", headers=h).json()
    item = nxt["item"]
    assert nxt["queue_length"] == 3 and item["prediction_id"] == pids[0]
    assert item["model_version"] == reg.v1 and item["classes"] == classes and item["shape"] == [1, 8, 8]
    assert item["rendering"] == "pixelated"  # an 8x8 digit: sharp pixels, not a blur
    probs = [t["probability"] for t in item["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert item["top_k"][0]["label"] == str(int(reg.ref[reg.v1][0].argmax()))
    from PIL import Image

    png = base64.b64decode(item["image"].removeprefix("data:image/png;base64,"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), artifacts.x[0, 0])

    # A correction the model disputes: its least likely label for the first input.
    disputed = classes[int(reg.ref[reg.v1][0].argmin())]
    assert reg.ref[reg.v1][0].min() < GateConfig().min_model_prob  # an untrusted source would be held for it
    out = srv.post(f"/v1/review/{pids[0]}", json={"label": disputed}, headers=h).json()
    assert out["decided"]["label"] == disputed and out["decided"]["decided_by"] == "review-bot"
    assert out["queue_length"] == 2 and out["item"]["prediction_id"] == pids[1]
    for pid, i in zip(pids[1:], (1, 2), strict=True):
        r = srv.post(f"/v1/review/{pid}", json={"label": str(int(reg.ref[reg.v1][i].argmax()))}, headers=h)
        assert r.status_code == 200
    assert r.json() == {"decided": r.json()["decided"], "queue_length": 0, "item": None}

    q = Quarantine(reg.r)
    got = {i["prediction_id"]: i for i in q.items()}
    assert set(got) == set(pids)
    first = got[pids[0]]
    assert (first["label"], first["source"], first["kind"], first["actor"]) == (
        disputed,
        "review",
        "serve",
        "review-bot",
    )
    assert all(i["has_pixels"] and i["model_version"] == reg.v1 for i in got.values())
    assert np.array_equal(q.pixels([first["id"]])[first["id"]], artifacts.x[0])
    evaluate_gate(q, GateConfig())
    assert {i["id"]: i["status"] for i in q.items()} == dict.fromkeys((i["id"] for i in got.values()), "accepted")
    assert {r["status"] for r in srv.ctx.review.items()} == {"decided"}


def test_tiny_inputs_are_drawn_pixelated_and_photos_smooth():
    from datamoat.serve.review import image_rendering

    assert [image_rendering((1, s, s)) for s in (8, 28, 63)] == ["pixelated"] * 3
    assert [image_rendering((3, h, w)) for h, w in ((64, 64), (96, 96), (224, 224), (48, 128))] == ["auto"] * 4


def test_tokens_and_bad_input_get_clear_4xx(reg, artifacts, live):
    _review_everything(reg)
    srv = live()
    pid = _predict(srv, reg, artifacts.x[:1])[0]["prediction_id"]

    r = srv.get("/v1/review/next")
    assert r.status_code == 401 and "token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert srv.get("/v1/review/next", headers=auth("dm_review_nonsense")).status_code == 401
    r = srv.get("/v1/review/next", headers=auth(reg.tokens["predict"]))
    assert r.status_code == 403 and "review" in r.json()["error"]
    assert srv.post(f"/v1/review/{pid}", json={"label": "3"}, headers=auth(reg.tokens["predict"])).status_code == 403
    assert srv.get("/v1/review/next", headers=auth(reg.tokens["admin"])).json()["item"]["prediction_id"] == pid

    h = auth(reg.tokens["review"])
    r = srv.post("/v1/review/no-such-id", json={"label": "3"}, headers=h)
    assert r.status_code == 404 and "/v1/review/next" in r.json()["error"]
    r = srv.post(f"/v1/review/{pid}", json={"label": "cat"}, headers=h)
    assert r.status_code == 422 and "choose one of 0, 1" in r.json()["error"]
    assert srv.post(f"/v1/review/{pid}", json={}, headers=h).status_code == 422
    assert srv.ctx.review.next()["queue_length"] == 1  # refused decisions leave the item open
    assert srv.post(f"/v1/review/{pid}", json={"label": "3"}, headers=h).status_code == 200
    r = srv.post(f"/v1/review/{pid}", json={"label": "4"}, headers=h)
    assert r.status_code == 409 and "already decided" in r.json()["error"]
    assert [i["label"] for i in Quarantine(reg.r).items()] == ["3"]


def test_fractional_json_inputs_are_reviewed_without_claiming_their_pixels(reg, artifacts, live):
    _review_everything(reg)
    srv = live()
    pid = _predict(srv, reg, artifacts.x[:1] / 2 + 0.25)[0]["prediction_id"]  # not representable as uint8
    r = srv.post(f"/v1/review/{pid}", json={"label": "3"}, headers=auth(reg.tokens["review"]))
    assert r.status_code == 200, r.text
    (item,) = Quarantine(reg.r).items()
    assert item["prediction_id"] == pid and not item["has_pixels"]  # the gate holds it for "no pixels"


def test_the_page_is_self_contained(live):
    srv = live()
    r = srv.get("/review")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert 'id="token"' in html and "sessionStorage" in html and "Bearer" in html
    assert re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", html) == [] and "@import" not in html
    assert "http://" not in html and "https://" not in html


def test_the_review_queue_is_bounded_and_says_what_it_skipped(reg, artifacts, live):
    _review_everything(reg)
    srv = live(review_max_open=5)
    preds = _predict(srv, reg, artifacts.x[:8]) + _predict(srv, reg, artifacts.x[8:11])
    assert all(p["needs_review"] for p in preds)
    srv.run(srv.ctx.plog.flush)
    with reg.r.engine.connect() as conn:
        queued = [r.prediction_id for r in conn.execute(sa.select(review).where(review.c.status == "open"))]
        logged = conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    assert len(queued) == 5 and set(queued) <= {p["prediction_id"] for p in preds}
    assert logged >= 11  # every prediction is still logged
    assert srv.metric("datamoat_review_skipped_total") == 6
    # A decision frees room: the next flagged answer is queued again.
    h = auth(reg.tokens["review"])
    item = srv.get("/v1/review/next", headers=h).json()["item"]
    label = reg.r.version(reg.v1)["info"]["classes"][0]
    assert srv.post(f"/v1/review/{item['prediction_id']}", json={"label": str(label)}, headers=h).status_code < 300
    _predict(srv, reg, artifacts.x[11:12])
    srv.run(srv.ctx.plog.flush)
    with reg.r.engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(review).where(review.c.status == "open")).scalar_one()
            == 5
        )
    assert srv.metric("datamoat_review_skipped_total") == 6
