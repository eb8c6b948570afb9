"""tune: an Optuna study over hyperparameters and architecture, stored in the workspace or a shared database."""

import json

import optuna
import pytest
from dmtest import dm

from datamoat.errors import BadInput
from datamoat.models import load_model
from datamoat.train.tune import TuneConfig, arch_overrides, tune

SMALL = {"archs": ("mlp", "cnn_small"), "epochs_min": 1, "epochs_max": 2, "depth_max": 2, "threads": 1}


def test_tune_returns_best_config_and_saves_model(ws, digits):
    res = tune(ws, digits, TuneConfig(trials=3, **SMALL))
    assert set(res.best_params) == {"arch", "width", "depth", "lr", "epochs"}
    done = [t["val_accuracy"] for t in res.trials if t["state"] == "complete"]
    assert res.best_val_accuracy == max(done) > 0.5
    saved = load_model(ws, res.model.id)
    assert saved.config.arch == res.best_params["arch"]
    assert saved.lineage["tune"]["params"] == res.best_params
    assert saved.lineage["recipe"][-1]["type"] == "TuneConfig"
    assert (ws.root / "optuna.db").exists()
    # A second call joins the same study in the workspace database.
    again = tune(ws, digits, TuneConfig(trials=1, **SMALL))
    assert len(again.trials) == 4


def test_arch_overrides_build_every_searched_arch(digits):
    from datamoat.models import new_model

    for arch in ("mlp", "cnn_small", "cnn_medium", "cnn_large", "resnet"):
        for depth in (1, 3):
            m = new_model(arch, digits, **arch_overrides(arch, 0.5, depth))
            assert m.logits(digits.x[:2]).shape == (2, 10)


def test_clearly_bad_trial_is_pruned(ws, digits):
    cfg = TuneConfig(
        trials=3,
        archs=("cnn_small",),
        widths=(1.0,),
        depth_min=2,
        depth_max=2,
        epochs_min=3,
        epochs_max=3,
        lr_min=1e-7,
        lr_max=1e-2,
        startup_trials=2,
        threads=1,
    )
    good = {"arch": "cnn_small", "width": 1.0, "depth": 2, "epochs": 3, "lr": 5e-3}
    res = tune(ws, digits, cfg, enqueue=[good, {**good, "lr": 4e-3}, {**good, "lr": 1e-7}])
    states = [t["state"] for t in res.trials]
    assert states == ["complete", "complete", "pruned"]
    assert res.trials[2]["epochs_run"] < 3
    assert res.best_params["lr"] in (5e-3, 4e-3)


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, ws, digits):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    args = (
        "tune",
        "--data",
        "digits",
        "--trials",
        "3",
        "--storage",
        url,
        "--study",
        "s",
        "--archs",
        "mlp,cnn_small",
        "--epochs-max",
        "2",
        "--threads",
        "1",
        "--json",
    )
    procs = [dm(ws.root, *args, popen=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["study"] == "s"
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 6
    assert all(t.state.is_finished() for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2 and all(workers.count(w) == 3 for w in set(workers))


def test_bad_input():
    with pytest.raises(BadInput, match="trials must be at least 1"):
        TuneConfig(trials=0)
    with pytest.raises(BadInput, match="unknown storage URL scheme 'redis'"):
        TuneConfig(storage="redis://localhost/0")
    with pytest.raises(BadInput, match="unknown architecture"):
        TuneConfig(archs=("vgg",))
    TuneConfig(storage="postgresql+psycopg2://u:p@db.example/optuna")  # a shared database is a valid URL


@pytest.mark.parametrize(
    "args,message",
    [
        (("--trials", "0"), "trials must be at least 1"),
        (("--storage", "ftp://host/db"), "unknown storage URL scheme"),
    ],
)
@pytest.mark.slow
def test_cli_bad_input_is_one_line_exit_2(ws, digits, args, message):
    out, err = (p := dm(ws.root, "tune", "--data", "digits", *args, popen=True)).communicate(timeout=120)
    assert p.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
