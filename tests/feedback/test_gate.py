"""Each gate rule on crafted items, and a poisoning attack in miniature."""

import time

from datamoat.feedback import GateConfig, evaluate_gate

from .helpers_fb import served, server_feedback

OFF = {"max_per_hour": 0, "min_model_prob": 0.0}  # every rule that is not under test, off


def status(q):
    return {r["id"]: (r["status"], " | ".join(r["reasons"])) for r in q.items()}


def right(trained, k):
    """Test image k among those the model gets right, with its true label."""
    i = trained.right[k]
    return trained.x[i], str(trained.y[i])


def wrong_label(label):
    return str((int(label) + 1) % 10)


def test_rate_limit_per_source(q, trained):
    t0 = time.time() - 10 * 3600
    ids = [
        q.submit(source="burst", label=lab, pixels=img, ts=t0 + k)
        for k, (img, lab) in enumerate(right(trained, k) for k in range(5))
    ]
    later = q.submit(source="burst", label=right(trained, 5)[1], pixels=right(trained, 5)[0], ts=t0 + 3700)
    other = q.submit(source="calm", label=right(trained, 6)[1], pixels=right(trained, 6)[0], ts=t0 + 2)
    evaluate_gate(q, GateConfig(**{**OFF, "max_per_hour": 3}))
    st = status(q)
    assert [st[i][0] for i in ids] == ["accepted"] * 3 + ["held"] * 2
    assert "rate limit" in st[ids[3]][1]
    assert st[later][0] == "accepted" and st[other][0] == "accepted"  # a new hour; another source


def test_model_disagreement_and_trusted_bypass(q, trained):
    img, lab = right(trained, 0)
    good = q.submit(source="cam-1", label=lab, pixels=img)
    bad = q.submit(source="cam-2", label=wrong_label(lab), pixels=right(trained, 1)[0])
    lab_item = q.submit(source="lab", label=wrong_label(lab), pixels=right(trained, 2)[0])
    evaluate_gate(q, GateConfig(**{**OFF, "min_model_prob": 0.05, "trusted_sources": ("lab",)}), trained.scorer)
    st = status(q)
    assert st[good][0] == "accepted"
    assert st[bad][0] == "held" and "disagrees with model" in st[bad][1]
    assert st[lab_item][0] == "accepted"  # trusted: the model's opinion does not hold it


def test_cross_source_conflict_tie_then_majority(q, trained):
    img, lab = right(trained, 0)
    a = q.submit(source="a", label=lab, pixels=img)
    b = q.submit(source="b", label=wrong_label(lab), pixels=img)
    evaluate_gate(q, GateConfig(**OFF))
    assert status(q)[a] == ("held", "sources disagree on this input") and status(q)[b][0] == "held"
    c = q.submit(source="c", label=lab, pixels=img)
    evaluate_gate(q, GateConfig(**OFF))
    st = status(q)
    assert st[a][0] == "accepted" and st[c][0] == "accepted"
    assert st[b][0] == "held" and "conflicts with other sources" in st[b][1]


def test_trusted_reviewer_wins_and_human_accept_counts_as_trusted(q, trained):
    img, lab = right(trained, 0)
    # Server feedback is trusted by its token's role, never by the source name a client typed.
    token_name = "ui"
    q.registry.create_token("review", token_name, actor="test")
    pid = served(q, img)
    server_feedback(q, pid, wrong_label(lab), "review-ui", actor=token_name)
    pid2 = served(q, img)
    server_feedback(q, pid2, lab, "review", actor="anonymous")  # claims to be a reviewer
    q.sync()
    q.attach_pixels(img[None])
    crowd = [q.submit(source=f"crowd-{k}", label=lab, pixels=img) for k in range(3)]
    evaluate_gate(q, GateConfig(**OFF))
    st = status(q)
    reviewer, pretender = (r["id"] for r in q.items() if r["kind"] == "serve")
    assert st[reviewer][0] == "accepted"  # one trusted reviewer beats a crowd of four
    assert st[pretender][0] == "held" and "contradicts trusted reviewer" in st[pretender][1]
    assert all(st[i][0] == "held" for i in crowd)
    # A person's accept is a trusted label too.
    img2, lab2 = right(trained, 1)
    first = q.submit(source="x", label=lab2, pixels=img2)
    q.decide([first], "accepted", actor="ana")
    late = q.submit(source="y", label=wrong_label(lab2), pixels=img2)
    evaluate_gate(q, GateConfig(**OFF))
    assert "contradicts trusted reviewer" in status(q)[late][1]


