"""ONNX export: every zoo arch, parity against PyTorch, metadata, workspace storage, CLI."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from datamoat.compress.export import (
    ExportConfig,
    ExportParityError,
    check_parity,
    export,
    export_in_workspace,
    onnx_metadata,
)
from datamoat.errors import BadInput
from datamoat.models import new_model, save_model

TINY = {
    "mlp": {"hidden": (16,)},
    "cnn_small": {"channels": (4, 8), "hidden": (16,)},
    "cnn_medium": {"channels": (4, 8), "hidden": (16,)},
    "cnn_large": {"channels": (4, 4, 8, 8), "hidden": (16,)},
    "resnet": {"channels": (4, 4, 4, 8, 8)},
}


def with_random_bn(model, seed=0):
    """Give BatchNorm non-trivial running stats, so folding it into Conv matters."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g))
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.randn(n, generator=g))
            mod.bias.data.copy_(torch.randn(n, generator=g))
    return model


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("arch", list(TINY))
def test_every_arch_exports_with_dynamic_batch_and_matches_pytorch(arch, digits, tmp_path):
    m = with_random_bn(new_model(arch, digits, **TINY[arch]))
    m.net.train()  # export must evaluate in eval mode and leave the mode as it was
    path = export(m, tmp_path / f"{arch}.onnx")
    assert m.net.training
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "logits") and inp.shape[1:] == [1, 8, 8]
    assert isinstance(inp.shape[0], str)  # a symbolic, dynamic batch axis
    m.net.eval()
    for batch in (1, 7):
        x = m.example_inputs(batch, seed=3)
        with torch.no_grad():
            ref = m.net(x).numpy()
        np.testing.assert_allclose(ort_logits(path, x), ref, atol=1e-4, rtol=0)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops  # folded into the Conv weights


def test_pruned_style_odd_widths_export(digits, tmp_path):
    m = with_random_bn(new_model("cnn_small", digits, channels=(5, 7), hidden=(9,)))
    path = export(m, tmp_path / "odd.onnx")
    x = m.example_inputs(3)
    m.net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(ort_logits(path, x), m.net(x).numpy(), atol=1e-4, rtol=0)


def test_parity_failure_is_detected_and_nothing_is_written(digits, tmp_path):
    m = with_random_bn(new_model("cnn_small", digits, **TINY["cnn_small"]))
    path = export(m, tmp_path / "m.onnx")
    other = with_random_bn(new_model("cnn_small", digits, seed=1, **TINY["cnn_small"]), seed=1)
    with pytest.raises(ExportParityError, match=r"export parity failed: max abs diff \S+ > atol 0.0001"):
        check_parity(other, path)
    assert check_parity(m, path) <= 1e-4
    # A tolerance no float conv can meet: export refuses and leaves no file behind.
    with pytest.raises(ExportParityError):
        export(m, tmp_path / "strict.onnx", ExportConfig(atol=1e-12))
    assert not (tmp_path / "strict.onnx").exists()


def test_metadata_round_trips_through_the_file(ws, digits, tmp_path):
    m = save_model(ws, new_model("cnn_small", digits, **TINY["cnn_small"]))
    cfg = ExportConfig(opset=19, parity_batch=4)
    path = export(m, tmp_path / "m.onnx", cfg)
    meta = onnx_metadata(path)
    assert meta["classes"] == m.classes and meta["preprocess"] == m.preprocess
    assert meta["model_id"] == m.id and meta["arch"] == "cnn_small" and meta["input_shape"] == [1, 8, 8]
    assert meta["export_config"] == cfg.to_dict() and meta["recipe"][-1] == cfg.to_dict()
    assert 0 <= meta["parity_max_abs_diff"] <= cfg.atol
    # A serving process that has only onnxruntime reads the same strings.
    custom = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(custom["datamoat.classes"]) == m.classes
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) == 19


def test_static_batch_export(digits, tmp_path):
    m = new_model("mlp", digits, **TINY["mlp"])
    path = export(m, tmp_path / "b1.onnx", ExportConfig(dynamic_batch=False))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 1, 8, 8]


def test_export_to_workspace_stores_content_addressed_bytes(ws, digits):
    m = save_model(ws, new_model("mlp", digits, **TINY["mlp"]))
    path, info = export_in_workspace(ws, m.name)
    data = path.read_bytes()
    assert path == ws.root / "onnx" / f"{m.id}.onnx"
    assert info["sha"] == hashlib.sha256(data).hexdigest() and ws.get_bytes(info["sha"]) == data
    assert info["bytes"] == len(data) and info["model_id"] == m.id


def test_bad_export_config_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(BadInput, match="opset 17 is not supported"):
        ExportConfig(opset=17)
    with pytest.raises(BadInput, match="atol must be positive"):
        ExportConfig(atol=0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf at all\xff" * 3)
    with pytest.raises(BadInput, match="is not an ONNX model"):
        onnx_metadata(junk)


def test_cli_export_json_and_bad_model_file(ws, digits, tmp_path):
    from typer.testing import CliRunner

    from datamoat.cli import app

    m = save_model(ws, new_model("mlp", digits, **TINY["mlp"]), name="tiny-mlp")
    out = tmp_path / "cli.onnx"
    run = CliRunner().invoke(app, ["--home", str(ws.root), "export", "tiny-mlp", "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    info = json.loads(run.stdout)
    assert info["model_id"] == m.id and out.read_bytes() == (ws.root / "onnx" / f"{m.id}.onnx").read_bytes()
    assert info["parity_max_abs_diff"] <= 1e-4 and info["path"] == str(out)
    # `datamoat` turns a DatamoatError into one line on stderr and exit code 2.
    bad = CliRunner().invoke(app, ["--home", str(ws.root), "export", str(out)])
    assert isinstance(bad.exception, BadInput) and "is a file" in str(bad.exception)
    assert len(str(bad.exception).splitlines()) == 1
