"""Reference profiles: recorded at promote, read back from the registry, audited, and used by
`datamoat drift` to test a dataset window by window."""

import json

import numpy as np
import pytest
from dmtest import dm, dm_ok

from datamoat.data import SPLITS, import_digits, load_dataset, make_dataset
from datamoat.errors import BadInput
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry, registry_url
from datamoat.registry.register import profile_version, register_model
from datamoat.train import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    ws = Workspace.init(home)
    ds = import_digits(ws)
    model = save_model(ws, train(new_model("mlp", ds), ds, TrainConfig(epochs=3, threads=1), progress=False), name="m")
    # The same digits, darker and flatter: a shifted copy with its own id and the same splits.
    dim = (ds.x.astype(np.float32) * 0.5 + 20).astype(np.uint8)
    shifted = make_dataset(ws, dim, ds.y, ds.classes, name="dim", source={"kind": "test"}, split=ds.split)
    return home, ws, ds, model, shifted


def test_promote_records_the_profile_and_audits_it(world):
    home, ws, ds, model, _ = world
    out = json.loads(dm_ok(home, "promote", model.id, "--alias", "production", "--json").stdout)
    reg = Registry(registry_url(ws))
    prof = reg.profile(out["version"])
    assert prof["version_id"] == out["version"] and prof["dataset_id"] == ds.id
    assert prof["n"] == int((ds.split == SPLITS["val"]).sum()) and len(prof["sketches"]) == min(500, prof["n"])
    assert [e["action"] for e in reg.audit_log()].count("profile") == 1
    # Promoting it again keeps the recorded profile: no second audit entry.
    dm_ok(home, "promote", out["version"], "--alias", "staging")
    assert [e["action"] for e in reg.audit_log()].count("profile") == 1


def test_drift_is_quiet_on_the_test_split_and_alarms_on_a_shifted_copy(world):
    home, ws, ds, model, shifted = world
    reg = Registry(registry_url(ws))
    vid = register_model(ws, reg, model.id, actor="test")
    if reg.profile(vid) is None:
        profile_version(ws, reg, vid, actor="test")
    same = json.loads(dm_ok(home, "drift", vid, "--data", ds.id, "--window", "200", "--json").stdout)
    assert same["alarms"] == 0 and len(same["windows"]) >= 2
    assert abs(same["estimate"] - same["accuracy"]) < 0.08  # ATC beside the measured accuracy
    moved = json.loads(dm_ok(home, "drift", vid, "--data", shifted.id, "--window", "200", "--json").stdout)
    assert moved["alarms"] == len(moved["windows"]) and moved["first_alarm_at"] == 200
    assert "brightness KS" in moved["windows"][0]["fired"]


def test_drift_without_a_profile_or_on_a_bad_split_exits_2(world):
    home, ws, ds, model, _ = world
    dm_ok(home, "promote", model.id, "--alias", "bare", "--no-profile")
    reg = Registry(registry_url(ws))
    bare = reg.register(
        reg.artifact(reg.version(model.name)["onnx_sha"]),
        name="copy",
        kind="fp32",
        info={**reg.version(model.name)["info"], "note": "copy"},
        actor="test",
    )
    r = dm(home, "drift", bare, "--data", ds.id)
    assert r.returncode == 2 and "no reference profile" in r.stderr and "registry profile" in r.stderr
    r = dm(home, "drift", reg.version(model.name)["id"], "--data", ds.id, "--split", "nope")
    assert r.returncode == 2 and "unknown split" in r.stderr


def test_a_profile_needs_a_val_split_and_matches_its_version(world):
    _, ws, ds, model, _ = world
    reg = Registry(registry_url(ws))
    vid = register_model(ws, reg, model.id, actor="test")
    no_val = make_dataset(
        ws, ds.x, ds.y, ds.classes, name="noval", source={"kind": "test"}, split=np.where(ds.split == 1, 0, ds.split)
    )
    with pytest.raises(BadInput, match="no val split"):
        profile_version(ws, reg, vid, actor="test", data=no_val.id)
    prof = reg.profile(vid) or profile_version(ws, reg, vid, actor="test")
    other = reg.register(reg.artifact(reg.version(vid)["onnx_sha"]), name="x", kind="fp32",
                         info={**reg.version(vid)["info"], "note": "other"}, actor="test")  # fmt: skip
    with pytest.raises(BadInput, match="made for version"):
        reg.set_profile(other, prof, actor="test")
    assert load_dataset(ws, ds.id).id == ds.id  # nothing stored was changed
