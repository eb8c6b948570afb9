"""M2: the feedback gate trusted a token's free-text name, and names need not
be unique: a predict token named like a review token was trusted as one.
M3: tokens could not be revoked (a `revoked` column existed; nothing set it)."""

from __future__ import annotations

import pytest
from serve.serve_util import Live, auth

from datamoat.errors import BadInput
from datamoat.registry.core import AuthError, Registry
from datamoat.serve import ServeConfig, create_app


def test_m2_a_token_name_is_an_identity_and_is_never_reused(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    reg.create_token("review", "ana", actor="ops")
    with pytest.raises(BadInput, match="names are identities"):
        reg.create_token("predict", "ana", actor="mallory")
    reg.create_token("predict", "cam-app", actor="ops")
    reg.revoke_token("cam-app", actor="ops", reason="rotated")
    with pytest.raises(BadInput, match="names are identities"):  # not after a revocation either
        reg.create_token("review", "cam-app", actor="ops")
    assert [(t["name"], t["role"], t["revoked"]) for t in reg.list_tokens()] == [
        ("ana", "review", False),
        ("cam-app", "predict", True),
    ]


def test_m3_a_revoked_token_is_refused_by_a_running_server_within_one_poll(world, fresh):
    reg = fresh.reg
    leaked = reg.create_token("predict", "leaked-app", actor="ops")
    body = {"inputs": world.x[:1].tolist()}
    cfg = ServeConfig(poll_interval_s=0.02, heartbeat_s=0.5, ort_threads=1, auth_cache_s=3600)
    with Live(create_app(reg, cfg)) as srv:
        assert srv.post("/v1/predict", json=body, headers=auth(leaked)).status_code == 200  # now cached for an hour
        out = reg.revoke_token("leaked-app", actor="ops", reason="leaked in a log")
        assert reg.wait_for_acks(out["generation"], timeout=5)["missing"] == []
        r = srv.post("/v1/predict", json=body, headers=auth(leaked))
        assert r.status_code == 401 and "revoked" in r.json()["error"]
    with pytest.raises(AuthError):
        reg.check_token(leaked, "predict")
    assert reg.audit_log()[-1]["action"] == "token-revoke" and reg.audit_log()[-1]["reason"] == "leaked in a log"
