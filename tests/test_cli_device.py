"""--device on every command that runs a model in PyTorch: a device this machine lacks is one line and
exit 2 before any work, and the device chosen reaches the config that is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from dmtest import dm_main

# Each command with the least it needs to parse; the device is checked before the workspace is opened.
TORCH_COMMANDS = {
    "train": ["train", "--data", "d"],
    "pretrain": ["pretrain", "d"],
    "eval": ["eval", "m"],
    "predict": ["predict", "d", "--model", "m", "--output", "p.parquet"],
    "distill": ["distill", "m", "--arch", "mlp"],
    "prune": ["prune", "m"],
    "data issues": ["data", "issues", "d"],
    "tune": ["tune", "--data", "d"],
    "improve": ["improve", "--data", "d", "--budget-minutes", "1"],
    "compress": ["compress", "m"],
    "poc": ["poc", "m", "--target-accuracy", "0.9"],
    "label suggest": ["label", "suggest", "d", "--model", "m"],
    "label loop": ["label", "loop", "d", "--arch", "mlp"],
}


def test_every_command_that_runs_a_model_has_device_and_no_other_does():
    """A new command that trains or scores must join the list above (and so this file's checks)."""
    import typer

    from datamoat.cli import app

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        elif any("--device" in getattr(p, "opts", ()) for p in cmd.params):
            yield " ".join(path)

    with_device = set(walk(typer.main.get_command(app), []))
    # data pool's --device names an edge device (whose uploads it takes), serve's ONNX Runtime's provider
    # (tests/inference/test_hardware.py), neither a torch device.
    assert with_device - {"data pool", "serve"} == set(TORCH_COMMANDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("name", sorted(TORCH_COMMANDS))
def test_a_device_this_machine_lacks_is_one_line_and_exit_2_before_any_work(name, tmp_path, monkeypatch, capfd):
    home = tmp_path / "ws"  # never created: the device is refused first
    code, out, err = dm_main(monkeypatch, capfd, home, *TORCH_COMMANDS[name], "--device", "cuda", "--json")
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (name, out, err)
    assert len(lines) == 1 and "--device cuda: no CUDA GPU is visible" in lines[0], (name, err)
    assert not home.exists()


@pytest.mark.parametrize("name", ["distill", "data issues", "tune", "poc"])
def test_an_unknown_device_is_refused_naming_the_choices(name, tmp_path, monkeypatch, capfd):
    code, _, err = dm_main(monkeypatch, capfd, tmp_path / "ws", *TORCH_COMMANDS[name], "--device", "tpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "tpu" in lines[0] and "cpu" in lines[0], err


@pytest.mark.slow
def test_the_device_reaches_the_recorded_configs(tmp_path, monkeypatch, capfd):
    home = tmp_path / "ws"

    def dm(*args: str) -> dict:
        code, out, err = dm_main(monkeypatch, capfd, home, *args, "--json")
        assert code == 0, err[-2000:]
        return json.loads(out)

    dm("init")
    dm("data", "import", "digits")
    dm("train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--name", "t", "--device", "cpu")
    issues = tmp_path / "issues.json"
    dm("data", "issues", "digits", "--folds", "2", "--epochs", "1", "--arch", "mlp", "-o", str(issues),
       "--device", "cpu")  # fmt: skip
    assert json.loads(issues.read_text())["config"]["device"] == "cpu"
    student = dm("distill", "t", "--arch", "mlp", "--epochs", "1", "--name", "s", "--device", "cpu")
    pruned = dm("prune", "t", "--method", "structured", "--epochs", "1", "--latency", "none", "--name", "p",
                "--device", "cpu")  # fmt: skip
    shown = {m: dm("models", "show", m) for m in (student["model_id"], pruned["model_id"])}
    assert shown[student["model_id"]]["lineage"]["recipe"][-1]["train"]["device"] == "cpu"
    assert shown[pruned["model_id"]]["lineage"]["recipe"][-1]["finetune"]["device"] == "cpu"
