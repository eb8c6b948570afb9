"""`distill`: train a small student to match a larger teacher's outputs.

The teacher reaches the student only through its logits: the student is a
freshly initialised network of any architecture, and the teacher is run in
eval mode without gradients, so its weights and BatchNorm statistics never
change.

Why naive distillation often loses to plain training, and what this does:
- the teacher must see the *same* image as the student. With augmentation the
  teacher runs on the student's augmented batch (the `loss_fn` hook of
  `train` hands it over); without augmentation its logits are computed once
  for the train split and looked up by index, which is exact and cheap;
- the soft term is scaled by T^2 so its gradient keeps the size of the hard
  term's as T grows (Hinton et al., 2015), making alpha mean the same at any T;
- soft targets pass on what the teacher's better recipe bought (augmentation,
  capacity, regularisation), so they help when the teacher is clearly better
  than the student can get alone, when alpha is low (0.1-0.3; the T^2 factor
  already makes the soft term strong), and when the student trains long
  enough to follow them. `bench/bench_distill.py` holds a measured setup.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.configs import Config, check
from datamoat.data.dataset import SPLITS, Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.train.device import resolve_device
from datamoat.train.loop import TrainConfig, photo_stream, subsample, train

__all__ = ["DistillConfig", "TRAIN_DEFAULTS", "kd_loss", "distill", "teacher_logits"]

# Where distillation's defaults differ from plain training: more epochs and no
# early stopping, because a student follows soft targets slowly (it kept
# gaining long after the scratch student had peaked, in the measurements
# behind bench/bench_distill.py); too short a run is one way KD loses.
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 10, "patience": 0}


def _train_defaults() -> TrainConfig:
    return TrainConfig(**TRAIN_DEFAULTS)


@dataclasses.dataclass
class DistillConfig(Config):
    """How to distill: temperature, soft/hard mix, and the student's training.

    `train` is the student's `TrainConfig`, by default `TrainConfig` with
    `TRAIN_DEFAULTS`. A dict for it changes those fields over distillation's
    defaults (``train={"epochs": 2}`` keeps patience 0), as does
    ``replace(train__epochs=2)``; a `TrainConfig` is taken whole.
    `cache_teacher` computes the teacher's logits once when there is no
    augmentation (with augmentation the teacher has to see each augmented batch).

    >>> cfg = DistillConfig(temperature=4, alpha=0.3, train={"epochs": 2})
    >>> cfg.train.epochs, cfg.train.patience
    (2, 0)
    """

    # Version 2: `train` is a nested TrainConfig (version 1 stored its fields as a plain dict).
    VERSION: ClassVar[int] = 2

    temperature: float = 4.0
    # With the T^2 factor the soft term is already as strong as the hard one,
    # so a low alpha suits it (bench/bench_distill.py compares the settings).
    alpha: float = 0.3
    cache_teacher: bool = True
    train: TrainConfig = dataclasses.field(default_factory=_train_defaults)

    def validate(self) -> None:
        t, a = float(self.temperature), float(self.alpha)
        check(math.isfinite(t) and t > 0, f"temperature must be > 0, got {self.temperature}: try 2 to 8")
        check(0.0 <= a <= 1.0, f"alpha must be in [0, 1], got {self.alpha}: it weighs the soft term (1: teacher only)")
        check(
            not self.train.label_smoothing,
            "train.label_smoothing does not apply to distillation (the teacher's soft targets replace it): leave it 0",
        )

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        # Version 1's `train` dict held every TrainConfig field: as a dict it loads over the same defaults.
        return dict(d) if version == 1 else super().upgrade(d, version)

    def train_config(self) -> TrainConfig:
        """The student's `TrainConfig` (the `train` field)."""
        return self.train


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, T: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y).

    Logits are (B, K), labels (B,); the KL is averaged over the batch.

    >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    >>> float(kd_loss(s, t, torch.tensor([0]), T=4.0, alpha=1.0))
    0.0
    """
    log_p_s = F.log_softmax(student_logits / T, dim=1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)  # (B, K)
    soft = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, y)
    return alpha * T * T * soft + (1.0 - alpha) * hard


def _check_pair(student: Model, teacher: Model, data: Dataset) -> None:
    if student.net is teacher.net:
        raise BadInput("student and teacher are the same network: build the student with new_model(arch, data)")
    if list(student.classes) != list(teacher.classes):
        raise BadInput(
            f"teacher classes {teacher.classes} differ from student classes {student.classes}: "
            "build the student for the teacher's dataset"
        )
    if list(teacher.classes) != list(data.classes):
        raise BadInput(f"teacher classes {teacher.classes} differ from dataset {data.name}'s {data.classes}")
    shape = (teacher.config.in_channels, *teacher.config.image_size)
    if tuple(data.input_shape) != shape:
        raise BadInput(f"teacher expects inputs {shape} but dataset {data.name} has {data.input_shape}")


def _renormalise(xb: torch.Tensor, student: Model, teacher: Model) -> torch.Tensor:
    """The student's normalised batch in the teacher's normalisation, (B, C, H, W)."""
    ps, pt = student.preprocess, teacher.preprocess
    if ps == pt:
        return xb
    ms, ss = (torch.tensor(ps[k], dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1) for k in ("mean", "std"))
    mt, st = (torch.tensor(pt[k], dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1) for k in ("mean", "std"))
    scaled = (xb * ss + ms) / float(ps["scale"])  # back to raw pixel units
    return (scaled * float(pt["scale"]) - mt) / st


def teacher_logits(teacher: Model, data: Dataset, config: TrainConfig) -> torch.Tensor:
    """The teacher's eval-mode logits for the train rows `train` uses, (N, K).

    Rows follow `train`'s (possibly subsampled) train split, so the loss hook's
    `idx` indexes them directly.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> tuple(teacher_logits(new_model("mlp", ds), ds, TrainConfig(max_train_samples=100)).shape)
    (100, 10)
    """
    rows = np.flatnonzero(data.split == SPLITS["train"])
    keep = subsample(data.y[rows], config.max_train_samples, config.seed)
    return torch.from_numpy(teacher.logits(data.x, rows=rows[keep]))


def distill(
    student: Model, teacher: Model, data: Dataset, config: DistillConfig | None = None, *, progress: bool = False
) -> Model:
    """Train `student` on `data` against `teacher`'s soft targets (see `kd_loss`).

    The student keeps its own architecture and initial weights (build it with
    `new_model`); the teacher is only ever run forward. Returns the trained
    student with `lineage` = {dataset_id, teacher_id, recipe: [..., config]}
    and `history` from `train`.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> from datamoat.workspace import Workspace
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> teacher = train(new_model("cnn_small", ds), ds, TrainConfig(epochs=2), progress=False)
    >>> m = distill(new_model("mlp", ds), teacher, ds, DistillConfig(train={"epochs": 1}))
    >>> m.lineage["recipe"][-1]["type"]
    'DistillConfig'
    """
    cfg = config or DistillConfig()
    _check_pair(student, teacher, data)
    tcfg = cfg.train
    was_training = teacher.net.training
    teacher.net.eval()  # BatchNorm uses its running stats and never updates them
    try:
        fixed_inputs = tcfg.augment == "none" and not photo_stream(data, tcfg)  # else each batch is new
        cached = teacher_logits(teacher, data, tcfg) if cfg.cache_teacher and fixed_inputs else None

        def loss_fn(out: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if cached is not None:
                t_out = cached[idx].to(out.device)  # (B, K)
            else:
                with torch.no_grad():  # xb is the augmented batch the student just saw
                    t_out = teacher.net(_renormalise(xb, student, teacher)).float()  # (B, K)
            return kd_loss(out, t_out, yb, cfg.temperature, cfg.alpha)

        teacher.net.to(resolve_device(tcfg.device))  # beside the student
        trained = train(student, data, tcfg, progress=progress, loss_fn=loss_fn)
    finally:
        teacher.net.to("cpu")
        teacher.net.train(was_training)
    lineage = dict(trained.lineage)
    lineage["teacher_id"] = teacher.id
    # `train` appended the TrainConfig; the DistillConfig holds it and more.
    lineage["recipe"] = [*lineage["recipe"][:-1], cfg.to_dict()]
    return dataclasses.replace(trained, lineage=lineage)
