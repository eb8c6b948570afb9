"""Tests for `datamoat.compress.distill` and the `datamoat distill` command, on sklearn digits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamoat.compress.distill import DistillConfig, distill, kd_loss, teacher_logits
from datamoat.configs import config_from_dict
from datamoat.data import import_digits
from datamoat.errors import BadInput
from datamoat.models import new_model, save_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace.init(tmp_path_factory.mktemp("distill"))


@pytest.fixture(scope="module")
def ds(ws):
    return import_digits(ws)


@pytest.fixture(scope="module")
def teacher(ws, ds):
    m = train(new_model("cnn_small", ds, seed=7), ds, TrainConfig(epochs=2, seed=7), progress=False)
    return save_model(ws, m, name="digits-teacher")


def _state(model):
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(p || q) of probability rows, written out by hand."""
    return (p * (p.log() - q.log())).sum(1).mean()


LOGITS = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 3  # (B, K) student
TEACH = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) * 3  # (B, K) teacher
LABELS = torch.tensor([0, 1, 2, 3, 4, 0])


def test_kd_loss_at_t1_is_kl_of_plain_softmaxes():
    got = kd_loss(LOGITS, TEACH, LABELS, T=1.0, alpha=1.0)
    want = _kl(torch.softmax(TEACH, 1), torch.softmax(LOGITS, 1))
    assert torch.allclose(got, want, atol=1e-6)
    assert float(got) > 0.1


@pytest.mark.parametrize("T", [0.5, 2.0, 4.0, 20.0])
def test_kd_loss_is_t_squared_times_kl_of_softened_distributions(T):
    got = kd_loss(LOGITS, TEACH, LABELS, T=T, alpha=1.0)
    want = T * T * _kl(torch.softmax(TEACH / T, 1), torch.softmax(LOGITS / T, 1))
    assert torch.allclose(got, want, rtol=1e-5)


def test_kd_soft_gradient_keeps_its_size_across_temperatures():
    # d/ds of T^2 KL is T (softmax(s/T) - softmax(t/T)) / B, which tends to the centred logit
    # difference / (K B) as T grows; without the T^2 factor it would shrink like 1/T^2.
    b, k = LOGITS.shape
    centred = lambda z: z - z.mean(1, keepdim=True)  # noqa: E731
    limit = float(((centred(LOGITS) - centred(TEACH)) / (k * b)).norm())
    for T in (4.0, 10.0, 20.0, 80.0):
        s = LOGITS.clone().requires_grad_(True)
        kd_loss(s, TEACH, LABELS, T=T, alpha=1.0).backward()
        assert float(s.grad.norm()) == pytest.approx(limit, rel=0.12)


def test_kd_loss_alpha_zero_is_cross_entropy_and_alpha_one_ignores_labels():
    assert torch.equal(kd_loss(LOGITS, TEACH, LABELS, T=4.0, alpha=0.0), F.cross_entropy(LOGITS, LABELS))
    other = (LABELS + 1) % 5
    only_soft = kd_loss(LOGITS, TEACH, LABELS, T=4.0, alpha=1.0)
    assert torch.equal(only_soft, kd_loss(LOGITS, TEACH, other, T=4.0, alpha=1.0))
    mixed = kd_loss(LOGITS, TEACH, LABELS, T=4.0, alpha=0.3)
    assert torch.allclose(mixed, 0.3 * only_soft + 0.7 * F.cross_entropy(LOGITS, LABELS))


def test_kd_loss_is_zero_when_student_matches_teacher_and_sends_no_gradient_to_teacher():
    t = TEACH.clone().requires_grad_(True)
    loss = kd_loss(TEACH.clone().requires_grad_(True), t, LABELS, T=3.0, alpha=1.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert t.grad is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"train": {"epochs": 0}},
        {"train": {"epoch": 3}},
        {"train": {"label_smoothing": 0.1}},
    ],
)
def test_bad_config_is_bad_input(kwargs):
    with pytest.raises(BadInput):
        DistillConfig(**kwargs)


