"""Canary and shadow releases in the registry (SQLite, and PostgreSQL where CI sets it up)."""

import pytest

from datamoat.errors import BadInput, NotFound
from datamoat.evaluate.compare import ReleaseRules
from datamoat.registry.core import Registry
from datamoat.registry.pairs import ensure_pairs, pair_row, paired_answers, write_pairs

INFO = {"classes": ["cat", "dog"], "preprocess": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}}


@pytest.fixture
def reg(url):
    r = Registry(url)
    yield r
    r.engine.dispose()


def _versions(reg):
    a, b, c = (reg.register(f"onnx-{i}".encode(), name=f"m{i}", kind="fp32", info=INFO, actor="al") for i in range(3))
    reg.promote(a, "production", actor="al")
    return a, b, c


def test_a_release_is_a_control_change_in_the_snapshot(reg):
    a, b, c = _versions(reg)
    g0 = reg.generation()
    out = reg.start_release(b, "production", "canary", actor="al", percent=10, reason="try b")
    assert out["generation"] == g0 + 1 and out["production"] == a and out["rules"] == {}
    reg.start_release(c, "production", "shadow", actor="al", rules=ReleaseRules(enabled=True, min_labelled=50))
    snap = reg.snapshot()["releases"]["production"]
    assert snap["canary"] == {"version": b, "percent": 10.0, "route_key": "request", "rules": {}}
    assert snap["shadow"]["version"] == c and snap["shadow"]["percent"] == 100.0
    assert snap["shadow"]["rules"]["min_labelled"] == 50 and snap["shadow"]["rules"]["enabled"] is True
    assert reg.snapshot()["aliases"]["production"] == a  # a release never moves the alias
    # a second canary replaces the first
    reg.start_release(c, "production", "canary", actor="al", percent=25, route_key="client")
    assert [(r["kind"], r["version_id"], r["percent"]) for r in reg.releases()] == [
        ("shadow", c, 100.0),
        ("canary", c, 25.0),
    ]
    assert [e["action"] for e in reg.audit_log()[-3:]] == ["canary", "shadow", "canary"]
    assert reg.verify_audit()["ok"]


def test_bad_releases_are_refused(reg):
    a, b, _ = _versions(reg)
    for kw, match in (
        ({"percent": 100}, "100 is a promotion"),
        ({"percent": 0}, r"percentage in \(0, 100\)"),
        ({"percent": 5, "route_key": "ip"}, "unknown canary route key"),
    ):
        with pytest.raises(BadInput, match=match):
            reg.start_release(b, "production", "canary", actor="al", **kw)
    with pytest.raises(BadInput, match="already serves"):
        reg.start_release(a, "production", "shadow", actor="al")
    with pytest.raises(NotFound, match="points at no version"):
        reg.start_release(b, "staging", "shadow", actor="al")
    with pytest.raises(BadInput, match="unknown release kind"):
        reg.start_release(b, "production", "blue-green", actor="al")
    with pytest.raises(BadInput, match="has no canary"):
        reg.end_release("production", "canary", actor="al")
    assert reg.releases() == []


def test_promoting_or_rolling_back_to_the_candidate_retires_its_release(reg):
    a, b, c = _versions(reg)
    reg.start_release(b, "production", "canary", actor="al", percent=10)
    reg.start_release(c, "production", "shadow", actor="al")
    reg.promote(b, "production", actor="al")
    assert [r["kind"] for r in reg.releases()] == ["shadow"]  # b's canary ended, c's shadow goes on
    ends = [e for e in reg.audit_log() if e["action"] == "canary_end"]
    assert ends[-1]["details"] == {"version": b, "outcome": "promoted"}
    reg.rollback("production", actor="al")  # back to a: c's shadow still compares against it
    assert [r["version_id"] for r in reg.releases()] == [c]
    out = reg.end_release("production", "shadow", actor="al", reason="enough")
    assert out["version"] == c and reg.releases() == []


def test_hold_turns_the_rules_off_once(reg):
    _, b, _ = _versions(reg)
    reg.start_release(b, "production", "shadow", actor="al", rules=ReleaseRules(enabled=True))
    assert reg.hold_release("production", "shadow", actor="rules", reason="inconclusive")["outcome"] == "held"
    assert reg.releases()[0]["rules"] == {}
    with pytest.raises(BadInput, match="no shadow with rules"):  # a second server's hold finds nothing to do
        reg.hold_release("production", "shadow", actor="rules", reason="inconclusive")


def test_release_log_pairs_either_way_round(reg):
    a, b, _ = _versions(reg)
    ensure_pairs(reg.engine)

    def ans(pid, label, p):
        return {"prediction_id": pid, "label": label, "abstained": label is None, "top_k": [{"probability": p}]}

    write_pairs(
        reg.engine,
        [
            pair_row("shadow", "production", a, ans("p1", "cat", 0.9), b, "dog", 0.6),
            pair_row("canary", "production", b, ans("p2", "dog", 0.8), a, None, 0.0),
        ],
    )
    rows = paired_answers(reg.engine, a, b)
    assert [(r["a_label"], r["b_label"], r["role"]) for r in rows] == [
        ("cat", "dog", "shadow"),
        (None, "dog", "canary"),
    ]
    assert rows[1]["a_confidence"] == 0.0 and rows[1]["b_confidence"] == 0.8  # abstained: no confidence
    flipped = paired_answers(reg.engine, b, a)
    assert [(r["a_label"], r["b_label"]) for r in flipped] == [("dog", "cat"), ("dog", None)]
    assert paired_answers(reg.engine, a, b, alias="staging") == []
