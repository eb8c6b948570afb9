"""`--json` means one JSON object on stdout and nothing else, for every command.

One workspace goes through the whole flow on tiny data, in-process through the
real entry point (`datamoat.cli.main`), with stdout captured at the file
descriptor: a library that prints (ONNX Runtime's entropy calibration does)
or writes to descriptor 1 from C would break the parse. The last test checks
that every command that has `--json` was run here, so a new one cannot slip by.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dmtest import dm_main
from PIL import Image

from datamoat.cli import app

RAN: set[str] = set()


def json_commands() -> set[str]:
    import typer

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
            yield " ".join(path)

    return set(walk(typer.main.get_command(app), []))


def command_path(args: tuple[str, ...]) -> str:
    known = json_commands()
    two = " ".join(args[:2])
    return two if two in known else args[0]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """State shared along the flow: the workspace home and ids the steps make."""
    return {"home": tmp_path_factory.mktemp("json") / "ws", "tmp": tmp_path_factory.mktemp("json-files")}


@pytest.fixture
def dm(flow, capfd, monkeypatch):
    """Run `datamoat --home HOME ARGS --json`; return the one parsed object."""

    def run(*args: str) -> dict:
        code, out, err = dm_main(monkeypatch, capfd, flow["home"], *args, "--json")
        assert code == 0, f"{' '.join(args)} exited {code}: {err[-2000:]}"
        obj = json.loads(out)  # the whole of stdout: one object, nothing before or after
        assert isinstance(obj, dict) and out.count("\n") == 1, out[:500]
        RAN.add(command_path(args))
        return obj

    return run


@pytest.mark.slow
def test_data_train_and_catalog(dm, flow, monkeypatch):
    from datamoat.data import sources

    # No Fashion-MNIST: the demo falls back to digits, and says so on stderr, not stdout.
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", Path("/nonexistent/fashion-mnist"))
    assert dm("init")["workspace"]
    out = dm("demo", "--epochs", "1")
    assert out["dataset"] == "digits" and "dataset-fashion-mnist" in out["fallback"]
    flow["data"] = dm("data", "import", "digits")["dataset_id"]
    assert dm("archs")
    assert dm("data", "list")
    assert dm("data", "show", "digits")
    syn = dm(
        "data",
        "synth",
        str(flow["tmp"] / "synth"),
        "--n-per-class",
        "2",
        "--source",
        "digits",
        "--min-side",
        "40",
        "--max-side",
        "64",
    )
    jpgs = sorted((flow["tmp"] / "synth").rglob("*.jpg"))
    assert syn["images"] == 20 and len(jpgs) == 20
    assert all(40 <= max(Image.open(p).size) <= 64 for p in jpgs)
    photos = dm("data", "import-photos", str(flow["tmp"] / "synth" / "train"), "--name", "synth")
    assert photos["imported"] == 20 and photos["skipped"] == 0 and photos["name"] == "synth"
    rendered = dm("data", "render", photos["id"], "--size", "16", "--workers", "0")
    assert rendered["input_shape"] == [3, 16, 16] and rendered["samples"] == 20
    flow["model"] = dm("train", "--data", "digits", "--arch", "cnn_small", "--epochs", "2", "--name", "small")[
        "model_id"
    ]
    assert dm("runs", "list") and dm("models", "list") and dm("models", "show", "small")
    assert dm("eval", "small")["accuracy"] > 0.3


@pytest.mark.slow
def test_predict(dm, flow):
    out = dm("predict", "digits", "--model", "small", "--output", str(flow["tmp"] / "p.parquet"), "--split", "val")
    assert out["rows"] > 0 and out["model_id"] == flow["model"] and out["dataset_id"] == flow["data"]


@pytest.mark.slow
def test_compress_stages(dm, flow):
    assert dm("export", "small")
    # Entropy calibration prints its progress with print(): it must not reach stdout.
    assert dm("quantize", "small", "--calibration", "entropy", "--max-accuracy-drop", "100")
    assert dm("prune", "small", "--method", "structured", "--ratio", "0.5", "--epochs", "1", "--latency", "none")
    assert dm("distill", "small", "--arch", "mlp", "--epochs", "1")
    out = dm("compress", "small", "--distill-epochs", "1", "--student", "mlp", "--max-accuracy-drop", "100")
    assert out["chosen"]


@pytest.mark.slow
def test_registry_and_control(dm, flow):
    v1 = dm("promote", "small", "--alias", "production", "--reason", "launch", "--wait", "0")["version"]
    v2 = dm("promote", "small", "--int8", "--alias", "production", "--reason", "int8", "--wait", "0")["version"]
    flow.update(v1=v1, v2=v2)
    assert dm("rollback", "--alias", "production", "--reason", "regression", "--wait", "0")
    assert dm("registry", "list") and dm("registry", "show", v1) and dm("registry", "audit")
    assert dm("policy", "set", v1, "--threshold", "0.5", "--reason", "poc", "--wait", "0")
    assert dm("policy", "show", v1)
    assert dm("poc", "small", "--target-accuracy", "0.9")
    assert dm("suppress", "3", "--reason", "test", "--wait", "0")
    assert dm("unsuppress", "3", "--reason", "test", "--wait", "0")
    assert dm("takedown", v2, "--reason", "incident", "--wait", "0")
    assert dm("restore", v2, "--reason", "fixed", "--wait", "0")
    flow["admin"] = dm("tokens", "create", "--role", "admin", "--name", "ops")["token"]
    flow["predict"] = dm("tokens", "create", "--role", "predict", "--name", "app", "--token", flow["admin"])["token"]
    dm("tokens", "create", "--role", "predict", "--name", "old-app", "--token", flow["admin"])
    assert dm("tokens", "revoke", "old-app", "--reason", "rotated", "--token", flow["admin"], "--wait", "0")["revoked"]
    assert [t["name"] for t in dm("tokens", "list", "--token", flow["admin"])["tokens"]] == ["ops", "app", "old-app"]


@pytest.mark.slow
def test_monitoring(dm, flow, monkeypatch):
    from datamoat.registry.core import Registry, registry_url
    from datamoat.workspace import Workspace

    admin, v1 = flow["admin"], flow["v1"]
    assert dm("registry", "profile", v1, "--token", admin)["n"] > 0
    assert dm("drift", v1, "--data", flow["data"], "--window", "100")["windows"]
    reg = Registry(registry_url(Workspace.open(flow["home"])))
    reg.set_policy(v1, {"threshold": 0.5, "target_accuracy": 0.9}, actor="test")
    assert dm("guarantee", v1)["reviews"] == 0
    monkeypatch.setenv("DATAMOAT_WEBHOOK_SECRET", "a-secret-of-24-characters")
    hook = dm("alerts", "add", "http://127.0.0.1:9/hook", "--event", "promote", "--token", admin)["id"]
    assert [h["id"] for h in dm("alerts", "list")["webhooks"]] == [hook]
    assert not dm("alerts", "test", "--event", "promote")["deliveries"][0]["ok"]  # nothing listens on port 9
    assert dm("alerts", "remove", hook, "--token", admin)["removed"] == hook


@pytest.mark.slow
def test_releases(dm, flow):
    admin, v1, v2 = flow["admin"], flow["v1"], flow["v2"]
    out = dm("promote", v2, "--canary", "10", "--auto", "--min-labelled", "50", "--token", admin, "--wait", "0")
    assert (out["kind"], out["version"], out["production"], out["rules"]["min_labelled"]) == ("canary", v2, v1, 50)
    assert [r["version_id"] for r in dm("release", "list")["releases"]] == [v2]
    assert dm("release", "check", "--token", admin)["decisions"][0]["action"] is None  # no pairs logged
    assert dm("compare", v1, v2)["n"] == 0
    assert dm("release", "end", "canary", "--reason", "done", "--token", admin, "--wait", "0")["version"] == v2


@pytest.mark.slow
def test_edge(dm, flow):
    tmp, admin = flow["tmp"], flow["admin"]
    key = tmp / "release.pem"
    assert dm("keys", "generate", "-o", str(key))
    assert dm("bundle", flow["v1"], "--key", str(key), "-o", str(tmp / "m.dmb"), "--token", admin)
    assert dm(
        "edge", "install", str(tmp / "m.dmb"), "--trust", str(key.with_suffix(".pub")), "--state-dir", str(tmp / "dev")
    )
    assert dm("fleet", "enroll", "cam-01", "--group", "lab", "--token", admin)
    assert dm("rollout", flow["v1"], "--group", "lab", "--percent", "50", "--token", admin)
    assert dm("fleet", "status") and dm("fleet", "events")
    assert dm("fleet", "abort", "--group", "lab", "--reason", "test", "--token", admin)


@pytest.mark.slow
def test_serving_feedback_and_capacity(dm, flow):
    import uvicorn

    from datamoat.data import load_dataset
    from datamoat.registry.core import Registry, registry_url
    from datamoat.serve import ServeConfig, create_app
    from datamoat.workspace import Workspace

    ws = Workspace.open(flow["home"])
    reg = Registry(registry_url(ws))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(reg, ServeConfig(ort_threads=1, poll_interval_s=0.05)),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        load = dm(
            "loadtest",
            url,
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--token",
            flow["predict"],
            "--shape",
            "1,8,8",
        )
        assert load["requests"] > 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    (flow["tmp"] / "max.json").write_text(json.dumps(load))
    assert dm("capacity", "--sites", "10", "--rate", "1", "--from-loadtest", str(flow["tmp"] / "max.json"))

    x, y = load_dataset(ws, flow["data"]).subset("val")  # test images never train a candidate
    np.savez(flow["tmp"] / "fb.npz", x=x[:6], y=y[:6])
    assert dm("feedback", "import", str(flow["tmp"] / "fb.npz"), "--source", "lab")["imported"] == 6
    assert dm("feedback", "sync")
    assert dm("feedback", "gate", "--require-approval")
    held = [str(r["id"]) for r in dm("feedback", "review")["items"]]
    assert len(held) == 6
    assert dm("feedback", "accept", *held[:5], "--reason", "checked", "--token", flow["admin"])
    assert dm("feedback", "reject", held[5], "--reason", "smudged", "--token", flow["admin"])
    assert dm("feedback", "log")["decisions"]
    assert dm("retrain", "--from-feedback", "--epochs", "1", "--margin", "100")


@pytest.mark.slow
def test_pools(dm, flow):
    import uuid
    from types import SimpleNamespace

    from PIL import Image

    from datamoat.registry.answer_rows import input_hash, log_rows, review_rows
    from datamoat.registry.core import Registry, registry_url
    from datamoat.registry.ledger import write_predictions
    from datamoat.workspace import Workspace

    folder = flow["tmp"] / "site"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 10), 40 * i + 7, np.uint8)).save(folder / f"{i}.png")
    out = dm("data", "pool", str(folder), "--into", "digits")
    assert out["added"] == 3 and out["unlabeled"] == 3
    # One answer the review queue kept, with its pixels, as a server logs it.
    reg = Registry(registry_url(Workspace.open(flow["home"])))
    state = SimpleNamespace(alias="production", generation=1, model=SimpleNamespace(version_id=flow["v1"]))
    x = np.full((1, 1, 8, 8), 200.0, np.float32)
    answer = {"prediction_id": str(uuid.uuid4()), "label": None, "abstained": True, "needs_review": True}
    answer.update(reason="abstained", top_k=[{"label": "0", "probability": 0.2}])
    write_predictions(
        reg.engine, log_rows(state, "s1", [answer], [input_hash(x[0])]), review_rows(state, [answer], x), 9
    )
    out = dm("data", "pool", "--from-log", "--like", "small", "--status", "all")
    assert out["added"] >= 1 and out["log"]["with_pixels"] >= 1


@pytest.mark.slow
def test_levers(dm, flow):
    issues = flow["tmp"] / "issues.json"
    assert dm("data", "issues", "digits", "--folds", "2", "--epochs", "1", "--arch", "mlp", "-o", str(issues))
    fixed = dm("data", "fix", "digits", "--from", str(issues), "--name", "digits-fixed")["dataset_id"]
    assert dm("data", "diff", flow["data"], fixed)
    assert dm("tune", "--data", "digits", "--trials", "1", "--archs", "mlp", "--epochs-max", "2")
    assert dm("improve", "--data", "digits", "--budget-minutes", "0.2", "--arch", "mlp", "--epochs", "1")


@pytest.mark.slow
def test_label(dm, flow):
    from datamoat.data import load_dataset
    from datamoat.data.pool import with_pool
    from datamoat.workspace import Workspace

    ws = Workspace.open(flow["home"])
    d = load_dataset(ws, flow["data"])
    x, y = d.subset("train")
    pool = with_pool(ws, d, np.array(x[:60]), name="label-pool")  # 60 of its train images again, unlabeled
    np.save(flow["tmp"] / "truth.npy", np.concatenate([d.y, y[:60]]))
    assert len(dm("label", "suggest", pool.id, "--model", "small", "--budget", "3")["queued"]) == 3
    assert dm("label", "apply", pool.id)["waiting"] == {"open": 3}
    truth = str(flow["tmp"] / "truth.npy")
    out = dm("label", "loop", pool.id, "--arch", "mlp", "--budget", "5", "--epochs", "1", "--oracle-labels", truth)
    assert out["rounds"][0]["added"] == 5


def test_plan_json(dm):
    # Real measurements: loadtest outputs of one replica (copied from bench/results/serving.json) and the
    # edge benchmark's and compress benchmark's results, with the README's spec.
    root = Path(__file__).resolve().parents[1]
    out = dm(
        "plan", str(root / "docs/plan/spec.json"),
        "--loadtest", str(root / "docs/plan/loadtest-max.json"), "--loadtest", str(root / "docs/plan/loadtest-rate.json"),
        "--edge-bench", str(root / "bench/results/edge.json"), "--candidates", str(root / "bench/results/compression.json"),
        "--max-sites", "20",
    )  # fmt: skip
    assert out["recommendation"] in out["options"] and len(out["curve"]["sites"]) == 20


@pytest.mark.slow
def test_pretrain_and_semisupervised_train(dm, flow):
    from datamoat.data import load_dataset
    from datamoat.data.pool import make_pool
    from datamoat.workspace import Workspace

    ws = Workspace.open(flow["home"])
    digits = load_dataset(ws, "digits")
    pool = make_pool(
        ws, np.asarray(digits.x[:200]), digits.classes, name="json-pool", source={}, preprocess=digits.preprocess
    )
    pre = dm("pretrain", pool.id, "--arch", "cnn_small", "--epochs", "1")
    out = dm("train", "--data", "digits", "--arch", "cnn_small", "--epochs", "1", "--name", "semi",
             "--weights", pre["ref"], "--unlabeled", pool.id, "--threshold", "0.9")  # fmt: skip
    assert out["pretrained"]["pretrain"]["run_id"] == pre["run_id"] and out["semisup"]["threshold"] == 0.9


def test_every_json_command_ran():
    missing = json_commands() - RAN
    assert not missing, f"commands with --json that test_cli_json.py does not run: {sorted(missing)}"
