"""Where ONNX Runtime runs a served model, and the machine a server reports for capacity plans."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from datamoat.errors import BadInput
from datamoat.inference.hardware import describe_hardware, hardware_label, resolve_ort_device
from datamoat.inference.onnx import ort_session

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_auto_is_cuda_exactly_where_this_onnxruntime_offers_it():
    assert resolve_ort_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_ort_device("cpu") == "cpu"
    with pytest.raises(BadInput, match="unknown device 'tpu'"):
        resolve_ort_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal where onnxruntime has no CUDA provider")
def test_cuda_without_its_provider_is_refused_naming_the_fix():
    with pytest.raises(BadInput, match="install onnxruntime-gpu") as e:
        resolve_ort_device("cuda")
    assert "\n" not in str(e.value)


def test_a_cpu_session_runs_on_the_cpu_provider_only():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort_session(model.SerializeToString(), threads=1, device="cpu")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.run(None, {"x": np.array([[-1.0, 2.0]], np.float32)})[0].tolist() == [[0.0, 2.0]]


def test_the_description_is_this_machine():
    hw = describe_hardware("cpu")
    assert hw["device"] == "cpu" and hw["provider"] == "CPUExecutionProvider" and hw["gpus"] == []
    assert hw["cores"] == len(os.sched_getaffinity(0)) and hw["onnxruntime"] == ort.__version__
    assert hw["cpu"] and (not Path("/proc/cpuinfo").exists() or hw["cpu"] in Path("/proc/cpuinfo").read_text())
    limit = Path("/sys/fs/cgroup/cpu.max")
    quota = limit.read_text().split()[:2] if limit.exists() else ["max"]
    assert hw["cpu_limit"] == (None if quota[0] == "max" else round(int(quota[0]) / int(quota[1]), 2))
    assert hardware_label(hw).startswith(f"CPU: {hw['cpu']}, {hw['cores']} cores")


def test_labels_name_the_gpus_and_a_cgroup_limit():
    hw = {"device": "cuda", "cpu": "EPYC", "cores": 16, "cpu_limit": 4.0, "gpus": ["NVIDIA H100", "NVIDIA H100"]}
    assert hardware_label(hw) == "CUDA: 2 x NVIDIA H100; CPU: EPYC, 16 cores, limited to 4 (cgroup)"
    assert hardware_label({**hw, "gpus": ["A", "B"]}).startswith("CUDA: A, B;")
