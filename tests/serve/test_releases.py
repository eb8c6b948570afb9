"""Canary and shadow releases on a running app: the split, answers that never leave, the control
guarantees on a candidate, the release log, `compare` and the automatic rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from datamoat.evaluate.compare import ReleaseRules
from datamoat.feedback.releases import apply_rules, compare_versions
from datamoat.registry.ledger import record_feedback
from datamoat.registry.pairs import paired_answers
from datamoat.serve.shadow import in_canary

from .serve_util import auth

RNG = np.random.default_rng(0)
RANDOM = RNG.integers(0, 17, (300, 1, 8, 8))  # digits' pixel range: distinct inputs, one per request


def _predict(srv, reg, inputs, **headers):
    r = srv.post("/v1/predict", json={"inputs": inputs}, headers={**auth(reg.tokens["predict"]), **headers})
    assert r.status_code == 200, r.text
    return r.json()


def _start(reg, kind, **kw):
    out = reg.r.start_release(reg.v2, "production", kind, actor="test", **kw)
    assert reg.r.wait_for_acks(out["generation"], 5)["missing"] == []
    return out


def _key(x):
    """The canary route's key of one input: its pixels as the server holds them, float32 (C, H, W)."""
    return np.ascontiguousarray(x, np.float32).tobytes()


def _settle(srv):
    assert srv.ctx.shadow.idle.wait(10), "the off-path runner did not drain"
    srv.run(srv.ctx.plog.flush)  # the prediction log is written in batches too


def test_canary_split_is_within_binomial_bounds_and_stable(live, reg):
    srv = live()
    _start(reg, "canary", percent=30)
    served = [_predict(srv, reg, x.tolist())["model_version"] for x in RANDOM]
    k, n = served.count(reg.v2), len(served)
    lo, hi = binom.ppf(0.0005, n, 0.3), binom.ppf(0.9995, n, 0.3)  # 99.9% of splits fall here
    assert lo <= k <= hi, (k, lo, hi)
    assert set(served) == {reg.v1, reg.v2}
    # the route is a hash: the same input lands on the same side, and it is the hash `in_canary` computes
    again = [_predict(srv, reg, x.tolist())["model_version"] for x in RANDOM[:40]]
    assert again == served[:40]
    want = [reg.v2 if in_canary(_key(x), 30) else reg.v1 for x in RANDOM[:40]]
    assert served[:40] == want
    assert srv.metric("datamoat_release_answers_total") == n + 40


def test_canary_by_client_keeps_each_client_on_one_side(live, reg):
    srv = live()
    _start(reg, "canary", percent=50, route_key="client")
    sides = {}
    for i, x in enumerate(RANDOM[:60]):
        client = f"site-{i % 6}"
        v = _predict(srv, reg, x.tolist(), **{"X-Datamoat-Client": client})["model_version"]
        assert sides.setdefault(client, v) == v  # a client never switches sides
    assert set(sides.values()) == {reg.v1, reg.v2}  # six clients at 50%: both sides (this hash split is 3/3)


def test_shadow_answers_are_logged_and_never_returned(live, reg, artifacts):
    srv = live(top_k=10)
    _start(reg, "shadow")
    x = artifacts.x[:20]
    bodies = [_predict(srv, reg, xi.tolist()) for xi in x]
    for body, ref in zip(bodies, reg.ref[reg.v1][:20], strict=True):
        assert body["model_version"] == reg.v1 and body["release"] == "primary"
        assert body["predictions"][0]["label_index"] == int(ref.argmax())  # v1's answer, never v2's
    _settle(srv)
    rows = paired_answers(reg.r.engine, reg.v1, reg.v2)
    assert len(rows) == 20 and {r["role"] for r in rows} == {"shadow"}
    by_id = {r["prediction_id"]: r for r in rows}
    for body, ref2 in zip(bodies, reg.ref[reg.v2][:20], strict=True):
        row = by_id[body["predictions"][0]["prediction_id"]]
        assert row["b_label"] == str(int(ref2.argmax()))  # the shadow ran v2 on the very input
        assert row["b_confidence"] == pytest.approx(float(ref2.max()), abs=1e-4)
        assert row["a_label"] == body["predictions"][0]["label"]
    info = srv.get("/v1/model").json()
    assert info["version"] == reg.v1 and info["releases"] == {"shadow": {"version": reg.v2, "percent": 100.0}}
    assert srv.metric("datamoat_release_pairs_total") == 20


