"""M7: `train --resume` unpickled the run's checkpoint, so anyone who could
write a workspace's runs/ folder got code execution on the next resume."""

from __future__ import annotations

import os

import pytest
import torch

from datamoat.errors import BadInput
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # what an attacker plants: runs on unpickling
        return (os.system, (f"touch {self.marker}",))


def test_m7_a_checkpoint_that_would_run_code_is_refused_unrun(world, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"config": TrainConfig(epochs=2).to_dict(), "net": _Payload(str(marker))}, ckpt)
    model = new_model("mlp", world.ds)
    with pytest.raises(BadInput, match="holds more than tensors"):
        train(model, world.ds, TrainConfig(epochs=2, threads=1), checkpoint=ckpt, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=2, optimizer="sgd", schedule="cosine", threads=1, patience=0),
        TrainConfig(epochs=2, schedule="none", augment="crop_flip", threads=1, patience=0),
    ],
)
def test_m7_honest_checkpoints_still_resume_under_weights_only_loading(world, tmp_path, config):
    def stop_after_first(point):
        if point["epoch"] == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train(new_model("mlp", world.ds), world.ds, config, checkpoint=ckpt, on_epoch=stop_after_first, progress=False)
    done = train(new_model("mlp", world.ds), world.ds, config, checkpoint=ckpt, resume=True, progress=False)
    assert [p["epoch"] for p in done.history["curve"]] == [1, 2]
