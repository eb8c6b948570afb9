"""Shared fixtures: three tiny digits MLPs as registry versions, signing keys,
and a helper to make a fresh registry + fleet with them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from datamoat.data import import_digits
from datamoat.edge.keys import generate_keys, load_private_key
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry
from datamoat.registry.register import register_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> SimpleNamespace:
    """ONNX bytes and info of three small trained MLPs, plus digits test images."""
    root = tmp_path_factory.mktemp("edge")
    ws = Workspace.init(root / "ws")
    ds = import_digits(ws)
    template = Registry(f"sqlite:///{root / 'template.db'}")
    versions = []
    for seed in (0, 1, 2):
        m = train(new_model("mlp", ds, seed=seed), ds, TrainConfig(epochs=2, seed=seed, threads=1), progress=False)
        m = save_model(ws, m, name=f"mlp-seed{seed}")
        row = template.version(register_model(ws, template, m.id, actor="test"))
        versions.append(SimpleNamespace(data=template.artifact(row["onnx_sha"]), name=row["name"], info=row["info"]))
    keys = {}
    for name in ("release", "rotated", "rogue", "control"):
        paths = generate_keys(root / "keys" / f"{name}.pem")
        keys[name] = SimpleNamespace(
            private=load_private_key(paths["private"]),
            path=paths["private"],
            public=paths["public"],
            key_id=paths["key_id"],
        )
    return SimpleNamespace(ws=ws, x=ds.subset("test")[0][:20], versions=versions, keys=keys)


@pytest.fixture
def fleet_env(tmp_path: Path, models) -> SimpleNamespace:
    """A fresh registry DB with v1..v3 registered, and a `Fleet` over it."""
    from datamoat.edge.fleet import Fleet

    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    vids = [reg.register(v.data, name=v.name, kind="fp32", info=v.info, actor="test") for v in models.versions]
    return SimpleNamespace(
        reg=reg, fleet=Fleet(reg, models.keys["control"].private), v=vids, keys=models.keys, x=models.x, tmp=tmp_path
    )
