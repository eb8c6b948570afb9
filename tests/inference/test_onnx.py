"""Running and timing ONNX models: preprocessing parity, probabilities, accuracy, latency."""

import os

import numpy as np
import pytest

from datamoat.compress.export import ExportConfig, export
from datamoat.inference.onnx import (
    file_bytes,
    measure_latency,
    normalise,
    onnx_accuracy,
    onnx_predict_proba,
    ort_session,
)
from datamoat.models import new_model


@pytest.fixture
def exported(digits, tmp_path):
    m = new_model("cnn_small", digits, channels=(4, 8), hidden=(16,))
    m.net.eval()
    return m, export(m, tmp_path / "m.onnx")


def test_normalise_is_exactly_model_to_tensor(digits):
    m = new_model("mlp", digits, hidden=(8,))
    x, _ = digits.subset("val")
    np.testing.assert_array_equal(normalise(x, m.preprocess), m.to_tensor(x).numpy())


def test_predict_proba_and_accuracy_match_pytorch(digits, exported):
    m, path = exported
    x, y = digits.subset("val")
    p = onnx_predict_proba(path, x, m.preprocess, batch_size=50)  # several batches, one partial
    np.testing.assert_allclose(p, m.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    torch_acc = float((m.logits(x).argmax(1) == y).mean())
    assert onnx_accuracy(ort_session(path, threads=1), x, y, m.preprocess) == pytest.approx(torch_acc)


def test_measure_latency_reports_interleaved_medians_per_candidate(digits, exported, tmp_path):
    m, path = exported
    fixed = export(m, tmp_path / "b1.onnx", ExportConfig(dynamic_batch=False))
    res = measure_latency(
        {"a": path, "b": path, "fixed": fixed}, (1, 8, 8), batch_sizes=(1, 4), warmup=2, repeats=7, threads=1
    )
    assert set(res) == {"a", "b", "fixed"}
    for name in ("a", "b"):
        r = res[name]
        assert set(r) == {f"{k}_b{b}" for k in ("latency_ms", "p90_ms", "throughput") for b in (1, 4)}
        assert 0 < r["latency_ms_b1"] <= r["p90_ms_b1"]
        assert r["throughput_b4"] == pytest.approx(4 / (r["latency_ms_b4"] / 1e3))
    # A model whose batch axis is fixed to 1 is timed at batch 1 only.
    assert set(res["fixed"]) == {"latency_ms_b1", "p90_ms_b1", "throughput_b1"}
    assert file_bytes(path) == path.stat().st_size > 0


def test_onnx_runtime_writes_no_telemetry_into_the_users_home(tmp_path):
    import subprocess
    import sys

    code = (
        "import datamoat.inference.onnx as o, onnx, numpy as np\n"
        "from onnx import helper, TensorProto as T\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',"
        " [helper.make_tensor_value_info('x', T.FLOAT, [1])], [helper.make_tensor_value_info('y', T.FLOAT, [1])])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
        "print(o.ort_session(m.SerializeToString(), threads=1).run(None, {'x': np.ones(1, np.float32)})[0])\n"
    )
    # A bare environment: ONNX Runtime skips its device id when it sees a CI variable (CI=true), which
    # would make the opt-in run below write nothing on a CI machine and the check pass for the wrong reason.
    env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG") if k in os.environ}
    for home, extra in ((tmp_path / "off", {}), (tmp_path / "on", {"ORT_DISABLE_TELEMETRY": "0"})):
        home.mkdir()
        r = subprocess.run([sys.executable, "-c", code], env={**env, **extra, "HOME": str(home)}, capture_output=True)
        assert r.returncode == 0 and b"[1.]" in r.stdout, r.stderr
    assert not (tmp_path / "off" / ".cache").exists()  # datamoat's default
    assert (tmp_path / "on" / ".cache" / "Microsoft").is_dir()  # the opt-in still works, so the check can fail