def test_config_records_every_training_field_and_round_trips():
    cfg = DistillConfig(temperature=3.0, alpha=0.7, train={"epochs": 2})
    assert isinstance(cfg.train, TrainConfig) and cfg.train_config() is cfg.train
    assert set(cfg.to_dict()["train"]) == {f.name for f in dataclasses.fields(TrainConfig)} | {"type", "version"}
    assert cfg.train.epochs == 2 and cfg.train.patience == 0  # distillation's own default
    assert DistillConfig().replace(train__epochs=2).train == cfg.train
    back = config_from_dict(json.loads(cfg.to_json()))
    assert back == cfg and isinstance(back.train, TrainConfig)


def test_a_whole_train_config_is_taken_as_given():
    assert DistillConfig(train=TrainConfig(epochs=2)).train.patience == TrainConfig().patience


def test_version_1_with_a_plain_train_dict_still_loads():
    fields = {f.name: getattr(TrainConfig(epochs=2, patience=0), f.name) for f in dataclasses.fields(TrainConfig)}
    old = {"type": "DistillConfig", "version": 1, "temperature": 3.0, "alpha": 0.7, "cache_teacher": True}
    assert config_from_dict({**old, "train": fields}) == DistillConfig(temperature=3.0, alpha=0.7, train={"epochs": 2})


@pytest.mark.parametrize(
    "train, message",
    [
        ({"epochs": 0}, r"^train: epochs must be at least 1, got 0$"),
        ({"epoch": 3}, r"^train: TrainConfig has no field.s. epoch: its fields are "),
        ({"label_smoothing": 0.1}, r"^train\.label_smoothing does not apply to distillation"),
    ],
)
def test_bad_training_fields_are_named(train, message):
    with pytest.raises(BadInput, match=message):
        DistillConfig(train=train)


def test_student_is_fresh_and_distill_never_copies_teacher_weights(ds, teacher):
    # Same architecture as the teacher, so copying would be possible.
    student = new_model("cnn_small", ds, seed=3)
    fresh = _state(new_model("cnn_small", ds, seed=3))
    assert all(torch.equal(v, fresh[k]) for k, v in _state(student).items())
    teacher_params = [p.detach() for p in teacher.net.parameters()]
    start = [p.detach().clone() for p in student.net.parameters()]
    assert not any(torch.equal(s, t) for s in start for t in teacher_params if s.shape == t.shape)
    # With a vanishing learning rate the result must stay at the fresh init, not the teacher.
    cfg = DistillConfig(train={"epochs": 1, "lr": 1e-12, "augment": "none"})
    out = distill(student, teacher, ds, cfg)
    end = list(out.net.parameters())
    assert all(torch.allclose(e, s, atol=1e-6) for e, s in zip(end, start, strict=True))
    assert not any(torch.allclose(e, t, atol=1e-3) for e, t in zip(end, teacher_params, strict=True))


def test_teacher_is_unchanged_and_left_as_it_was(ds, teacher):
    before = _state(teacher)
    grads = [None if p.grad is None else p.grad.clone() for p in teacher.net.parameters()]
    teacher.net.train()  # distill must run it in eval mode yet give it back as it found it
    out = distill(new_model("mlp", ds, seed=0), teacher, ds, DistillConfig(train={"epochs": 1}))
    assert teacher.net.training
    teacher.net.eval()
    after = _state(teacher)
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # includes BatchNorm running stats
    for p, g in zip(teacher.net.parameters(), grads, strict=True):  # no backward pass reached the teacher
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert out.net is not teacher.net


