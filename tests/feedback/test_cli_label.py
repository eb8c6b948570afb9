"""`datamoat label suggest / apply / loop` through the real entry point (in-process), with the
acceptance's bad inputs: each a one-line error and exit code 2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from dmtest import dm_main

from datamoat.data import import_digits
from datamoat.data.pool import make_pool, with_pool
from datamoat.models import new_model, save_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("label")
    ws = Workspace.init(root / "ws")
    d = import_digits(ws)
    model = save_model(ws, train(new_model("mlp", d), d, TrainConfig(epochs=1, threads=1), progress=False), name="m")
    x_tr, y_tr = d.subset("train")
    pool = with_pool(ws, d, np.array(x_tr[:200]), name="pool")
    truth = np.concatenate([d.y, y_tr[:200]])
    np.save(root / "truth.npy", truth)
    rgb = np.random.default_rng(0).integers(0, 255, (20, 3, 16, 16), dtype=np.uint8)
    make_pool(ws, rgb, d.classes, name="rgb-pool", source={"kind": "test"})
    return SimpleNamespace(
        root=root, ws=ws, model=model, truth=root / "truth.npy", pool=pool.id, reg=f"sqlite:///{root / 'reg.db'}"
    )


def run(monkeypatch, capsys, home, *args):
    return dm_main(monkeypatch, capsys, home.ws.root, *args, "--registry", home.reg)


def test_suggest_apply_and_loop(monkeypatch, capsys, home):
    code, out, err = run(monkeypatch, capsys, home, "label", "suggest", "pool", "--model", "m", "--budget", "3",
                         "--strategy", "kcenter", "--json")  # fmt: skip
    assert code == 0, err
    sug = json.loads(out)
    assert len(sug["queued"]) == 3 and sug["strategy"] == "kcenter" and sug["unlabeled"] == 200
    code, out, err = run(monkeypatch, capsys, home, "label", "apply", "pool", "--json")
    assert code == 0 and json.loads(out)["waiting"] == {"open": 3} and json.loads(out)["applied"] == 0
    code, out, err = run(monkeypatch, capsys, home, "label", "loop", "pool", "--arch", "mlp", "--budget", "10",
                         "--rounds", "2", "--epochs", "2", "--oracle-labels", str(home.truth), "--json")  # fmt: skip
    assert code == 0, err
    loop = json.loads(out)
    first, second = loop["rounds"]
    assert (first["added"], second["added"], second["labels"] - first["labels"]) == (10, 10, 10)
    assert all(r["test_accuracy"] is not None for r in loop["rounds"]) and not loop["waiting"]
    code, out, _ = run(monkeypatch, capsys, home, "label", "suggest", "pool", "--model", "m", "--budget", "2")
    assert code == 0 and "queued 2 of 180 unlabeled item(s)" in out and "3 already there" in out  # the newest "pool"


@pytest.mark.parametrize(
    "args, message",
    [
        (("suggest", "digits", "--model", "m"), "has no unlabeled items"),
        (("suggest", "POOL", "--model", "m", "--budget", "201"), "budget 201 is larger than the 200 unlabeled items"),
        (("suggest", "pool", "--model", "m", "--strategy", "uncertainty"), "unknown strategy 'uncertainty'"),
        (("suggest", "rgb-pool", "--model", "m", "--budget", "2"), "model expects inputs (1, 8, 8)"),
        (("loop", "rgb-pool", "--model", "m", "--budget", "2"), "model expects inputs (1, 8, 8)"),
        (("loop", "pool", "--arch", "mlp", "--budget", "2", "--oracle-labels", "WRONG"), "one integer class per"),
        (("loop", "pool", "--budget", "2"), "an architecture (--arch) or a model (--model)"),
    ],
)
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, home, args, message):
    np.save(home.root / "wrong.npy", np.zeros(5, np.int64))
    files = {"WRONG": str(home.root / "wrong.npy"), "POOL": home.pool}  # POOL: unlabelled 200
    args = [files.get(a, a) for a in args]
    code, out, err = run(monkeypatch, capsys, home, "label", *args)
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
