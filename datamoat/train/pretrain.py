"""`pretrain`: self-supervised pretraining of a zoo architecture's backbone on unlabeled images.

The method is SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): two random views of each image (`datamoat.data.views.simclr_view`) go through
the backbone and a small projection head, and the NT-Xent loss pulls each image's two views
together and pushes them from the batch's other images. Chosen over the alternatives for a small
CPU budget: a contrastive loss has the other images of the batch as negatives, so it cannot collapse
to a constant and needs none of the tricks that keep SimSiam and BYOL from collapsing (a predictor,
a stop-gradient, a momentum encoder, whose behaviour depends on tuning); it works at batch 256; and
it trains any of the zoo's networks, convolutional or not, where a masked-image method needs a
vision transformer and far more epochs. Two choices depart from the paper's CIFAR-10 recipe for a
budget of a few epochs, both chosen by a linear probe of the backbone on Fashion-MNIST: the
projection head has BatchNorm (as SimCLR v2's), and the temperature is 0.2, not 0.5. The small
CNNs' backbone is their convolutional trunk (see `backbone_of`).

What it writes is the network without its head: a state dict stored in the workspace's object store
(content-addressed) with a run row (kind "pretrain") that records the config, the pool it saw and
the loss per epoch. `datamoat train --weights pretrain:<run id>` (or the sha256) starts from it, the
head freshly initialised for the dataset's classes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import SPLITS, Dataset, read_rows
from datamoat.data.views import simclr_view
from datamoat.errors import BadInput, NotFound
from datamoat.models.model import Model
from datamoat.models.zoo import build, preset
from datamoat.train.device import DEVICES, autocast, resolve_device, resolve_precision
from datamoat.train.epoch import progress_bar
from datamoat.train.loop import set_threads
from datamoat.train.optim import head_parameters
from datamoat.workspace import Workspace

__all__ = [
    "PRETRAIN_PREFIX",
    "PretrainConfig",
    "Pretrained",
    "pretrain",
    "nt_xent",
    "backbone_of",
    "find_pretrained",
    "pretrained_file",
]

PRETRAIN_PREFIX = "pretrain:"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass
class PretrainConfig(Config):
    """How to pretrain. Defaults suit a small CNN on 28x28 grayscale images on 2 cores."""

    method: str = "simclr"
    # Longer pretraining keeps paying in SimCLR (Chen et al. 2020); 20 against 5 was decided by the
    # labels benchmark's one-seed pilot (bench/results/labels-pilot-pretrain20.md).
    epochs: int = 20
    batch_size: int = 256  # images per step; the loss sees twice as many views
    lr: float = 1e-3  # AdamW with a cosine decay: LARS is for SimCLR's batches of thousands
    weight_decay: float = 1e-6
    temperature: float = 0.2
    projection_dim: int = 64
    projection_hidden: int = 256  # the projection head's hidden width, at most the representation's
    strength: float = 0.5  # of the intensity (colour) jitter: factors in 1 +- 0.8 * strength
    min_scale: float = 0.2  # the smallest crop, a fraction of the image's area
    flip: bool = True
    seed: int = 0
    threads: int = 0  # 0: torch's default, every core
    max_samples: int = 0  # 0: every image
    device: str = "auto"

    def validate(self) -> None:
        check_choice("method", self.method, ("simclr",))
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        check(
            self.batch_size >= 2, f"batch_size must be at least 2 (pairs of views need others), got {self.batch_size}"
        )
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.projection_dim >= 1, f"projection_dim must be at least 1, got {self.projection_dim}")
        check(self.projection_hidden >= 1, f"projection_hidden must be at least 1, got {self.projection_hidden}")
        check(0 <= self.strength <= 1.25, f"strength must be in [0, 1.25] (factors stay positive), got {self.strength}")
        check(0 < self.min_scale <= 1, f"min_scale must be in (0, 1], got {self.min_scale}")
        check(self.threads >= 0, "threads must be >= 0 (0 uses every core)")
        check(self.max_samples >= 0, "max_samples must be >= 0 (0 uses all)")
        check_choice("device", self.device, DEVICES)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Where a pretrained backbone is, and what made it."""

    run_id: str
    sha256: str  # of the checkpoint's bytes in the object store
    location: str  # its path (or URL) in the object store
    arch: str
    pool_id: str
    images: int
    input_shape: tuple[int, int, int]
    history: dict[str, Any]

    @property
    def ref(self) -> str:
        """What `train --weights` takes: ``pretrain:<run id>``."""
        return PRETRAIN_PREFIX + self.run_id


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of 2B projections: rows i and i + B are two views of one image.

    Each view's positive is its twin; the other 2B - 2 views are its negatives.

    >>> z = torch.eye(4)[[0, 1, 0, 1]]  # two views each of two images, twins identical
    >>> round(float(nt_xent(z, 0.1)), 4)
    0.0001
    """
    b = len(z) // 2
    z = F.normalize(z.float(), dim=1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B) cosine similarities
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))  # never itself
    twin = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)  # (2B,)
    return F.cross_entropy(sim, twin)


def backbone_of(net: nn.Module) -> tuple[nn.Module, str]:
    """`net` without its head, returning the representation the head read, and the head's state_dict
    prefix (what the checkpoint leaves out and `train --weights` starts fresh). Changes `net` in place.

    The head of the zoo's small CNNs is their whole fully connected `classifier`: its hidden layer
    narrows the convolutional features to a few dozen numbers, a bottleneck that a contrastive loss
    would squeeze further (SimCLR's representation is the convolutional trunk's, the MLP above it
    its projection head). Elsewhere it is the last Linear layer: the photo backbones' classifier,
    as `datamoat.models.backbones.head_name` names it, and the MLP's output layer.

    >>> from datamoat.models.zoo import build, preset
    >>> body, head = backbone_of(build(preset("cnn_small", in_channels=1, image_size=(8, 8), num_classes=3)))
    >>> head, tuple(body(torch.zeros(2, 1, 8, 8)).shape)
    ('classifier', (2, 128))
    """
    from datamoat.models.zoo import ConvNet

    if isinstance(net, ConvNet):
        net.classifier = nn.Sequential(nn.Flatten())  # (B, C, H, W) features -> (B, C * H * W)
        return net, "classifier"
    head = head_parameters(net)[0].rpartition(".")[0]
    parent, _, leaf = head.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())
    return net, head


def _rows(pool: Dataset) -> np.ndarray:
    """The images to learn from: every row but the test split's, whose images must stay unseen for
    the test accuracy to mean what it says (a pool version holds only unlabeled rows)."""
    return np.flatnonzero(pool.split != SPLITS["test"])


def pretrain(
    ws: Workspace,
    pool: Dataset,
    arch: str = "cnn_medium",
    config: PretrainConfig | None = None,
    *,
    name: str | None = None,
    progress: bool = False,
) -> Pretrained:
    """Pretrain `arch`'s backbone on `pool`'s images (every row but the test split's: labels unused),
    streamed batch by batch, and store it in `ws` with a run row. Returns where it is.

    >>> pre = pretrain(ws, pool, "cnn_small", PretrainConfig(epochs=1))  # doctest: +SKIP
    >>> pre.ref  # doctest: +SKIP
    'pretrain:5f2c0e6a9b1d'
    """
    cfg = config or PretrainConfig()
    rows = _rows(pool)
    if len(rows) < 2:
        raise BadInput(
            f"dataset {pool.name} has {len(rows)} image(s) outside its test split: pretraining needs at least 2; "
            "give a pool of unlabeled images (`datamoat data pool`) or a larger version"
        )
    if cfg.max_samples and cfg.max_samples < len(rows):
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_samples, replace=False))
    n = len(rows)
    batch = min(cfg.batch_size, n)
    steps = n // batch + (1 if n % batch > 1 else 0)  # a last batch of one has no negatives: dropped
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    dev = resolve_device(cfg.device)
    precision = resolve_precision("auto", dev)
    c, h, w = pool.input_shape
    mcfg = preset(arch, in_channels=c, image_size=(h, w), num_classes=max(2, pool.num_classes))
    net, head = backbone_of(build(mcfg))
    reader = Model(net, mcfg, list(pool.classes), dict(pool.preprocess))  # only for `to_tensor`
    mean, std = pool.preprocess["mean"], pool.preprocess["std"]
    net.eval()
    with torch.no_grad():
        width = int(net(torch.zeros(2, c, h, w)).flatten(1).shape[1])  # the representation's size
    hidden = min(width, cfg.projection_hidden)
    proj = nn.Sequential(  # SimCLR v2's head: BatchNorm between the layers makes the first epochs count
        nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cfg.projection_dim)
    )
    net.to(dev).train()
    proj.to(dev).train()
    params = [*net.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    grad_scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    run_id = ws.new_id()
    name = name or f"pretrain-{arch}-{pool.name}"
    ws.insert(
        "runs",
        {
            "id": run_id,
            "name": name,
            "dataset_id": pool.id,
            "arch": arch,
            "status": "running",
            "config": {"kind": "pretrain", "pretrain": cfg.to_dict(), "model": mcfg.to_dict()},
        },
    )
    curve: list[dict[str, Any]] = []
    try:
        with progress_bar() if progress else _NoBar() as bar:
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                task = bar.add_task(f"pretrain {epoch + 1}/{cfg.epochs}", total=steps, loss=float("nan"))
                perm = torch.randperm(n, generator=g).numpy()
                loss_sum, seen = 0.0, 0
                for s in range(steps):
                    at = rows[np.sort(perm[s * batch : (s + 1) * batch])]  # sorted: the mapped file reads forward
                    xb = reader.to_tensor(read_rows(pool.x, at)).to(dev)  # (B, C, H, W)
                    v1 = simclr_view(xb, mean, std, g, strength=cfg.strength, min_scale=cfg.min_scale, flip=cfg.flip)
                    v2 = simclr_view(xb, mean, std, g, strength=cfg.strength, min_scale=cfg.min_scale, flip=cfg.flip)
                    with autocast(dev, precision):
                        z = proj(net(torch.cat([v1, v2])).flatten(1))  # (2B, D)
                    loss = nt_xent(z, cfg.temperature)
                    opt.zero_grad(set_to_none=True)
                    grad_scaler.scale(loss).backward()
                    grad_scaler.step(opt)
                    grad_scaler.update()
                    sched.step()
                    loss_sum += float(loss.detach()) * len(at)
                    seen += len(at)
                    bar.update(task, completed=s + 1, loss=loss_sum / seen)
                secs = time.perf_counter() - t0
                curve.append(
                    {"epoch": epoch + 1, "loss": loss_sum / seen, "seconds": secs, "images_per_s": seen / secs}
                )
                bar.remove_task(task)
        if not all(math.isfinite(p["loss"]) for p in curve):
            raise BadInput(f"the contrastive loss diverged (lr {cfg.lr}): lower --lr or raise --temperature")
    except BaseException:
        ws.update("runs", run_id, status="failed")
        raise
    net = net.to("cpu").eval()
    buf = io.BytesIO()
    torch.save({k: v.detach().contiguous() for k, v in net.state_dict().items()}, buf)
    sha = ws.put_bytes(buf.getvalue())
    history = {"curve": curve, "seconds": sum(p["seconds"] for p in curve), "device": str(dev), "steps": steps}
    result = {
        "weights_sha": sha,
        "ref": PRETRAIN_PREFIX + run_id,
        "head": head,  # the classifier prefix the checkpoint leaves out
        "images": n,
        "input_shape": [c, h, w],
        "preprocess": dict(pool.preprocess),
        "history": history,
    }
    ws.update("runs", run_id, status="completed", result=result)
    return Pretrained(run_id, sha, ws.object_location(sha), arch, pool.id, n, (c, h, w), history)


class _NoBar:
    """A progress bar that shows nothing (no `progress`)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def remove_task(self, *args: Any) -> None:
        return None


def find_pretrained(ws: Workspace, ref: str) -> dict[str, Any] | None:
    """The completed pretrain run `ref` names: ``pretrain:<run id, prefix or name>``, or the sha256
    of its checkpoint; None when `ref` is neither (a path or a hub reference)."""
    if ref.startswith(PRETRAIN_PREFIX):
        row = ws.resolve("runs", ref[len(PRETRAIN_PREFIX) :])
        if (row.get("config") or {}).get("kind") != "pretrain":
            raise BadInput(f"run {row['id']} is a training run, not a pretrain run: give a `datamoat pretrain` run id")
    elif _SHA256.fullmatch(ref) and not Path(ref).exists():
        found = [r for r in ws.rows("runs") if (r.get("result") or {}).get("weights_sha") == ref]
        if not found:
            raise NotFound(f"no pretrain run stored a checkpoint {ref[:12]}...: `datamoat runs list` shows them")
        row = found[-1]
    else:
        return None
    if row["status"] != "completed":
        raise BadInput(f"pretrain run {row['id']} is {row['status']}, not completed: run `datamoat pretrain` again")
    return row


def pretrained_file(ws: Workspace, sha: str) -> Path:
    """A local file holding the object store's checkpoint `sha`: the blob itself, or a copy of a
    remote one under the workspace."""
    if ws.objects_url is None:
        return ws.object_path(sha)
    path = ws.path_for("cache") / f"{sha}.pt"
    if not path.exists():
        from datamoat.workspace import atomic_write

        atomic_write(path, ws.get_bytes(sha))
    return path
