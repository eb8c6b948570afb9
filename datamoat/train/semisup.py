"""Semi-supervised training with FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised
Learning with Consistency and Confidence"): `train(..., unlabeled=pool)` with `TrainConfig.semisup`.

Each step takes the labelled batch as `train` does and `mu` times as many unlabeled images. Each
unlabeled image gets a weak view (flip and shift) and a strong one (`datamoat.data.views.rand_augment`);
where the model's softmax on the weak view reaches `threshold`, its argmax is the pseudo-label the
strong view is trained toward (cross-entropy, weight `lambda_u`); the others contribute nothing. All
three batches go through the network in one pass, so BatchNorm sees them together, as in the paper.

The pseudo-labels live for one step: nothing here writes a dataset version, so they can never pass
for labels a person gave. The model's lineage records the pool, the threshold and `mu`, and per epoch
the fraction of unlabeled images that passed the threshold (the mask rate). Pool images carry no
label, so the pseudo-labels' accuracy cannot be measured here; their class counts are recorded
instead, which shows a run that drifts toward a few classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset, read_rows
from datamoat.data.pool import pool_rows
from datamoat.data.transforms import AUGMENTATIONS, augment
from datamoat.data.views import rand_augment, simclr_view
from datamoat.errors import BadInput
from datamoat.models.model import Model

__all__ = ["FixMatchConfig", "FixMatch", "STRONG", "check_pool", "pseudo_label_loss"]

STRONG = ("randaugment", "simclr")


@dataclasses.dataclass
class FixMatchConfig(Config):
    """FixMatch's knobs. `mu` is 3, not the paper's 7: each step's cost grows with 1 + 2 mu images per
    labelled one, and 7 makes a CPU step 15 times a supervised one."""

    threshold: float = 0.95  # the confidence a pseudo-label needs
    mu: int = 3  # unlabeled images per labelled one in a step
    lambda_u: float = 1.0  # the unlabeled loss's weight
    weak: str = "crop_flip"  # the unlabeled images' weak view (a `datamoat.data.transforms` augmentation)
    strong: str = "randaugment"  # or "simclr": a crop, flip and intensity jitter
    strong_ops: int = 2  # RandAugment's operations per image
    cutout: float = 0.5  # Cutout's side, a fraction of the image's (0: off)

    def validate(self) -> None:
        check(0 < self.threshold <= 1, f"threshold must be in (0, 1], got {self.threshold}")
        check(self.mu >= 1, f"mu must be at least 1 (unlabeled images per labelled one), got {self.mu}")
        check(self.lambda_u >= 0, f"lambda_u must be >= 0, got {self.lambda_u}")
        check_choice("weak augmentation", self.weak, AUGMENTATIONS)
        check_choice("strong augmentation", self.strong, STRONG)
        check(self.strong_ops >= 1, f"strong_ops must be at least 1, got {self.strong_ops}")
        check(0 <= self.cutout < 1, f"cutout must be in [0, 1), got {self.cutout}")


def pseudo_label_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled loss: (loss, mask (U,) bool, pseudo-labels (U,)) for logits (U, K) of the
    weak and strong views. Only images whose weak view's top probability reaches `threshold` count;
    the loss is averaged over all U images (the paper's), so few confident ones weigh little.

    >>> weak = torch.log(torch.tensor([[0.97, 0.03], [0.6, 0.4]]))
    >>> loss, mask, pseudo = pseudo_label_loss(weak, torch.zeros(2, 2), 0.95)
    >>> mask.tolist(), pseudo.tolist(), round(float(loss), 4)
    ([True, False], [0, 0], 0.3466)
    """
    probs = torch.softmax(weak_logits.detach().float(), dim=1)  # (U, K): no gradient through the target
    conf, pseudo = probs.max(1)  # (U,), (U,)
    mask = conf >= threshold
    per_image = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")  # (U,)
    return (per_image * mask.float()).mean(), mask, pseudo


def check_pool(pool: Dataset, model: Model) -> np.ndarray:
    """The pool's unlabeled rows, or a one-line `BadInput` when it has none or its images do not fit `model`."""
    rows = pool_rows(pool)
    if not len(rows):
        raise BadInput(f"dataset {pool.name} has no unlabeled images: give --unlabeled a pool (`datamoat data pool`)")
    want = (model.config.in_channels, *model.config.image_size)
    if tuple(pool.input_shape) != want:
        raise BadInput(
            f"pool {pool.name} holds images of shape {pool.input_shape} but the model takes {want}: "
            "make the pool from images like the dataset's"
        )
    return rows


