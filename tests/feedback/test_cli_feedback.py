"""The feedback commands through the real entry point (in-process: fast),
with its exit codes: 0 on success, 2 on a user error."""

import json

import numpy as np
import pytest
from dmtest import dm_main


def test_import_gate_review_decide_retrain(monkeypatch, capsys, tmp_path, trained):
    home = trained.ws.root
    x, y = trained.ds.subset("train")
    np.savez(tmp_path / "fb.npz", x=x[100:106], y=y[100:106])
    code, out, _ = dm_main(
        monkeypatch, capsys, home, "feedback", "import", str(tmp_path / "fb.npz"), "--source", "v", "--json"
    )
    assert code == 0 and json.loads(out)["imported"] == 6
    code, _, err = dm_main(monkeypatch, capsys, home, "feedback", "import", str(tmp_path / "fb.npz"), "--source", "v")
    assert code == 2 and "already sent feedback" in err
    np.savez(tmp_path / "cat.npz", x=x[:1], y=np.array(["cat"]))
    code, _, err = dm_main(monkeypatch, capsys, home, "feedback", "import", str(tmp_path / "cat.npz"), "--source", "w")
    assert code == 2 and "not one of the model's classes" in err

    code, out, _ = dm_main(monkeypatch, capsys, home, "feedback", "gate", "--require-approval", "--json")
    assert code == 0 and json.loads(out)["counts"] == {"held": 6}
    code, out, _ = dm_main(monkeypatch, capsys, home, "feedback", "review", "--json")
    held = json.loads(out)["items"]
    assert [r["reasons"] for r in held] == [["awaiting human approval"]] * 6
    ids = [str(r["id"]) for r in held]
    assert dm_main(monkeypatch, capsys, home, "feedback", "accept", *ids[:5], "--reason", "looked")[0] == 0
    assert dm_main(monkeypatch, capsys, home, "feedback", "reject", ids[5], "--reason", "smudged")[0] == 0
    code, _, err = dm_main(monkeypatch, capsys, home, "feedback", "accept", "9999")
    assert code == 2 and "unknown feedback item" in err
    code, out, _ = dm_main(monkeypatch, capsys, home, "feedback", "log", "--json")
    log = json.loads(out)["decisions"]
    assert [e["decision"] for e in log[-6:]] == ["accepted"] * 5 + ["rejected"] and "smudged" in log[-1]["reason"]

    assert "--from-feedback" in dm_main(monkeypatch, capsys, home, "retrain")[2]
    code, out, _ = dm_main(monkeypatch, capsys, home, "retrain", "--from-feedback", "--margin", "100", "--epochs", "1")
    assert code == 0 and "not registered: gain" in out and "candidate:" in out


def test_import_a_folder_of_class_subfolders(monkeypatch, capsys, tmp_path, trained):
    from PIL import Image

    from datamoat.feedback import Quarantine
    from datamoat.registry.core import Registry, registry_url

    for k in (0, 1):
        (tmp_path / "imgs" / str(trained.y[k])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(trained.x[k][0]).save(tmp_path / "imgs" / str(trained.y[k]) / f"{k}.png")
    code, out, _ = dm_main(
        monkeypatch,
        capsys,
        trained.ws.root,
        "feedback",
        "import",
        str(tmp_path / "imgs"),
        "--source",
        "folder",
        "--json",
    )
    ids = json.loads(out)["ids"]
    q = Quarantine(Registry(registry_url(trained.ws)))
    items = {r["id"]: r for r in q.items(ids=ids)}
    pix = q.pixels(ids)
    assert code == 0 and len(ids) == 2
    assert sorted(items[i]["label"] for i in ids) == sorted(str(v) for v in trained.y[:2])
    assert sorted(pix[i].tobytes() for i in ids) == sorted(trained.x[k].tobytes() for k in (0, 1))


@pytest.mark.parametrize("bad", ["nofile.npz", "dir"])
def test_import_of_a_missing_or_empty_path_exits_2(monkeypatch, capsys, tmp_path, trained, bad):
    (tmp_path / "dir").mkdir()
    code, _, err = dm_main(
        monkeypatch, capsys, trained.ws.root, "feedback", "import", str(tmp_path / bad), "--source", "s"
    )
    assert code == 2 and err.startswith("error:")
