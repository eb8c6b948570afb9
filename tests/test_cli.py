"""The CLI as a user runs it: real subprocesses, exit codes and JSON output."""

import gzip
import json

import numpy as np
import pytest
from dmtest import dm, dm_ok, write_idx


def catalog_counts(home):
    import sqlite3

    conn = sqlite3.connect(home / "catalog.db")
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("datasets", "models", "runs")}


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "ws"
    dm_ok(home, "init")
    return home


@pytest.mark.slow
def test_import_train_and_list_json(home):
    out = json.loads(dm_ok(home, "data", "import", "digits", "--json").stdout)
    assert out["dataset_id"] and out["samples"] == 1797
    again = json.loads(dm_ok(home, "data", "import", "digits", "--json").stdout)
    assert again["dataset_id"] == out["dataset_id"]
    tr = json.loads(
        dm_ok(home, "train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--threads", "1", "--json").stdout
    )
    assert tr["dataset_id"] == out["dataset_id"] and 0.5 < tr["val_accuracy"] <= 1 and len(tr["curve"]) == 2
    models = json.loads(dm_ok(home, "models", "list", "--json").stdout)["models"]
    assert [m["id"] for m in models] == [tr["model_id"]]
    shown = json.loads(dm_ok(home, "models", "show", tr["model_id"][:6], "--json").stdout)
    assert shown["config"]["arch"] == "mlp" and shown["lineage"]["dataset_id"] == out["dataset_id"]
    assert "train" in json.loads(dm_ok(home, "data", "show", "digits", "--json").stdout)["splits"]


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line_and_leave_catalog_untouched(home, tmp_path):
    dm_ok(home, "data", "import", "digits")
    before = catalog_counts(home)
    rng = np.random.default_rng(0)
    imgs = write_idx(tmp_path / "imgs", rng.integers(0, 255, (30, 4, 4)))
    labels = write_idx(tmp_path / "labels", np.arange(30) % 3)
    truncated = tmp_path / "trunc"
    truncated.write_bytes(imgs.read_bytes()[:-7])
    corrupt_gz = tmp_path / "corrupt.gz"
    corrupt_gz.write_bytes(gzip.compress(imgs.read_bytes())[:40])
    single = write_idx(tmp_path / "single", np.zeros(30))
    img_dir = tmp_path / "folder" / "cls"
    img_dir.mkdir(parents=True)
    (img_dir / "a.png").write_bytes(b"not a png at all")
    cases = {
        "missing path": (["data", "import", str(tmp_path / "nope")], "does not exist"),
        "truncated IDX": (["data", "import", str(truncated), "--labels", str(labels)], "truncated or corrupt"),
        "corrupt gzip": (["data", "import", str(corrupt_gz), "--labels", str(labels)], "corrupt gzip"),
        "corrupt image": (["data", "import", str(tmp_path / "folder")], "truncated or corrupt"),
        "single class": (["data", "import", str(imgs), "--labels", str(single)], "single class"),
        "labels out of range": (
            ["data", "import", str(imgs), "--labels", str(labels), "--classes", "a,b"],
            "out of range",
        ),
        "unknown arch": (["train", "--data", "digits", "--arch", "vit"], "unknown architecture 'vit'"),
        "unknown dataset": (["train", "--data", "nosuchdata"], "unknown dataset 'nosuchdata'"),
        "unknown model": (["models", "show", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    }
    for case, (args, needle) in cases.items():
        proc = dm(home, *args)
        assert proc.returncode == 2, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (case, proc.stderr)
    assert catalog_counts(home) == before


@pytest.mark.slow
def test_missing_workspace_says_how_to_fix(tmp_path):
    proc = dm(tmp_path / "none", "data", "list")
    assert proc.returncode == 2 and "datamoat init" in proc.stderr
