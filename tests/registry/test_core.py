"""The registry on SQLite and, where DATAMOAT_TEST_PG_URL is set (CI sets it), on a real PostgreSQL."""

import json
import os

import pytest
import sqlalchemy as sa
from dmtest import dm

from datamoat.errors import BadInput, NotFound
from datamoat.registry.core import AuthError, Registry

PG_URL = os.environ.get("DATAMOAT_TEST_PG_URL")
INFO = {"classes": ["cat", "dog", "bird"], "preprocess": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}}


@pytest.fixture
def reg(url):
    r = Registry(url)
    yield r
    r.engine.dispose()


def three_versions(reg):
    return [reg.register(f"onnx-{i}".encode(), name=f"m{i}", kind="fp32", info=INFO, actor="alice") for i in range(3)]


def test_register_is_content_addressed_and_resolvable(reg):
    a, b, _ = three_versions(reg)
    assert reg.register(b"onnx-0", name="m0", kind="fp32", info=INFO, actor="alice") == a
    assert reg.version(a)["name"] == "m0" and reg.version(a[:6])["id"] == a and reg.version("m1")["id"] == b
    assert reg.artifact(reg.version(a)["onnx_sha"]) == b"onnx-0"
    with pytest.raises(NotFound, match="unknown registry version"):
        reg.version("nope")
    with pytest.raises(BadInput, match="kind"):
        reg.register(b"x", name="x", kind="fp16", info=INFO, actor="alice")


def test_promote_and_rollback_walk_the_history(reg):
    a, b, c = three_versions(reg)
    assert reg.promote(a, "production", actor="alice")["previous"] is None
    reg.promote(b, "production", actor="alice")
    reg.promote(c, "production", actor="alice")
    assert reg.rollback("production", actor="bob")["version"] == b
    assert reg.rollback("production", actor="bob")["version"] == a
    with pytest.raises(BadInput, match="no previous version"):
        reg.rollback("production", actor="bob")
    with pytest.raises(NotFound, match="unknown alias"):
        reg.rollback("staging", actor="bob")
    reg.promote(b, "staging", actor="alice")
    assert reg.aliases() == {"production": a, "staging": b}


def test_takedown_with_and_without_fallback(reg):
    a, b, c = three_versions(reg)
    reg.promote(a, "production", actor="alice")
    with pytest.raises(BadInput, match="--reason"):
        reg.takedown(a, actor="alice", reason=" ")
    reg.takedown(a, actor="alice", reason="mislabels people")
    target, why = Registry.serving_target(reg.snapshot(), "production")
    assert target is None and "mislabels people" in why
    reg.takedown(a, actor="alice", reason="use b", fallback=b)
    assert Registry.serving_target(reg.snapshot(), "production")[0] == b
    reg.takedown(b, actor="alice", reason="b too", fallback=c)  # fallbacks chain
    assert Registry.serving_target(reg.snapshot(), "production")[0] == c
    reg.restore(a, actor="alice", reason="fixed")
    assert Registry.serving_target(reg.snapshot(), "production")[0] == a
    with pytest.raises(BadInput, match="not taken down"):
        reg.restore(a, actor="alice", reason="again")


def test_suppressions_per_alias_and_everywhere(reg):
    with pytest.raises(BadInput, match="--reason"):
        reg.suppress("dog", actor="alice", reason="")
    with pytest.raises(BadInput, match="unknown suppression mode"):
        reg.suppress("dog", actor="alice", reason="r", mode="hide")
    reg.suppress("dog", actor="alice", reason="offensive", mode="abstain")
    reg.suppress("cat", actor="alice", reason="canary only", alias="canary", mode="renormalize")
    snap = reg.snapshot()
    assert Registry.suppressed_for(snap, "production") == {"dog": "abstain"}
    assert Registry.suppressed_for(snap, "canary") == {"dog": "abstain", "cat": "renormalize"}
    reg.unsuppress("dog", actor="bob", reason="fixed")
    assert Registry.suppressed_for(reg.snapshot(), "production") == {}


