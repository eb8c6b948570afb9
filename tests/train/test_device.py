"""--device and --precision: the CPU path stays fp32 and deterministic; accelerators are asked for
by name and refused with a one-line fix where this machine has none."""

from __future__ import annotations

import pytest
import torch

from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.models.model import new_model
from datamoat.train.device import resolve_device, resolve_precision
from datamoat.train.loop import TrainConfig, train

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="auto picks CUDA on this machine; CI and the 2-core machines have none")
def test_auto_is_the_cpu_in_fp32_here_and_trains_exactly_as_an_explicit_cpu(digits):
    runs = [
        train(new_model("cnn_small", digits), digits, TrainConfig(epochs=1, device=d, threads=1), progress=False)
        for d in ("auto", "cpu")
    ]
    assert [r.history["device"] for r in runs] == ["cpu", "cpu"]
    assert runs[0].history["precision"] == "fp32"
    a, b = (r.net.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    timeless = [
        [{k: v for k, v in p.items() if k not in ("seconds", "samples_per_s")} for p in r.history["curve"]]
        for r in runs
    ]
    assert timeless[0] == timeless[1]


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_asking_for_a_gpu_this_machine_lacks_is_one_line_naming_the_fix():
    with pytest.raises(BadInput, match="--device cuda: no CUDA GPU.*use --device cpu or auto"):
        resolve_device("cuda")


def test_bad_devices_and_precisions_are_refused():
    with pytest.raises(BadInput, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(BadInput, match="precision"):
        TrainConfig(precision="int4")
    with pytest.raises(BadInput, match="--precision bf16 is for accelerators"):
        resolve_precision("bf16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_old_recorded_configs_load_with_the_defaults():
    old = TrainConfig().to_dict()
    for k in ("device", "precision", "channels_last"):
        old.pop(k)
    assert config_from_dict(old) == TrainConfig()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the device machine)")
def test_a_gpu_run_in_bf16_learns_as_the_cpu_does_and_returns_a_cpu_model(digits):
    # crop_flip: the batch augmentation runs on the GPU too (its draws stay on the CPU generator)
    runs = {
        d: train(
            new_model("cnn_small", digits), digits, TrainConfig(epochs=3, augment="crop_flip", device=d), progress=False
        )
        for d in ("cuda", "cpu")
    }
    gpu = runs["cuda"]
    assert gpu.history["device"].startswith("cuda") and gpu.history["precision"] in ("bf16", "fp16")
    assert next(gpu.net.parameters()).device.type == "cpu"
    assert abs(gpu.history["val_accuracy"] - runs["cpu"].history["val_accuracy"]) < 0.1
    assert gpu.history["val_accuracy"] > 0.2  # chance is 0.1
