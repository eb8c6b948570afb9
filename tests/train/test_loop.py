import numpy as np
import pytest
import torch

from datamoat.errors import BadInput
from datamoat.models import new_model
from datamoat.train.epoch import detect_plateau
from datamoat.train.loop import PLATEAU_ADVICE, TrainConfig, train
from datamoat.train.run import train_in_workspace


def _acc(model, data):
    x, y = data.subset("test")
    return float((model.logits(x).argmax(1) == y).mean())


def test_training_learns_and_records_a_curve(digits):
    m = train(new_model("cnn_small", digits), digits, TrainConfig(epochs=3, threads=1), progress=False)
    curve = m.history["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    assert {"train_loss", "val_accuracy", "seconds", "samples_per_s"} <= set(curve[0])
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    assert _acc(m, digits) > 0.85
    assert m.lineage["dataset_id"] == digits.id and m.lineage["recipe"][0]["type"] == "TrainConfig"


def test_same_seed_same_result(digits):
    cfg = TrainConfig(epochs=2, threads=1, seed=7, augment="crop")
    a = train(new_model("cnn_small", digits, seed=7), digits, cfg, progress=False)
    b = train(new_model("cnn_small", digits, seed=7), digits, cfg, progress=False)
    assert _acc(a, digits) == _acc(b, digits)
    for (ka, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_sgd_cosine_and_subsampling(digits):
    cfg = TrainConfig(
        epochs=4, batch_size=32, optimizer="sgd", lr=0.05, schedule="cosine", max_train_samples=300, threads=1
    )
    m = train(new_model("mlp", digits), digits, cfg, progress=False)
    assert abs(m.history["train_samples"] - 300) <= 10
    assert _acc(m, digits) > 0.5


def test_plateau_detection_and_early_stopping(digits):
    assert detect_plateau([0.5, 0.7, 0.7, 0.69, 0.7], patience=2, min_delta=0.01) == 2
    assert detect_plateau([0.5, 0.6, 0.7], patience=2, min_delta=0.01) is None
    # An lr of ~0 cannot improve after epoch 1: the run must stop early and say why.
    cfg = TrainConfig(epochs=10, lr=1e-9, schedule="none", patience=2, threads=1)
    m = train(new_model("mlp", digits), digits, cfg, progress=False)
    assert m.history["stopped_early"] and len(m.history["curve"]) == 3
    assert m.history["plateau"]["epoch"] == 1
    assert m.history["plateau"]["message"] == f"plateau at epoch 1: {PLATEAU_ADVICE}"


def test_interrupted_run_resumes_to_the_same_model(digits, tmp_path):
    cfg = TrainConfig(epochs=3, threads=1, augment="crop_flip", patience=0)
    full = train(new_model("cnn_small", digits), digits, cfg, progress=False)

    def stop_after_first(point):
        if point["epoch"] == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        train(new_model("cnn_small", digits), digits, cfg, checkpoint=ckpt, on_epoch=stop_after_first, progress=False)
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["sync_batchnorm"]  # as a checkpoint written before the field existed
    torch.save(state, ckpt)
    with pytest.raises(BadInput, match="different TrainConfig"):
        train(new_model("cnn_small", digits), digits, cfg.replace(lr=1e-3), checkpoint=ckpt, resume=True)
    resumed = train(new_model("cnn_small", digits, seed=99), digits, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert [p["epoch"] for p in resumed.history["curve"]] == [1, 2, 3]
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_run_training_in_workspace(ws, digits):
    model, run_id = train_in_workspace(ws, digits.id, "mlp", TrainConfig(epochs=1, threads=1), progress=False)
    run = ws.resolve("runs", run_id)
    assert run["status"] == "completed" and run["model_id"] == model.id
    assert (ws.root / "runs" / run_id / "checkpoint.pt").exists()
    with pytest.raises(BadInput, match="already completed"):
        train_in_workspace(ws, resume=run_id, progress=False)


def test_bad_train_config():
    with pytest.raises(BadInput, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(BadInput, match="epochs"):
        TrainConfig(epochs=0)


def test_model_and_data_must_match(ws, digits, idx_pair):
    from datamoat.data import import_idx

    other = import_idx(ws, idx_pair[0], idx_pair[1])
    with pytest.raises(BadInput, match="build the model for this dataset"):
        train(new_model("mlp", digits), other, TrainConfig(epochs=1), progress=False)
    assert np.unique(other.y).size == 3


def test_without_a_val_split_the_last_epoch_is_kept(digits):
    import dataclasses

    split = digits.split.copy()
    split[split == 1] = 0  # val samples join train
    no_val = dataclasses.replace(digits, split=split)
    m = train(new_model("mlp", digits), no_val, TrainConfig(epochs=3, threads=1, patience=1), progress=False)
    assert m.history["best_epoch"] == 3 and len(m.history["curve"]) == 3


def test_weights_start_a_backbone_with_its_head_resized_and_the_file_recorded(ws, digits, tmp_path):
    import hashlib

    from datamoat.models.backbones import build_backbone

    torch.manual_seed(7)
    src = build_backbone("mobilenet_v3_small", num_classes=4, in_channels=1).state_dict()  # other classes
    path = tmp_path / "pretrained.pth"
    torch.save(src, path)
    # An AdamW step moves a weight by about lr: at 1e-9 the loaded weights stay where the file put them.
    cfg = TrainConfig(epochs=1, lr=1e-9, max_train_samples=64, batch_size=32, threads=1, patience=0)
    model, _ = train_in_workspace(ws, digits.id, "mobilenet_v3_small", cfg, weights=str(path), progress=False)
    pre = model.lineage["pretrained"]
    assert pre["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pre["skipped_head"] == ["classifier.3.bias", "classifier.3.weight"] and pre["loaded"] > 100
    got = model.net.state_dict()
    assert torch.allclose(got["features.0.0.weight"], src["features.0.0.weight"], atol=1e-5)
    assert tuple(got["classifier.3.weight"].shape) == (10, 1024)  # the dataset's ten classes
    scratch, _ = train_in_workspace(ws, digits.id, "mobilenet_v3_small", cfg, progress=False)
    assert not torch.allclose(scratch.net.state_dict()["features.0.0.weight"], src["features.0.0.weight"], atol=1e-3)
    # A small zoo model has no head to spare: every key must match, and the message names them.
    with pytest.raises(BadInput, match="missing keys"):
        train_in_workspace(ws, digits.id, "cnn_small", cfg, weights=str(path), progress=False)


def _delta(a: dict, b: dict, keys) -> float:
    return float(sum((a[k] - b[k]).abs().sum() for k in keys))


def test_a_linear_probe_trains_only_the_head_then_everything(digits):
    from datamoat.train.optim import head_parameters

    model = new_model("cnn_small", digits, seed=0)
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    head = head_parameters(model.net)
    body = [k for k, _ in model.net.named_parameters() if k not in head]
    snaps = []
    cfg = TrainConfig(epochs=2, probe_epochs=1, patience=0, threads=1, batch_size=64)
    model_net = model.net
    train(model, digits, cfg, progress=False, on_epoch=lambda p: snaps.append(_clone(model_net)))
    assert _delta(snaps[0], start, body) == 0 and _delta(snaps[0], start, head) > 0  # epoch 1: the probe
    assert _delta(snaps[1], snaps[0], body) > 0  # epoch 2: every layer
    assert all(p.requires_grad for p in model_net.parameters())


def test_a_lower_body_learning_rate_moves_the_body_less(digits):
    from datamoat.train.optim import head_parameters

    moved = {}
    for scale in (1.0, 0.01):
        model = new_model("cnn_small", digits, seed=0)
        start = {k: v.clone() for k, v in model.net.state_dict().items()}
        body = [k for k, _ in model.net.named_parameters() if k not in head_parameters(model.net)]
        out = train(model, digits, TrainConfig(epochs=1, body_lr_scale=scale, threads=1, batch_size=64), progress=False)
        moved[scale] = _delta(out.net.state_dict(), start, body)
    assert moved[0.01] < 0.2 * moved[1.0]


def test_warmup_ramps_the_learning_rate_then_decays_it(digits):
    cfg = TrainConfig(epochs=4, warmup_epochs=2, schedule="cosine", lr=1e-3, patience=0, threads=1, batch_size=64)
    lrs = [p["lr"] for p in train(new_model("mlp", digits), digits, cfg, progress=False).history["curve"]]
    assert lrs[0] == pytest.approx(5e-4, rel=0.05) and lrs[1] == pytest.approx(1e-3, rel=0.01)
    assert lrs[1] > lrs[2] > lrs[3]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"probe_epochs": 3}, "probe_epochs"),
        ({"body_lr_scale": 0}, "body_lr_scale"),
        ({"warmup_epochs": 1}, "onecycle"),
    ],
)
def test_fine_tuning_settings_are_checked(bad, field):
    with pytest.raises(BadInput, match=field):
        TrainConfig(epochs=3, **bad)


def _clone(net) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}  # a GPU run snapshots to the CPU


def test_threads_zero_restores_torchs_default_after_a_run_chose_fewer(digits):
    from datamoat.train.loop import set_threads

    default = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert set_threads(0) == default
    finally:
        torch.set_num_threads(default)