def test_audit_log_is_complete_ordered_and_append_only(reg):
    a, b, _ = three_versions(reg)
    reg.promote(a, "production", actor="alice", reason="launch")
    reg.takedown(a, actor="carol", reason="incident 42", fallback=b)
    log = reg.audit_log()
    assert [e["action"] for e in log] == ["register"] * 3 + ["promote", "takedown"]
    assert log[-1]["actor"] == "carol" and log[-1]["reason"] == "incident 42" and log[-1]["details"]["fallback"] == b
    assert [e["generation"] for e in log] == sorted(e["generation"] for e in log) == list(range(1, 6))
    for stmt in ("UPDATE reg_audit SET reason = 'x'", "DELETE FROM reg_audit"):
        with pytest.raises(sa.exc.DBAPIError), reg.engine.begin() as conn:
            conn.exec_driver_sql(stmt)
    assert len(reg.audit_log()) == 5


def test_generation_and_acknowledgements(reg):
    (a, *_) = three_versions(reg)
    reg.heartbeat("s1", "http://127.0.0.1:1", "production", reg.generation())
    reg.heartbeat("s2", "http://127.0.0.1:2", "production", reg.generation())
    gen = reg.promote(a, "production", actor="alice")["generation"]
    assert gen == reg.generation()
    reg.heartbeat("s1", "http://127.0.0.1:1", "production", gen)
    acks = reg.wait_for_acks(gen, timeout=0.2)
    assert acks == {"acked": ["s1"], "missing": ["s2"]}
    reg.heartbeat("s2", "http://127.0.0.1:2", "production", gen)
    assert reg.wait_for_acks(gen, timeout=0.2)["missing"] == []


def test_tokens_are_hashed_and_roles_enforced(reg):
    admin = reg.create_token("admin", "ops", actor="bootstrap")
    pred = reg.create_token("predict", "site-7", actor="ops")
    with reg.engine.connect() as conn:
        dump = json.dumps([list(map(str, r)) for r in conn.exec_driver_sql("SELECT * FROM reg_tokens")])
    assert admin not in dump and pred not in dump
    assert reg.check_token(admin, "admin") == "ops" and reg.check_token(admin, "predict") == "ops"
    assert reg.check_token(pred, "predict") == "site-7"
    with pytest.raises(AuthError) as e:
        reg.check_token(pred, "admin")
    assert e.value.http_status == 403
    for bad in (None, "", "dm_admin_forged"):
        with pytest.raises(AuthError) as e:
            reg.check_token(bad, "admin")
        assert e.value.http_status == 401
    with pytest.raises(BadInput, match="unknown role"):
        reg.create_token("root", "x", actor="ops")


@pytest.mark.slow
def test_cli_control_commands_and_admin_token(ws, digits):
    from datamoat.models import new_model, save_model

    m1 = save_model(ws, new_model("mlp", digits, seed=1), name="m1")
    m2 = save_model(ws, new_model("mlp", digits, seed=2), name="m2")
    home = ws.root
    out = json.loads(dm(home, "promote", m1.id, "--alias", "production", "--json", "--wait", "0").stdout)
    v1 = out["version"]
    v2 = json.loads(dm(home, "promote", m2.id, "--alias", "production", "--json", "--wait", "0").stdout)["version"]
    back = json.loads(dm(home, "rollback", "--alias", "production", "--json", "--wait", "0").stdout)
    assert back["version"] == v1 and back["previous"] == v2
    missing_reason = dm(home, "takedown", v1)
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    token = json.loads(dm(home, "tokens", "create", "--role", "admin", "--name", "ops", "--json").stdout)["token"]
    refused = dm(home, "suppress", "3", "--reason", "test")
    assert refused.returncode == 2 and "admin token is required" in refused.stderr
    ok = dm(home, "suppress", "3", "--reason", "test", "--json", "--wait", "0", env={"DATAMOAT_TOKEN": token})
    assert ok.returncode == 0, ok.stderr
    audit = json.loads(dm(home, "registry", "audit", "--json").stdout)["audit"]
    assert audit[-1]["action"] == "suppress" and audit[-1]["actor"] == "ops"
    listed = json.loads(dm(home, "registry", "list", "--json").stdout)
    assert listed["aliases"] == {"production": v1} and listed["suppressions"][0]["label"] == "3"