def test_suppression_and_takedown_apply_to_a_canary(live, reg, artifacts):
    srv = live(top_k=10)
    _start(reg, "canary", percent=50)
    x = artifacts.x
    canary = [i for i in range(len(x)) if in_canary(_key(x[i]), 50)]
    assert len(canary) >= 5
    i = canary[0]
    top = str(int(reg.ref[reg.v2][i].argmax()))
    reg.r.wait_for_acks(reg.r.suppress(top, actor="t", reason="incident", mode="abstain")["generation"], 5)
    body = _predict(srv, reg, x[i].tolist())
    assert body["model_version"] == reg.v2 and body["release"] == "canary"
    p = body["predictions"][0]
    assert p["label"] is None and p["abstained"] and top not in [t["label"] for t in p["top_k"]]
    _settle(srv)  # the canary request's counterpart (v1) is logged under the same suppression
    (row,) = [r for r in paired_answers(reg.r.engine, reg.v1, reg.v2) if r["prediction_id"] == p["prediction_id"]]
    assert row["role"] == "canary" and row["a_label"] != top

    reg.r.wait_for_acks(reg.r.takedown(reg.v2, actor="t", reason="bad canary")["generation"], 5)
    before = len(paired_answers(reg.r.engine, reg.v1, reg.v2))
    for j in canary[1:5]:  # the canary's requests go back to the alias's version, nothing runs v2
        body = _predict(srv, reg, x[j].tolist())
        assert body["model_version"] == reg.v1 and body["release"] == "primary"
    _settle(srv)
    assert len(paired_answers(reg.r.engine, reg.v1, reg.v2)) == before
    assert "releases" in srv.get("/v1/model").json() and srv.get("/v1/model").json()["releases"] == {}


def test_a_taken_down_shadow_stops_running(live, reg, artifacts):
    srv = live()
    _start(reg, "shadow")
    reg.r.wait_for_acks(reg.r.takedown(reg.v2, actor="t", reason="leaks")["generation"], 5)
    for xi in artifacts.x[:5]:
        assert _predict(srv, reg, xi.tolist())["model_version"] == reg.v1
    _settle(srv)
    assert paired_answers(reg.r.engine, reg.v1, reg.v2) == []


def test_compare_and_rules_promote_a_better_shadow(live, reg, artifacts):
    srv = live()
    rules = ReleaseRules(enabled=True, min_pairs=1000, min_agreement=0.0, min_labelled=30, max_drop=0.2)
    _start(reg, "shadow", rules=rules)
    bodies = [_predict(srv, reg, xi.tolist()) for xi in artifacts.x]
    _settle(srv)
    assert apply_rules(reg.r, "production", actor="rules")[0]["action"] is None  # no labels yet
    # people label each input with v2's answer: v2 right on all 40, v1 wherever it agrees
    for body, ref2 in zip(bodies, reg.ref[reg.v2], strict=True):
        record_feedback(reg.r, body["predictions"][0]["prediction_id"], str(int(ref2.argmax())), "site", "ops")
    out = compare_versions(reg.r, reg.v1, reg.v2, "production")
    lab = out["by_kind"]["shadow"]["labelled"]
    agree = float(np.mean(reg.ref[reg.v1].argmax(1) == reg.ref[reg.v2].argmax(1)))
    assert lab["n"] == 40 and lab["accuracy_b"] == 1.0 and lab["accuracy_a"] == pytest.approx(agree)
    assert out["agreement"] == pytest.approx(agree) and out["label_sources"] == {"site": 40}
    assert lab["mcnemar"]["b"] == 0 and lab["mcnemar"]["c"] == round(40 * (1 - agree))

    (done,) = apply_rules(reg.r, "production", actor="rules")
    assert done["action"] == "promote" and done["taken"]
    assert reg.r.aliases()["production"] == reg.v2 and reg.r.releases() == []
    actions = [e["action"] for e in reg.r.audit_log()[-2:]]
    assert actions == ["shadow_end", "promote"]
    assert apply_rules(reg.r, "production", actor="rules") == []  # nothing left to decide


def test_rules_roll_back_a_canary_that_disagrees(live, reg, artifacts):
    srv = live()
    _start(reg, "canary", percent=50, rules=ReleaseRules(enabled=True, min_pairs=5, min_agreement=0.999))
    for xi in RANDOM[:60]:  # random inputs: the two models disagree often
        _predict(srv, reg, xi.tolist())
    _settle(srv)
    (done,) = apply_rules(reg.r, "production", actor="rules")
    assert done["action"] == "rollback" and "agreement" in done["why"]
    assert reg.r.releases() == [] and reg.r.aliases()["production"] == reg.v1
    end = reg.r.audit_log()[-1]
    assert end["action"] == "canary_end" and end["details"]["outcome"] == "rolled_back"
    reg.r.wait_for_acks(reg.r.generation(), 5)
    assert _predict(srv, reg, RANDOM[0].tolist())["model_version"] == reg.v1


def test_the_off_path_answers_are_the_ones_decide_gives():
    from datamoat.inference.engine import decide
    from datamoat.serve.shadow import top_answers

    probs = np.random.default_rng(1).dirichlet(np.ones(5) * 0.5, size=200)  # (200, 5)
    classes = list("abcde")
    for suppressed in ({}, {"a": "abstain"}, {"b": "renormalize", "c": "abstain"}, dict.fromkeys("abcde", "abstain")):
        labels, conf = top_answers(probs, classes, suppressed)
        want = decide(probs, classes, suppressed, top_k=1)
        assert labels == [a["label"] for a in want]
        assert conf.tolist() == pytest.approx([0.0 if a["abstained"] else a["top_k"][0]["probability"] for a in want])