def test_reputation_flags_a_source_that_contradicts_others(q, trained):
    shared = [right(trained, k) for k in range(6)]
    # Two honest sources: with only two, contradiction is symmetric and neither could be told apart.
    honest = [q.submit(source=f"honest-{j}", label=lab, pixels=img) for img, lab in shared for j in (1, 2)]
    liar = [q.submit(source="liar", label=wrong_label(lab), pixels=img) for img, lab in shared]
    img, lab = right(trained, 10)
    liar_alone = q.submit(source="liar", label=lab, pixels=img)  # correct, but from a flagged source
    report = evaluate_gate(q, GateConfig(**{**OFF, "min_judged": 5}))
    assert report["flagged"] == ["liar"]
    assert report["sources"]["liar"]["contradiction_rate"] == 1.0
    st = status(q)
    assert all(st[i][0] == "accepted" for i in honest)  # with the liar discounted, honest labels stand
    assert all(st[i][0] == "held" and "source flagged" in st[i][1] for i in [*liar, liar_alone])


def test_rejections_count_against_reputation(q, trained):
    ids = [q.submit(source="vendor", label=lab, pixels=img) for img, lab in (right(trained, k) for k in range(6))]
    q.decide(ids[:5], "rejected", actor="ana", reason="spot check failed")
    report = evaluate_gate(q, GateConfig(**OFF))
    assert report["flagged"] == ["vendor"] and status(q)[ids[5]][0] == "held"


def test_require_approval_holds_everything(q, trained):
    ids = [
        q.submit(source=f"s{k}", label=lab, pixels=img)
        for k, (img, lab) in enumerate(right(trained, k) for k in range(3))
    ]
    evaluate_gate(q, GateConfig(**OFF, require_approval=True))
    assert all(status(q)[i] == ("held", "awaiting human approval") for i in ids)
    q.decide(ids[:1], "accepted", actor="ana")
    evaluate_gate(q, GateConfig(**OFF, require_approval=True))
    assert [status(q)[i][0] for i in ids] == ["accepted", "held", "held"]
    # Only changes are logged: 3 holds by the gate, then the person's accept.
    assert [(e["decision"], e["actor"]) for e in q.decisions()] == [("held", "gate")] * 3 + [("accepted", "ana")]


def test_poisoning_in_miniature(q, trained):
    """One source relabels 3s as 8s, fast; two honest sources label other digits."""
    threes = [i for i in trained.right if trained.y[i] == 3]
    others = [i for i in trained.right if trained.y[i] not in (3, 8)]
    now = time.time()
    attack = [
        q.submit(source="attacker", label="8", pixels=trained.x[i], ts=now + k * 0.1) for k, i in enumerate(threes)
    ]
    honest = []
    for k, i in enumerate(others[:40]):
        honest.append(q.submit(source=f"user-{k % 2}", label=str(trained.y[i]), pixels=trained.x[i], ts=now + 400 * k))
    # Where they overlap, the honest users disagree with the attacker.
    for k, i in enumerate(threes[:6]):
        honest.append(q.submit(source=f"user-{k % 2}", label="3", pixels=trained.x[i], ts=now + 20000 + 400 * k))
    report = evaluate_gate(q, GateConfig(max_per_hour=10), scorer=trained.scorer)
    st = status(q)
    assert len(attack) > 10 and all(st[i][0] == "held" for i in attack)
    assert all(st[i][0] == "accepted" for i in honest)
    assert report["flagged"] == ["attacker"]
    reasons = st[attack[-1]][1]
    assert "source flagged" in reasons and "rate limit" in reasons and "disagrees with model" in reasons
    # Even without the reputation and rate rules, the model rule alone holds every targeted label.
    evaluate_gate(q, GateConfig(max_per_hour=0, max_contradiction_rate=1.0), scorer=trained.scorer)
    assert all(status(q)[i][0] == "held" for i in attack)
    # ... but then the honest labels where the attacker disagreed are ties, held: reputation is what frees them.
    assert all(status(q)[i][0] == "accepted" for i in honest[:-6])
    assert all(status(q)[i] == ("held", "sources disagree on this input") for i in honest[-6:])
