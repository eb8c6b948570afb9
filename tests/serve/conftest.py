"""Shared fixtures: two tiny trained digits MLPs as registry versions, and a
helper that runs an app (with its lifespan) in-process over ASGI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from datamoat.data import import_digits
from datamoat.inference.engine import softmax
from datamoat.models import load_model, new_model, save_model
from datamoat.registry.core import Registry
from datamoat.registry.register import register_model
from datamoat.serve import ServeConfig, create_app
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

from .serve_util import Live


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> SimpleNamespace:
    """Two trained models exported once per session: ONNX bytes, info, and
    reference probabilities from PyTorch (`Model.logits`) on test images."""
    ws = Workspace.init(tmp_path_factory.mktemp("serve") / "ws")
    ds = import_digits(ws)
    x = ds.subset("test")[0][:40]  # (40, 1, 8, 8) uint8
    template = Registry(f"sqlite:///{ws.root / 'template.db'}")
    versions = []
    for seed, epochs in ((0, 5), (1, 3)):  # confident enough that ONNX and PyTorch agree on argmax
        model = train(
            new_model("mlp", ds, seed=seed), ds, TrainConfig(epochs=epochs, seed=seed, threads=1), progress=False
        )
        model = save_model(ws, model, name=f"mlp-seed{seed}")
        vid = register_model(ws, template, model.id, actor="test")
        row = template.version(vid)
        ref = softmax(load_model(ws, model.id).logits(x))  # (40, 10)
        versions.append(
            SimpleNamespace(data=template.artifact(row["onnx_sha"]), name=row["name"], info=row["info"], ref=ref)
        )
    return SimpleNamespace(ws=ws, x=x, versions=versions)


@pytest.fixture
def reg(tmp_path: Path, artifacts) -> SimpleNamespace:
    """A fresh registry: v1 and v2 registered, production -> v1, and tokens."""
    r = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    v1, v2 = (r.register(v.data, name=v.name, kind="fp32", info=v.info, actor="test") for v in artifacts.versions)
    r.promote(v1, "production", actor="test")
    tokens = {role: r.create_token(role, f"{role}-bot", actor="test") for role in ("predict", "admin", "review")}
    return SimpleNamespace(
        r=r, v1=v1, v2=v2, tokens=tokens, ref={v1: artifacts.versions[0].ref, v2: artifacts.versions[1].ref}
    )


@pytest.fixture
def live(reg):
    """`make(**config)` starts an app on `reg` (closed at teardown)."""
    opened = []

    def make(**overrides) -> Live:
        # /v1/model and /metrics open: these tests read them for other facts (test_l6_* checks them closed).
        cfg = ServeConfig(
            **{
                "poll_interval_s": 0.02,
                "heartbeat_s": 0.5,
                "ort_threads": 1,
                "open_paths": ("/v1/model", "/metrics"),
                **overrides,
            }
        )
        srv = Live(create_app(reg.r, cfg)).__enter__()
        opened.append(srv)
        return srv

    yield make
    for srv in reversed(opened):
        srv.__exit__(None, None, None)
