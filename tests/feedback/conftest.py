"""One tiny trained digits MLP, saved in a workspace and exported once per
module; each test gets a fresh registry with it registered as production."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from datamoat.data import import_digits
from datamoat.feedback import Quarantine, production_scorer
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry, registry_url
from datamoat.registry.register import register_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="package")
def trained(tmp_path_factory) -> SimpleNamespace:
    ws = Workspace.init(tmp_path_factory.mktemp("feedback") / "ws")
    ds = import_digits(ws)
    model = train(new_model("mlp", ds), ds, TrainConfig(epochs=6, threads=1, patience=0), progress=False)
    model = save_model(ws, model, name="mlp-digits")
    reg = Registry(registry_url(ws))  # the workspace's own registry: the CLI test uses it
    vid = register_model(ws, reg, model.id, actor="test")
    reg.promote(vid, "production", actor="test")
    row = reg.version(vid)
    x, y = ds.subset("test")
    classes, score = production_scorer(Quarantine(reg))
    pred = score(x).argmax(1)
    return SimpleNamespace(
        ws=ws,
        ds=ds,
        model=model,
        vid=vid,
        onnx=reg.artifact(row["onnx_sha"]),
        row=row,
        x=x,
        y=y,
        right=np.flatnonzero(pred == y),
        scorer=(classes, score),
    )


@pytest.fixture
def q(tmp_path: Path, trained) -> Quarantine:
    """A fresh registry (production -> the trained MLP) and its quarantine."""
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    vid = reg.register(trained.onnx, name="mlp-digits", kind="fp32", info=trained.row["info"], actor="test")
    reg.promote(vid, "production", actor="test")
    return Quarantine(reg)
