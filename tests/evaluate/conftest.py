"""A small trained model the evaluation tests share."""

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
