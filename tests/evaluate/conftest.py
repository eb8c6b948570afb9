"""The small trained models the evaluation tests share."""

import pytest

from datamoat.data import import_digits
from datamoat.models import new_model, save_model
from datamoat.train import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ws = Workspace.init(tmp_path_factory.mktemp("ws"))
    ds = import_digits(ws)
    model = train(new_model("mlp", ds), ds, TrainConfig(epochs=2, threads=1), progress=False)
    return ws, ds, save_model(ws, model, name="digits-mlp")


@pytest.fixture(scope="module")
def photo_model(photo_world):
    """A tiny CNN trained one epoch on the rendered photos (streamed from their shards)."""
    ds = photo_world.ds
    cfg = TrainConfig(epochs=1, batch_size=16, threads=1, workers=0, patience=0)
    return train(new_model("cnn_small", ds), ds, cfg, progress=False)
