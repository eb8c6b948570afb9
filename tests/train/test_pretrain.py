import json

import numpy as np
import pytest
import torch
from dmtest import dm_main

from datamoat.data.dataset import SPLITS
from datamoat.data.pool import make_pool
from datamoat.errors import BadInput
from datamoat.train.loop import TrainConfig
from datamoat.train.pretrain import PretrainConfig, nt_xent, pretrain
from datamoat.train.run import train_in_workspace

FAST = dict(epochs=1, batch_size=64, threads=1)


@pytest.fixture
def pool(ws, digits):
    """The digits' train images without their labels, normalised like the digits."""
    x = np.asarray(digits.x[digits.split == SPLITS["train"]][:256])
    return make_pool(ws, x, digits.classes, name="digits-pool", source={"test": True}, preprocess=digits.preprocess)


def test_a_pretrained_backbone_loads_into_train_and_the_loaded_keys_are_recorded(ws, digits, pool):
    pre = pretrain(ws, pool, "cnn_small", PretrainConfig(**FAST))
    assert pre.images == 256 and pre.input_shape == (1, 8, 8) and pre.pool_id == pool.id
    state = torch.load(pre.location, weights_only=True)  # the stored checkpoint: the convolutional trunk alone
    assert "features.0.weight" in state and not any(k.startswith("classifier") for k in state)
    row = ws.resolve("runs", pre.run_id)
    assert row["status"] == "completed" and row["dataset_id"] == pool.id and row["arch"] == "cnn_small"
    assert row["config"]["kind"] == "pretrain" and row["config"]["pretrain"]["epochs"] == 1
    assert row["result"]["weights_sha"] == pre.sha256
    # An AdamW step moves a weight by about lr: at 1e-9 the loaded weights stay where the file put them.
    cfg = TrainConfig(epochs=1, lr=1e-9, max_train_samples=64, batch_size=32, threads=1, patience=0)
    for ref in (pre.ref, pre.sha256):
        model, _ = train_in_workspace(ws, digits.id, "cnn_small", cfg, weights=ref, progress=False)
        got = model.lineage["pretrained"]
        assert got["sha256"] == pre.sha256 and got["pretrain"]["run_id"] == pre.run_id
        assert got["pretrain"]["pool_id"] == pool.id and got["method"] == "simclr"
        assert got["loaded"] == len(state) and got["skipped_head"] == [
            "classifier.1.bias",
            "classifier.1.weight",
            "classifier.3.bias",
            "classifier.3.weight",
        ]
        assert torch.allclose(model.net.state_dict()["features.0.weight"], state["features.0.weight"], atol=1e-5)


def test_a_photo_backbone_pretrains_on_rgb_images_and_loads_without_its_head(ws):
    from datamoat.models import new_model
    from datamoat.train.pretrained import start_from

    x = np.random.default_rng(0).integers(0, 255, (12, 3, 16, 16), dtype=np.uint8)
    rgb = make_pool(ws, x, ["a", "b"], name="rgb", source={})
    pre = pretrain(ws, rgb, "resnet18", PretrainConfig(epochs=1, batch_size=6, threads=1))
    model = start_from(new_model("resnet18", rgb), "resnet18", pre.ref, False, ws)
    assert model.lineage["pretrained"]["skipped_head"] == ["fc.bias", "fc.weight"]
    assert model.lineage["pretrained"]["loaded"] == len(model.net.state_dict()) - 2


def test_the_contrastive_loss_falls_on_a_tiny_set(ws, pool):
    pre = pretrain(ws, pool, "cnn_small", PretrainConfig(epochs=6, batch_size=64, threads=1, lr=3e-3))
    losses = [p["loss"] for p in pre.history["curve"]]
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(p["images_per_s"] > 0 for p in pre.history["curve"])


def test_same_seed_same_backbone(ws, pool):
    a = pretrain(ws, pool, "mlp", PretrainConfig(**FAST, seed=3))
    b = pretrain(ws, pool, "mlp", PretrainConfig(**FAST, seed=3))
    c = pretrain(ws, pool, "mlp", PretrainConfig(**FAST, seed=4))
    assert a.sha256 == b.sha256 != c.sha256 and a.run_id != b.run_id


def test_a_labelled_version_pretrains_on_everything_but_its_test_images(ws, digits):
    pre = pretrain(ws, digits, "mlp", PretrainConfig(**FAST, max_samples=0))
    assert pre.images == int((digits.split != SPLITS["test"]).sum())
    capped = pretrain(ws, digits, "mlp", PretrainConfig(**FAST, max_samples=100))
    assert capped.images == 100


def test_nt_xent_prefers_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    aligned = nt_xent(torch.cat([z, z + 0.01 * torch.randn(8, 16, generator=g)]), 0.5)
    shuffled = nt_xent(torch.cat([z, z[torch.randperm(8, generator=g)]]), 0.5)
    assert float(aligned) < float(shuffled)


def test_bad_pools_and_mismatched_backbones_are_refused(ws, digits, pool):
    one = make_pool(ws, np.asarray(digits.x[:1]), digits.classes, name="one", source={})
    with pytest.raises(BadInput, match="at least 2"):
        pretrain(ws, one, "cnn_small", PretrainConfig(**FAST))
    pre = pretrain(ws, pool, "cnn_small", PretrainConfig(**FAST))
    cfg = TrainConfig(epochs=1, max_train_samples=64, batch_size=32, threads=1)
    with pytest.raises(BadInput, match="pass --arch cnn_small"):
        train_in_workspace(ws, digits.id, "mlp", cfg, weights=pre.ref, progress=False)
    big = make_pool(ws, np.zeros((4, 1, 12, 12), np.uint8), digits.classes, name="big", source={})
    other = pretrain(ws, big, "cnn_small", PretrainConfig(**FAST))
    with pytest.raises(BadInput, match=r"shape \(1, 12, 12\)"):
        train_in_workspace(ws, digits.id, "cnn_small", cfg, weights=other.ref, progress=False)
    with pytest.raises(BadInput, match="is a pretrain run"):
        train_in_workspace(ws, resume=pre.run_id)
    with pytest.raises(BadInput, match="method"):
        PretrainConfig(method="byol")


def test_cli_pretrain_then_train_from_it(ws, digits, pool, monkeypatch, capfd):
    home = ws.root
    code, out, err = dm_main(
        monkeypatch,
        capfd,
        home,
        "pretrain",
        pool.id,
        "--arch",
        "cnn_small",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--json",
    )
    assert code == 0, err
    pre = json.loads(out)
    assert pre["ref"] == f"pretrain:{pre['run_id']}" and pre["images"] == 256 and len(pre["curve"]) == 1
    args = ("train", "--data", digits.id, "--arch", "cnn_small", "--epochs", "1", "--threads", "1")
    code, out, err = dm_main(monkeypatch, capfd, home, *args, "--weights", pre["ref"], "--json")
    assert code == 0, err
    assert json.loads(out)["pretrained"]["pretrain"]["run_id"] == pre["run_id"]
    # one-line errors, exit 2: a pool too small, a backbone of another architecture
    one = make_pool(ws, np.asarray(digits.x[:1]), digits.classes, name="one", source={})
    code, _, err = dm_main(monkeypatch, capfd, home, "pretrain", one.id, "--arch", "cnn_small")
    assert code == 2 and "at least 2" in err and "Traceback" not in err
    code, _, err = dm_main(
        monkeypatch, capfd, home, "train", "--data", digits.id, "--arch", "mlp", "--weights", pre["ref"]
    )
    assert code == 2 and "pass --arch cnn_small" in err