def test_end_to_end_mlp_student_from_cnn_teacher(ds, teacher):
    cfg = DistillConfig(temperature=4.0, alpha=0.9, train={"epochs": 2, "seed": 1})
    out = distill(new_model("mlp", ds, seed=1), teacher, ds, cfg)
    assert out.config.arch == "mlp"
    assert out.lineage["dataset_id"] == ds.id
    assert out.lineage["teacher_id"] == teacher.id
    assert out.lineage["recipe"] == [cfg.to_dict()]
    assert len(out.history["curve"]) == 2
    x, y = ds.subset("val")
    assert float((out.logits(x).argmax(1) == y).mean()) > 0.5  # 10 classes: chance is 0.1


def test_cached_teacher_logits_are_the_teachers_logits_on_the_train_split(ds, teacher):
    x, _ = ds.subset("train")
    cached = teacher_logits(teacher, ds, TrainConfig())
    assert cached.shape == (len(x), ds.num_classes)
    assert np.allclose(cached.numpy(), teacher.logits(x), atol=1e-5)
    sub = teacher_logits(teacher, ds, TrainConfig(max_train_samples=200))
    assert sub.shape[0] == pytest.approx(200, abs=10)


def test_cached_and_live_teacher_give_the_same_student(ds, teacher):
    outs = []
    for cache in (True, False):
        # On the CPU in fp32: under a GPU's bf16 autocast the live teacher's logits are rounded, the cached are not.
        train = {"epochs": 1, "augment": "none", "max_train_samples": 400, "device": "cpu"}
        outs.append(distill(new_model("mlp", ds, seed=5), teacher, ds, DistillConfig(cache_teacher=cache, train=train)))
    for a, b in zip(outs[0].net.parameters(), outs[1].net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_teacher_matters(ds, teacher):
    # alpha=1 trains on the teacher alone: a teacher with shuffled outputs must give a different student.
    cfg = DistillConfig(alpha=1.0, train={"epochs": 1, "augment": "none", "max_train_samples": 400})
    scrambled = dataclasses.replace(teacher, net=torch.nn.Sequential(teacher.net, _Roll()))
    a = distill(new_model("mlp", ds, seed=2), teacher, ds, cfg)
    b = distill(new_model("mlp", ds, seed=2), scrambled, ds, cfg)
    assert not torch.allclose(next(a.net.parameters()), next(b.net.parameters()))


class _Roll(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K) -> (B, K), classes shifted by one
        return x.roll(1, dims=1)


def test_mismatched_classes_shapes_or_same_net_are_bad_input(ds, teacher):
    other = dataclasses.replace(teacher, classes=[f"c{i}" for i in range(10)])
    with pytest.raises(BadInput, match="classes"):
        distill(new_model("mlp", ds), other, ds)
    three = dataclasses.replace(teacher, classes=["a", "b", "c"])
    with pytest.raises(BadInput, match="classes"):
        distill(new_model("mlp", ds), three, ds)
    with pytest.raises(BadInput, match="same network"):
        distill(teacher, teacher, ds)


def test_cli_distill_saves_student_with_lineage(ws, ds, teacher, monkeypatch):
    from typer.testing import CliRunner

    from datamoat.cli import app
    from datamoat.models import load_model

    monkeypatch.setenv("DATAMOAT_HOME", str(ws.root))
    args = ["distill", teacher.id, "--arch", "mlp", "--hidden", "32", "--epochs", "1", "--augment", "none", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["teacher_id"] == teacher.id
    assert 0.0 <= out["val_accuracy"] <= 1.0
    assert out["config"]["temperature"] == 4.0 and out["config"]["train"]["epochs"] == 1
    saved = load_model(ws, out["model_id"])
    assert saved.config.hidden == (32,)
    assert saved.lineage["teacher_id"] == teacher.id and saved.lineage["dataset_id"] == ds.id
    assert saved.lineage["recipe"][-1] == out["config"]
    bad = CliRunner().invoke(app, ["distill", teacher.id, "--arch", "mlp", "--alpha", "2", "--json"])
    assert bad.exit_code != 0 and isinstance(bad.exception, BadInput)
