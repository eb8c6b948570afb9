"""The live guarantee check: the betting test's error level and power, and, end to end, audited
answers people mark wrong turning the version's answers over to review, audited and alerted."""

import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from dmtest import dm, dm_ok

from datamoat.errors import BadInput
from datamoat.evaluate.guarantee import GuaranteeCheck, GuaranteeConfig
from datamoat.feedback.guarantee import GUARANTEE_SOURCE, check_guarantee
from datamoat.feedback.review import ReviewQueue
from datamoat.inference.engine import decide
from datamoat.registry.answer_rows import AUDIT_REASON, input_hash, is_audited, log_rows, review_rows
from datamoat.registry.ledger import write_predictions


def test_no_change_fails_at_most_alpha_of_the_time_and_a_drop_is_caught():
    rng = np.random.default_rng(0)
    cfg = GuaranteeConfig(target_accuracy=0.95, alpha=0.05)
    false = sum(GuaranteeCheck(cfg).update(rng.random(2000) < 0.95).failed for _ in range(300))
    assert false <= 24  # alpha 0.05: 15 expected at worst; 24 or more has probability below 1%
    caught = [GuaranteeCheck(cfg).update(rng.random(2000) < 0.90).failed_at for _ in range(50)]
    assert all(c is not None for c in caught) and np.median(caught) < 600


def test_the_state_resumes_where_it_stopped():
    x = np.random.default_rng(1).random(700) < 0.93
    whole = GuaranteeCheck(GuaranteeConfig(target_accuracy=0.95)).update(x)
    first = GuaranteeCheck(GuaranteeConfig(target_accuracy=0.95)).update(x[:300])
    resumed = GuaranteeCheck(GuaranteeConfig(target_accuracy=0.95), first.state()).update(x[300:])
    assert resumed.failed_at == whole.failed_at and np.allclose(resumed.log_wealth, whole.log_wealth)
    assert resumed.report()["reviews"] == 700


def test_the_audit_sample_is_a_random_share_of_automated_answers():
    rng = np.random.default_rng(2)
    ids = [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(20_000)]
    share = np.mean([is_audited(i, 0.05) for i in ids])
    assert abs(share - 0.05) < 0.006  # binomial sd is 0.0015


def queue_audited(reg, vid, classes, n, wrong_every):
    """n automated answers, all in the audit sample, written as a server writes them."""
    state = SimpleNamespace(alias="production", generation=1, model=SimpleNamespace(version_id=vid))
    probs = np.tile(np.eye(len(classes))[3] * 0.97 + 0.003, (n, 1))  # confident "3"
    answers = [{"prediction_id": str(uuid.uuid4()), **a} for a in decide(probs, classes, {}, 3, 0.5)]
    rows = review_rows(state, answers, np.zeros((n, 1, 8, 8), np.uint8), audit=1.0)
    assert len(rows) == n and all(r["reason"] == AUDIT_REASON for r in rows)
    logged = log_rows(state, "test-server", answers, [input_hash(np.zeros((1, 8, 8)))] * n)
    write_predictions(reg.engine, logged, rows, max_open=10_000)
    return [(r["prediction_id"], "4" if i % wrong_every == 0 else "3") for i, r in enumerate(rows)]


def test_audited_answers_marked_wrong_send_every_answer_to_review(q, trained):
    reg = q.registry
    vid = reg.aliases()["production"]
    classes = [str(c) for c in reg.version(vid)["info"]["classes"]]
    with pytest.raises(BadInput, match="no target accuracy"):
        check_guarantee(reg, vid)
    reg.set_policy(vid, {"threshold": 0.5, "target_accuracy": 0.95, "method": "poc"}, actor="test")
    queue = ReviewQueue(reg)
    decisions = queue_audited(reg, vid, classes, 150, wrong_every=4)  # 75% right: far below 0.95
    acted = None
    for i, (pid, label) in enumerate(decisions):
        out = queue.decide(pid, label, "ana")
        if out["guarantee"]["acted"]:
            acted = i + 1
            break
    assert acted is not None and acted < 150
    policy = reg.policy(vid)
    assert policy["source"] == GUARANTEE_SOURCE and all(v is None for v in policy["per_class"].values())
    log = [e for e in reg.audit_log() if e["action"] == "policy"]
    assert log[-1]["actor"] == "guarantee-check" and "guarantee check failed" in log[-1]["reason"]
    # Later decisions do not act again.
    pid, label = decisions[acted]
    assert queue.decide(pid, label, "ana")["guarantee"]["acted"] is None
    assert len([e for e in reg.audit_log() if e["action"] == "policy"]) == len(log)
    # The CLI shows the same state; a version without a poc target is refused with the fix.
    shown = json.loads(dm_ok(trained.ws.root, "guarantee", vid, "--registry", reg.url, "--json").stdout)
    assert shown["failed"] and shown["failed_at"] == acted and shown["reviews"] == acted + 1
    other = reg.register(reg.artifact(reg.version(vid)["onnx_sha"]), name="x", kind="fp32",
                         info={**reg.version(vid)["info"], "note": "x"}, actor="test")  # fmt: skip
    r = dm(trained.ws.root, "guarantee", other, "--registry", reg.url)
    assert r.returncode == 2 and "no target accuracy" in r.stderr
