"""int8 quantization: static QDQ for conv nets, dynamic for Linear-only, accuracy-aware retry."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from datamoat.compress.export import ExportConfig, export, onnx_metadata
from datamoat.compress.qgraph import gemm_to_matmul
from datamoat.compress.quantize import (
    QuantizeAccuracyError,
    QuantizeConfig,
    quantize,
    quantize_in_workspace,
    saturates_8bit,
)
from datamoat.data import import_digits
from datamoat.errors import BadInput
from datamoat.inference.onnx import normalise, onnx_accuracy
from datamoat.models import new_model, save_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cnn and mlp trained on digits (about a second on one core)."""
    ws = Workspace.init(tmp_path_factory.mktemp("q") / "ws")
    ds = import_digits(ws)
    cfg = TrainConfig(epochs=8, lr=5e-3, threads=1)
    cnn = save_model(ws, train(new_model("cnn_small", ds, channels=(16, 32), hidden=(32,)), ds, cfg, progress=False))
    mlp = save_model(ws, train(new_model("mlp", ds, hidden=(64,)), ds, cfg, progress=False))
    return ws, ds, cnn, mlp


def fp32_file(model, tmp_path):
    return export(model, tmp_path / f"{model.config.arch}.onnx")


def optimized_ops(path, tmp_path):
    """Op types after onnxruntime's own graph optimisation: the kernels that really run."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_static_int8_cnn_runs_in_stock_ort_on_int8_kernels_within_budget(trained, tmp_path):
    _, ds, cnn, _ = trained
    (x_tr, _), (x_val, y_val) = ds.subset("train"), ds.subset("val")
    r = quantize(fp32_file(cnn, tmp_path), QuantizeConfig(), x_tr, cnn.preprocess, eval_x=x_val, eval_y=y_val)
    assert r.method == "static" and r.path.name == "cnn_small.int8.onnx"
    assert r.accuracy_drop <= 0.5 and r.int8_accuracy == onnx_accuracy(r.path, x_val, y_val, cnn.preprocess)
    assert r.int8_bytes < 0.5 * r.fp32_bytes
    # The 1-channel first conv stays fp32 (slow in int8); the rest runs on int8 kernels.
    first_conv = next(n.name for n in onnx.load(str(r.source)).graph.node if n.op_type == "Conv")
    assert r.excluded == {first_conv: "stem"}
    ops = optimized_ops(r.path, tmp_path)
    assert "QLinearConv" in ops and "QGemm" in ops and ops.count("Conv") == 1
    # Logits leave the last Gemm as float: no 8-bit rounding of the probabilities.
    assert next(n.op_type for n in onnx.load(str(r.path)).graph.node if "logits" in n.output) == "Gemm"
    # Stock onnxruntime, default session options, no datamoat code in the loop.
    logits = ort.InferenceSession(str(r.path)).run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0]
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    meta = onnx_metadata(r.path)
    as_json = json.loads(r.config.to_json())
    assert meta["classes"] == cnn.classes and meta["quantize_config"] == meta["recipe"][-1] == as_json
    assert meta["quantize_excluded"] == r.excluded and meta["model_id"] == cnn.id


def test_a_node_kept_fp32_between_int8_nodes_really_runs_fp32(trained, tmp_path):
    # Stock onnxruntime quantizes the weights of a float Conv/Gemm that reads a
    # per-tensor DequantizeLinear and fuses it into an int8 kernel when a Q
    # follows: an fp32 fallback between int8 nodes must survive that.
    _, ds, _, _ = trained
    m = new_model("cnn_large", ds, channels=(4, 4, 8, 8), hidden=(16,))
    path = export(m, tmp_path / "m.onnx")
    nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm")]
    keep = (nodes[2], nodes[4])  # the third conv, the hidden Linear: int8 on both sides
    r = quantize(path, QuantizeConfig(exclude=keep), ds.subset("train")[0], m.preprocess)
    assert r.excluded == {keep[0]: "user", keep[1]: "user", nodes[0]: "stem"}
    ops = optimized_ops(r.path, tmp_path)
    assert ops.count("Conv") == 2 and ops.count("QLinearConv") == 2  # fp32: the stem and the third conv
    assert ops.count("Gemm") == 1 and ops.count("QGemm") == 1
    x = normalise(ds.subset("val")[0][:64], m.preprocess)
    fp32, int8 = (ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in (path, r.path))
    assert np.abs(int8 - fp32).max() < 0.05 * np.abs(fp32).max()


def test_dynamic_int8_for_the_linear_only_mlp(trained, tmp_path):
    _, ds, _, mlp = trained
    (x_tr, _), (x_val, y_val) = ds.subset("train"), ds.subset("val")
    r = quantize(fp32_file(mlp, tmp_path), QuantizeConfig(), x_tr, None, eval_x=x_val, eval_y=y_val)
    # 7-bit weights by default exactly where 8-bit products can saturate (x86 without VNNI), recorded.
    assert r.attempts[0]["reduce_range"] is saturates_8bit() and QuantizeConfig().reduce_range is None
    assert onnx_metadata(r.path)["quantize_config"]["reduce_range"] is r.config.reduce_range
    assert r.method == "dynamic" and r.accuracy_drop <= 0.5 and r.int8_bytes < 0.5 * r.fp32_bytes
    ops = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops and "Gemm" not in ops


def test_a_dynamic_exclusion_keeps_that_matmul_float(trained, tmp_path):
    # ORT's fusions used to turn the MatMuls back into Gemms it then renamed, so an exclusion (and
    # the accuracy-aware retry's) silently quantized the node anyway.
    _, ds, _, mlp = trained
    path = fp32_file(mlp, tmp_path)
    matmuls = [n.name for n in gemm_to_matmul(onnx.load(str(path))).graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    r = quantize(path, QuantizeConfig(method="dynamic", exclude=(matmuls[1],)), ds.subset("train")[0], None)
    ops = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("MatMul") == 1
    assert r.excluded == {matmuls[1]: "user"}


def test_dynamic_on_a_conv_net_leaves_convs_float_so_stock_ort_runs_it(trained, tmp_path):
    _, ds, cnn, _ = trained
    x_tr, _ = ds.subset("train")
    r = quantize(fp32_file(cnn, tmp_path), QuantizeConfig(method="dynamic"), x_tr, cnn.preprocess)
    ops = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert "ConvInteger" not in ops and "MatMulInteger" in ops and r.fp32_accuracy is None
    x_val, _ = ds.subset("val")
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)


@pytest.mark.parametrize(
    "arch, widths",
    [
        ("cnn_medium", {"channels": (4, 8), "hidden": (16,)}),
        ("cnn_large", {"channels": (4, 4, 8, 8), "hidden": (16,)}),
        ("resnet", {"channels": (4, 4, 4, 8, 8)}),
        ("cnn_small", {"channels": (5, 7), "hidden": (9,)}),
    ],
)
def test_every_conv_arch_quantizes_statically_and_runs(trained, tmp_path, arch, widths):
    _, ds, _, _ = trained
    m = new_model(arch, ds, **widths)
    fixed = arch == "cnn_small"  # also a fixed batch-1 export, fed one image at a time
    path = export(m, tmp_path / "m.onnx", ExportConfig(dynamic_batch=not fixed))
    r = quantize(path, QuantizeConfig(calibration_samples=64), ds.subset("train")[0], m.preprocess)
    assert r.method == "static" and "QLinearConv" in optimized_ops(r.path, tmp_path)
    x = np.zeros((1 if fixed else 4, 1, 8, 8), np.float32)
    assert ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].shape == (
        len(x),
        10,
    )


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_other_calibration_methods_produce_working_models(trained, tmp_path, calibration):
    _, ds, cnn, _ = trained
    (x_tr, _), (x_val, y_val) = ds.subset("train"), ds.subset("val")
    cfg = QuantizeConfig(calibration=calibration, calibration_samples=128, max_accuracy_drop=2.0)
    r = quantize(fp32_file(cnn, tmp_path), cfg, x_tr, cnn.preprocess, eval_x=x_val, eval_y=y_val)
    assert r.accuracy_drop <= 2.0 and "QLinearConv" in optimized_ops(r.path, tmp_path)


def test_unknown_calibration_and_bad_inputs_are_one_line_errors(trained, tmp_path):
    with pytest.raises(BadInput, match="unknown calibration method 'kl': choose one of minmax, entropy, percentile"):
        QuantizeConfig(calibration="kl")
    with pytest.raises(BadInput, match="unknown quantization method"):
        QuantizeConfig(method="fp16")
    _, ds, cnn, _ = trained
    x_tr, _ = ds.subset("train")
    path = fp32_file(cnn, tmp_path)
    with pytest.raises(BadInput, match="calibration images must be uint8"):
        quantize(path, None, x_tr.astype(np.float32), cnn.preprocess)
    with pytest.raises(BadInput, match="no quantizable node named nope"):
        quantize(path, QuantizeConfig(exclude=("nope",)), x_tr, cnn.preprocess)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage" * 5)
    with pytest.raises(BadInput, match="is not an ONNX model"):
        quantize(junk, None, x_tr, cnn.preprocess)


def test_accuracy_aware_retry_keeps_the_most_sensitive_nodes_fp32(trained, tmp_path):
    _, ds, cnn, _ = trained
    x_val, y_val = ds.subset("val")
    path = fp32_file(cnn, tmp_path)
    # All-black calibration images give the input and activations useless
    # ranges: int8 accuracy collapses, far beyond any budget.
    dark = np.zeros((64, 1, 8, 8), np.uint8)
    cfg = QuantizeConfig(max_accuracy_drop=0.5, float_stem=False, max_retries=0, reduce_range=False)
    with pytest.raises(QuantizeAccuracyError, match=r"int8 accuracy drop \S+ points > budget 0.5 after 1 attempt"):
        quantize(path, cfg, dark, cnn.preprocess, eval_x=x_val, eval_y=y_val)
    nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm")]
    r = quantize(path, cfg.replace(max_retries=len(nodes) + 1), dark, cnn.preprocess, eval_x=x_val, eval_y=y_val)
    assert r.accuracy_drop <= 0.5 and len(r.attempts) >= 3 and r.attempts[0]["accuracy_drop"] > 10
    assert set(r.excluded.values()) == {"sensitivity"} and set(r.excluded) <= set(nodes)
    # The first retry is 7-bit weights (x86 without VNNI saturates 8-bit products), nothing kept fp32.
    assert [a["reduce_range"] for a in r.attempts[:2]] == [False, True] and r.attempts[1]["excluded"] == []
    assert r.config.reduce_range and onnx_metadata(r.path)["quantize_config"]["reduce_range"] is True
    for before, after in zip(r.attempts[1:], r.attempts[2:]):
        # Each retry keeps fp32 the node whose probe came closest to the fp32 logits.
        best = min(before["probe_mse"], key=before["probe_mse"].get)
        assert after["excluded"] == [*before["excluded"], best]
    # With the budget met, stock onnxruntime reproduces the reported accuracy.
    assert onnx_accuracy(r.path, x_val, y_val, cnn.preprocess) == r.int8_accuracy


def test_quantize_model_stores_the_int8_file_in_the_workspace(trained):
    ws, _, cnn, _ = trained
    path, r = quantize_in_workspace(ws, cnn.name, QuantizeConfig(calibration_samples=128))
    assert path == ws.root / "onnx" / f"{cnn.id}.int8.onnx" and r.source == ws.root / "onnx" / f"{cnn.id}.onnx"
    assert r.sha == hashlib.sha256(path.read_bytes()).hexdigest() and ws.get_bytes(r.sha) == path.read_bytes()
    assert r.fp32_accuracy > 0.8 and r.accuracy_drop <= 0.5
    assert json.loads(json.dumps(r.to_dict()))["excluded"] == r.excluded


def test_cli_quantize_json_and_unknown_calibration(trained):
    from typer.testing import CliRunner

    from datamoat.cli import app

    ws, _, cnn, _ = trained
    home = ["--home", str(ws.root)]
    run = CliRunner().invoke(app, [*home, "quantize", cnn.id, "--json"])
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["method"] == "static" and set(out["latency"]) == {"fp32", "int8"}
    assert out["int8_faster"]["b1"] == (
        out["latency"]["int8"]["latency_ms_b1"] < out["latency"]["fp32"]["latency_ms_b1"]
    )
    bad = CliRunner().invoke(app, [*home, "quantize", cnn.id, "--calibration", "kl"])
    assert isinstance(bad.exception, BadInput) and "choose one of minmax, entropy, percentile" in str(bad.exception)


HOSTILE_NAMES = ["../../escape", "/features/0/Conv", "stage:1", "with space", "naïve-名前", ".."]


def test_sensitivity_probes_survive_node_names_that_are_not_file_names(trained, tmp_path):
    # Exporters name nodes after module paths ("/features/0/Conv"); any graph
    # string may hold '/', '..', ':', spaces or non-ASCII. The probes must not
    # turn them into paths (they once did, and failed with FileNotFoundError).
    _, ds, cnn, _ = trained
    x_val, y_val = ds.subset("val")
    proto = onnx.load(str(fp32_file(cnn, tmp_path)))
    targets = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    for node, name in zip(targets, HOSTILE_NAMES):
        node.name = name
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, str(path))
    dark = np.zeros((64, 1, 8, 8), np.uint8)  # useless ranges: the retry must probe every node
    cfg = QuantizeConfig(max_accuracy_drop=0.5, float_stem=False, max_retries=len(targets) + 1, reduce_range=False)
    r = quantize(path, cfg, dark, cnn.preprocess, eval_x=x_val, eval_y=y_val, out_path=tmp_path / "out.onnx")
    assert len(r.attempts) >= 3 and set(r.attempts[1]["probe_mse"]) == set(HOSTILE_NAMES[: len(targets)])
    assert set(r.excluded) <= set(HOSTILE_NAMES) and r.accuracy_drop <= 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn_small.onnx", "hostile.onnx", "out.onnx"]