class FixMatch:
    """The unlabeled half of a FixMatch step inside `train`: `inputs` appends the unlabeled images'
    weak and strong views to the labelled batch, `loss` turns the network's outputs on them into the
    unlabeled loss and counts what passed the threshold."""

    def __init__(
        self, cfg: FixMatchConfig, pool: Dataset, model: Model, device: torch.device, seed: int, rank: int = 0
    ) -> None:
        rows = check_pool(pool, model)
        self.cfg, self.pool, self.model, self.dev = cfg, pool, model, device
        self.rows, self.seed, self.rank = rows, seed, rank
        self.mean, self.std = model.preprocess["mean"], model.preprocess["std"]
        self.start(0)

    def start(self, epoch: int) -> None:
        """Begin an epoch: its draws are seeded by (seed, rank, epoch), so a resumed run repeats them."""
        self.g = torch.Generator().manual_seed(hash((self.seed, self.rank, epoch, 7919)) & 0x7FFF_FFFF)
        self.order = torch.randperm(len(self.rows), generator=self.g).numpy()
        self.at = 0
        # summed where the logits are: reading them back every step would stall a GPU's queue
        self.seen = 0
        self.passed = torch.zeros((), dtype=torch.long, device=self.dev)
        self.loss_sum = torch.zeros((), device=self.dev)
        self.counts = torch.zeros(len(self.model.classes), dtype=torch.long, device=self.dev)

    def _next_rows(self, k: int) -> np.ndarray:
        """The next `k` pool rows of this epoch's order, reshuffled each time it runs out."""
        out = []
        while k:
            if self.at == len(self.order):
                self.order = torch.randperm(len(self.rows), generator=self.g).numpy()
                self.at = 0
            take = self.order[self.at : self.at + k]
            self.at += len(take)
            k -= len(take)
            out.append(take)
        return self.rows[np.sort(np.concatenate(out))]

    def inputs(self, xb: torch.Tensor) -> torch.Tensor:
        """The labelled batch (B, C, H, W) followed by mu B unlabeled images' weak and strong views:
        (B + 2 mu B, C, H, W), on `xb`'s device."""
        rows = self._next_rows(self.cfg.mu * len(xb))
        xu = self.model.to_tensor(read_rows(self.pool.x, rows)).to(xb.device, non_blocking=True)  # (U, C, H, W)
        weak = augment(xu, self.cfg.weak, self.g)  # the draws come from the CPU generator, the pixels stay put
        if self.cfg.strong == "simclr":
            strong = simclr_view(xu, self.mean, self.std, self.g)
        else:
            strong = rand_augment(xu, self.mean, self.std, self.g, ops=self.cfg.strong_ops, cutout=self.cfg.cutout)
        return torch.cat([xb, weak, strong])

    def loss(self, out_u: torch.Tensor) -> torch.Tensor:
        """The weighted unlabeled loss from the network's logits on `inputs`' unlabeled part (2U, K)."""
        weak, strong = out_u.chunk(2)
        loss, mask, pseudo = pseudo_label_loss(weak, strong, self.cfg.threshold)
        self.seen += len(mask)
        self.passed += mask.sum()
        self.loss_sum += loss.detach() * len(mask)
        self.counts += torch.bincount(pseudo[mask], minlength=len(self.counts))
        return self.cfg.lambda_u * loss

    def epoch_stats(self) -> dict[str, Any]:
        """This epoch's mask rate, unlabeled loss and pseudo-label counts per class (this process's)."""
        n = max(self.seen, 1)
        return {
            "mask_rate": int(self.passed) / n,
            "unlabeled_loss": float(self.loss_sum) / n,
            "unlabeled_seen": self.seen,
            "pseudo_labels": self.counts.tolist(),
        }

    def record(self, curve: list[dict[str, Any]]) -> dict[str, Any]:
        """What the model's lineage keeps: the pool, the knobs, and the mask rate of each epoch."""
        return {
            "method": "fixmatch",
            "pool_id": self.pool.id,
            "pool_images": len(self.rows),
            "threshold": self.cfg.threshold,
            "mu": self.cfg.mu,
            "lambda_u": self.cfg.lambda_u,
            "strong": self.cfg.strong,
            "mask_rate": [p.get("mask_rate") for p in curve],
        }
