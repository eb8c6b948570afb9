"""The CLI as a user runs it: real subprocesses, exit codes and JSON output."""

import gzip
import json
import subprocess
import sys

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
        "tiny synth photos": (
            ["data", "synth", str(tmp_path / "syn"), "--source", "digits", "--min-side", "8"],
            "min_side must be at least 16 pixels, got 8",
        ),
        "negative read-ahead": (
            ["data", "import-photos", str(tmp_path / "folder"), "--read-ahead", "-1"],
            "read_ahead must be in [0, 65536] files, got -1",
        ),
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


# -- option defaults come from the configs -----------------------------------------


def _parsed(command, *args):
    """The values `command` ("train", "data render") receives for `args`: every option left out takes its default."""
    import typer.main

    from datamoat.cli import app

    cmd = typer.main.get_command(app)
    for name in command.split():
        cmd = cmd.commands[name]
    return cmd.make_context(command, list(args)).params


def test_cli_import_reads_no_config_module():
    # Defaults are read from the configs only when needed: `datamoat --help` does not import torch.
    code = (
        "import sys, typer.main; from datamoat.cli import app; typer.main.get_command(app); "
        "print(sorted(m for m in ('torch', 'datamoat.train.loop', 'datamoat.compress.recipe') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_defaults_are_train_configs():
    from datamoat.models import ModelConfig
    from datamoat.train.loop import TrainConfig

    p = _parsed("train")
    fields = ("epochs", "batch_size", "optimizer", "lr", "schedule", "augment", "patience", "seed", "threads")
    assert {f: p[f] for f in fields} == {f: getattr(TrainConfig(), f) for f in fields}
    assert p["arch"] == ModelConfig().arch


def test_distill_defaults_are_distill_configs():
    from datamoat.compress.distill import DistillConfig

    p = _parsed("distill", "teacher", "--arch", "mlp")
    train = {k: p[k] for k in ("epochs", "augment", "lr", "max_train_samples", "seed")}
    assert DistillConfig(temperature=p["temperature"], alpha=p["alpha"], train=train) == DistillConfig()


def test_prune_export_and_quantize_defaults_are_their_configs():
    from datamoat.compress.export import ExportConfig
    from datamoat.compress.prune import FinetuneConfig, MagnitudeConfig, StructuredConfig
    from datamoat.compress.quantize import QuantizeConfig

    p = _parsed("prune", "m")
    assert (
        MagnitudeConfig(sparsity=p["sparsity"], steps=p["steps"], finetune={"epochs": p["epochs"]}) == MagnitudeConfig()
    )
    assert StructuredConfig(ratio=p["ratio"], norm=p["norm"], finetune={"epochs": p["epochs"]}) == StructuredConfig()
    assert p["epochs"] == FinetuneConfig().epochs
    assert _parsed("export", "m")["opset"] == ExportConfig().opset
    p = _parsed("quantize", "m")
    cfg = QuantizeConfig(method=p["method"], calibration=p["calibration"], max_accuracy_drop=p["max_accuracy_drop"])
    assert cfg == QuantizeConfig()


def test_data_render_defaults_are_the_photo_transform():
    from datamoat.data.photo_transforms import PhotoTransformConfig

    p = _parsed("data render", "photos")
    d = PhotoTransformConfig()
    fields = ("resize", "crop_fraction", "brightness", "contrast", "saturation", "hue", "auto_augment")
    assert {f: p[f] for f in fields} == {f: getattr(d, f) for f in fields} and p["scale_min"] == d.scale[0]


def test_data_render_records_the_training_augmentation(photo_world, tmp_path, monkeypatch, capsys):
    import shutil

    from dmtest import dm_main

    home = tmp_path / "ws"
    dm_main(monkeypatch, capsys, None, "init", home)

    def run(*args):
        code, out, err = dm_main(monkeypatch, capsys, home, *args)
        assert code == 0, err
        return json.loads(out)

    photos = run("data", "import-photos", shutil.copytree(photo_world.folder, tmp_path / "photos"), "--json")
    args = ("--size", "16", "--workers", "0", "--auto-augment", "trivialaugment", "--hue", "0.1", "--scale-min", "0.3")
    t = run("data", "render", photos["id"], *args, "--json")["transform"]
    assert (t["auto_augment"], t["hue"], t["scale"], t["size"]) == ("trivialaugment", 0.1, [0.3, 1.0], [16, 16])
    code, _, err = dm_main(monkeypatch, capsys, home, "data", "render", photos["id"], "--auto-augment", "autoaugment")
    assert code == 2 and "unknown auto_augment 'autoaugment'" in err


def _recipe(*args):
    from datamoat.cli.compress import recipe_from_options

    p = _parsed("compress", "teacher", *args)
    steps = {s: p.pop(s) for s in ("distill", "structured", "unstructured", "quantize")}
    p.pop("model"), p.pop("as_json")
    return recipe_from_options(steps=steps, **p)


def test_compress_defaults_are_the_recipes():
    from datamoat.compress.recipe import CompressConfig

    assert _recipe() == CompressConfig()
    got = _recipe("--unstructured", "--no-quantize", "--distill-epochs", "2", "--seed", "3", "--max-size-kb", "40")
    want = CompressConfig(max_size_kb=40, unstructured={}, quantize=None).replace(distill__train__epochs=2)
    assert got == want.with_seed(3)
    # A skipped step's options are ignored, as they were when the recipe was flat.
    assert _recipe("--no-distill", "--distill-epochs", "2").distill is None
    on_cpu = _recipe("--unstructured", "--device", "cpu")
    trains = (on_cpu.distill.train, on_cpu.structured.finetune, on_cpu.unstructured.finetune)
    assert [t.device for t in trains] == ["cpu"] * 3


def test_help_shows_the_config_defaults():
    from typer.testing import CliRunner

    from datamoat.cli import app

    out = " ".join(CliRunner().invoke(app, ["compress", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "Student epochs. [default: 16]" in out and "[default: no-unstructured]" in out


def test_an_error_quoting_brackets_prints_them_literally(tmp_path, monkeypatch, capsys):
    from dmtest import dm_main

    home = tmp_path / "ws"
    dm_main(monkeypatch, capsys, None, "init", home)
    code, _, err = dm_main(monkeypatch, capsys, home, "data", "show", "[@rev]/x[bold]")
    assert code == 2 and "'[@rev]/x[bold]'" in err  # rich markup would have eaten both
