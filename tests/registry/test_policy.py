"""A version's review policy: set, shown, audited and generation-bumped in
the registry; applied per class by a running server without a restart;
carried by edge bundles; and the `datamoat policy` commands."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dmtest import dm
from serve.serve_util import Live  # tests/ is on sys.path, as for dmtest

from datamoat.data import import_digits
from datamoat.edge.bundle import build_bundle, read_bundle
from datamoat.errors import BadInput, NotFound
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry, registry_url
from datamoat.registry.register import register_model
from datamoat.serve import ServeConfig, create_app
from datamoat.serve.engine import load_version
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

INFO = {"classes": ["cat", "dog", "bird"], "preprocess": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> SimpleNamespace:
    """A tiny digits MLP registered in its workspace's own registry (the CLI's default)."""
    ws = Workspace.init(tmp_path_factory.mktemp("policy") / "ws")
    ds = import_digits(ws)
    model = train(new_model("mlp", ds), ds, TrainConfig(epochs=3, threads=1), progress=False)
    model = save_model(ws, model, name="mlp-policy")
    reg = Registry(registry_url(ws))
    vid = register_model(ws, reg, model.id, actor="test")
    x = ds.subset("test")[0][:60]  # (60, 1, 8, 8) uint8
    probs = load_version(reg, vid, threads=1).probabilities(x)  # (60, 10): exactly what the server computes
    return SimpleNamespace(ws=ws, ds=ds, model=model, reg=reg, vid=vid, x=x, probs=probs, row=reg.version(vid))


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'reg.db'}")


def _gap_threshold(conf: np.ndarray) -> float:
    """A threshold in the widest gap among the middle confidences: no answer sits near it."""
    s = np.sort(conf)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    i = int(np.argmax(np.diff(s)[lo:hi])) + lo
    return float((s[i] + s[i + 1]) / 2)


def test_set_policy_is_audited_bumps_the_generation_and_wins_over_the_version_info(reg):
    vid = reg.register(b"onnx", name="m", kind="fp32", info={**INFO, "policy": {"threshold": 0.5}}, actor="alice")
    plain = reg.register(b"onnx-2", name="m2", kind="fp32", info=INFO, actor="alice")
    assert reg.policy(vid) == {"threshold": 0.5} and reg.policy(plain) == {}  # fallbacks: info, then nothing
    gen = reg.generation()
    out = reg.set_policy(
        "m",
        {
            "threshold": 0.9,
            "per_class": {"cat": 0.95, "bird": None},
            "target_accuracy": 0.99,
            "delta": 0.05,
            "method": "ltt",
        },
        actor="bob",
        reason="poc 17",
    )
    assert out["generation"] == gen + 1 == reg.generation() and out["version"] == vid
    pol = reg.policy(vid)
    assert {k: pol[k] for k in ("threshold", "per_class", "target_accuracy", "set_by", "reason")} == {
        "threshold": 0.9,
        "per_class": {"cat": 0.95, "bird": None},
        "target_accuracy": 0.99,
        "set_by": "bob",
        "reason": "poc 17",
    }
    last = reg.audit_log()[-1]
    assert (last["action"], last["actor"], last["target"], last["generation"]) == ("policy", "bob", vid, gen + 1)
    assert last["details"]["threshold"] == 0.9
    assert reg.snapshot()["policies"][vid]["per_class"] == {"cat": 0.95, "bird": None}
    reg.set_policy(vid, {"threshold": None}, actor="bob")  # replaces, not merges: no threshold at all now
    assert reg.policy(vid)["threshold"] is None and reg.policy(vid)["per_class"] is None
    assert Registry.policy_of(reg.snapshot(), vid, reg.version(vid)["info"])["threshold"] is None


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": "0.9"}, r"threshold must be in \(0, 1\)"),
        ({"per_class": {"cow": 0.9}}, "unknown class.*cow.*cat, dog, bird"),
        ({"per_class": {"cat": 1.5}}, r"class 'cat' must be in \[0, 1\)"),
        ({"thresold": 0.9}, "unknown policy field.*thresold"),
        ({"threshold": 0.9, "delta": 2}, r"delta must be in \(0, 1\)"),
    ],
)
def test_bad_policies_are_refused_and_change_nothing(reg, policy, match):
    vid = reg.register(b"onnx", name="m", kind="fp32", info=INFO, actor="alice")
    gen = reg.generation()
    with pytest.raises(BadInput, match=match):
        reg.set_policy(vid, policy, actor="bob")
    assert reg.generation() == gen and reg.policy(vid) == {}
    with pytest.raises(NotFound, match="unknown registry version"):
        reg.set_policy("nope", {"threshold": 0.9}, actor="bob")


def test_a_running_server_flags_answers_by_their_class_threshold(served, reg):
    vid = reg.register(
        served.reg.artifact(served.row["onnx_sha"]), name="mlp", kind="fp32", info=served.row["info"], actor="test"
    )
    reg.promote(vid, "production", actor="test")
    classes = [str(c) for c in served.row["info"]["classes"]]
    pred, conf = served.probs.argmax(1), served.probs.max(1)  # (60,), (60,)
    t = _gap_threshold(conf)
    # Class `free` is exempt (0), class `always` always reviewed (None), the rest use `t`.
    lows = [c for c in range(len(classes)) if ((pred == c) & (conf < t)).any()]
    free = lows[0]
    always = next(c for c in range(len(classes)) if c != free and ((pred == c) & (conf >= t)).any())
    want = np.where(pred == free, False, np.where(pred == always, True, conf < t))
    assert want.any() and not want.all()

    app = create_app(reg, ServeConfig(require_predict_token=False, poll_interval_s=0.02, ort_threads=1))
    with Live(app) as client:

        def flags() -> list[bool]:
            r = client.post("/v1/predict", json={"inputs": served.x.tolist()})
            return [a["needs_review"] for a in r.json()["predictions"]]

        assert not any(flags())  # no policy yet
        out = reg.set_policy(
            vid,
            {"threshold": t, "per_class": {classes[free]: 0.0, classes[always]: None}},
            actor="ops",
            reason="review the doubtful ones",
        )
        assert reg.wait_for_acks(out["generation"], timeout=10)["missing"] == []
        assert flags() == want.tolist()
        answers = client.post("/v1/predict", json={"inputs": served.x.tolist()}).json()["predictions"]
        i = int(np.flatnonzero(pred == always)[0])
        assert answers[i]["reason"] == f"the policy sends every {classes[always]!r} answer to review"


def test_bundles_carry_the_set_policy(served, reg):
    vid = reg.register(
        served.reg.artifact(served.row["onnx_sha"]), name="mlp", kind="fp32", info=served.row["info"], actor="test"
    )
    key = Ed25519PrivateKey.generate()

    def policy_json(seq: int) -> dict:
        return read_bundle(build_bundle(reg, vid, key, seq, inputs=served.x[:2]), [key.public_key()]).part_json(
            "policy.json"
        )

    assert policy_json(1)["threshold"] is None
    reg.set_policy(vid, {"threshold": 0.8, "per_class": {"3": 0.95}}, actor="ops")
    pol = policy_json(2)
    assert (pol["threshold"], pol["per_class"], pol["generation"]) == (0.8, {"3": 0.95}, reg.generation())


@pytest.mark.slow
def test_cli_sets_from_a_poc_report_shows_it_and_exits_2_on_bad_input(served, tmp_path):
    from datamoat.evaluate.feasibility import feasibility

    res = feasibility(served.model, served.ds, 0.9, 0.1)  # the dict `datamoat poc --json` prints
    assert res["policy"]["threshold"] is not None
    poc = tmp_path / "poc.json"
    poc.write_text(json.dumps({**res, "poc_id": "p123"}))
    home = served.ws.root

    r = dm(home, "policy", "set", served.vid, "--from-poc", str(poc), "--reason", "poc p123", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["policy"]["threshold"] == pytest.approx(res["policy"]["threshold"])
    assert (out["policy"]["source"], out["policy"]["target_accuracy"], out["policy"]["delta"]) == ("poc:p123", 0.9, 0.1)
    shown = json.loads(dm(home, "policy", "show", served.vid[:8], "--json").stdout)
    assert shown["origin"] == "registry" and shown["policy"]["reason"] == "poc p123"
    assert served.reg.audit_log()[-1]["action"] == "policy"

    r = dm(home, "policy", "set", served.vid, "--threshold", "0.7", "--class-threshold", "3=review")
    assert r.returncode == 0, r.stderr
    assert served.reg.policy(served.vid)["per_class"] == {"3": None} and "review below 0.7" in r.stdout

    gen = served.reg.generation()
    for args, says in [
        (("--threshold", "1.5"), "threshold must be in (0, 1)"),
        (("--threshold", "0"), "threshold must be in (0, 1)"),
        (("--class-threshold", "cat=0.9"), "unknown class"),
        (("--from-poc", str(tmp_path / "missing.json")), "no such file"),
        ((), "give --threshold"),
    ]:
        r = dm(home, "policy", "set", served.vid, *args)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = dm(home, "policy", "show", "no-such-version")
    assert r.returncode == 2 and "unknown registry version" in r.stderr
    assert served.reg.generation() == gen  # refused commands changed nothing


def test_an_edge_device_applies_the_bundled_per_class_policy(served, reg, tmp_path):
    from edge.helpers import body  # tests/ is on sys.path

    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.runtime import EdgeRuntime

    vid = reg.register(
        served.reg.artifact(served.row["onnx_sha"]), name="mlp", kind="fp32", info=served.row["info"], actor="test"
    )
    classes = [str(c) for c in served.row["info"]["classes"]]
    pred, conf = served.probs.argmax(1), served.probs.max(1)  # (60,), (60,)
    t = _gap_threshold(conf)
    always = int(pred[np.argmax(conf)])  # the most confident answer's class: reviewed only by its own rule
    reg.set_policy(vid, {"threshold": t, "per_class": {classes[always]: None}}, actor="ops")
    key = Ed25519PrivateKey.generate()
    rt = EdgeRuntime(
        EdgeConfig(device_id="cam", state_dir=str(tmp_path / "dev"), upload_low_confidence=False),
        trusted=[key.public_key()],
    )
    try:
        assert (
            rt.install_bytes(build_bundle(reg, vid, key, 1, inputs=served.x[:2]), source="usb")["status"] == "installed"
        )
        answers = rt.predict(body(served.x))[0]["predictions"]
    finally:
        rt.close()
    want = np.where(pred == always, True, conf < t)
    assert want.any() and not want.all()
    assert [a["needs_review"] for a in answers] == want.tolist()
