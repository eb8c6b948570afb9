"""Shared fixtures for the attacks: signing keys and a registry with one tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from datamoat.data import import_digits
from datamoat.edge.keys import generate_keys, load_private_key
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry, registry_url
from datamoat.registry.register import register_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="package")
def world(tmp_path_factory) -> SimpleNamespace:
    """A workspace with digits, one trained MLP registered as production, and keys."""
    root = tmp_path_factory.mktemp("adv")
    ws = Workspace.init(root / "ws")
    ds = import_digits(ws)
    model = save_model(ws, train(new_model("mlp", ds), ds, TrainConfig(epochs=3, threads=1), progress=False))
    reg = Registry(registry_url(ws))
    vid = register_model(ws, reg, model.id, actor="test")
    reg.promote(vid, "production", actor="test")
    keys = generate_keys(root / "keys" / "release.pem")
    return SimpleNamespace(
        root=root,
        ws=ws,
        ds=ds,
        reg=reg,
        vid=vid,
        key=load_private_key(keys["private"]),
        pub=keys["public"],
        x=ds.subset("test")[0],
    )


@pytest.fixture
def fresh(world, tmp_path) -> SimpleNamespace:
    """A registry of the test's own holding the world's model as version `vid`, promoted to production."""
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    row = world.reg.version(world.vid)
    vid = reg.register(world.reg.artifact(row["onnx_sha"]), name="m", kind="fp32", info=row["info"], actor="t")
    reg.promote(vid, "production", actor="t")
    return SimpleNamespace(reg=reg, vid=vid)
