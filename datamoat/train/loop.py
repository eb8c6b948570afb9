"""`train`: fit a model on a dataset version, with a learning curve.

Array datasets train from in-memory tensors (no DataLoader workers: the split
fits in memory and workers would fight the math threads). A dataset rendered
from photos trains on augmented crops of the original photos instead, decoded
in DataLoader worker processes (`datamoat.data.photo_render`). Each epoch records train loss, val accuracy and
seconds; the run checkpoints every epoch so it can resume, stops early when
val accuracy stops improving, and says when it hit a plateau.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamoat.configs import Config, check, check_choice, config_from_dict
from datamoat.data.dataset import SPLITS, Dataset, read_rows
from datamoat.data.transforms import AUGMENTATIONS, augment
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.train import distributed
from datamoat.train.device import DEVICES, PRECISIONS, autocast, resolve_device, resolve_precision
from datamoat.train.epoch import (
    RankBatches,
    batch_total,
    clone_state,
    detect_plateau,
    epoch_batches,
    load_checkpoint,
    progress_bar,
    save_checkpoint,
)
from datamoat.train.optim import head_parameters, make_optimizer, make_scheduler
from datamoat.train.semisup import FixMatch, FixMatchConfig

__all__ = [
    "TrainConfig",
    "train",
    "photo_stream",
    "set_threads",
    "PLATEAU_ADVICE",
]

PLATEAU_ADVICE = "more data, cleaner data, or a different model"


@dataclasses.dataclass
class TrainConfig(Config):
    """How to train. Defaults suit a small CNN on Fashion-MNIST on 2 cores."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    # Fine-tuning from pretrained weights: `probe_epochs` train the classifier alone first (a linear
    # probe), then every layer trains with the body's learning rate scaled by `body_lr_scale`;
    # `warmup_epochs` ramp the learning rate up linearly (onecycle has its own warm-up).
    probe_epochs: int = 0
    body_lr_scale: float = 1.0
    warmup_epochs: float = 0.0
    augment: str = "none"
    patience: int = 3
    min_delta: float = 1e-3
    seed: int = 0
    threads: int = 0  # 0: torch's default, every core (or OMP_NUM_THREADS); photo streams leave workers theirs
    max_train_samples: int = 0
    # A dataset rendered from photos trains on augmented crops of the original photos, decoded in
    # `workers` DataLoader processes (-1: every core but one); False trains on the rendered pixels.
    photo_stream: bool = True
    workers: int = -1
    # auto: CUDA where present, else MPS, else the CPU (fp32, deterministic). precision auto: bf16
    # autocast on a GPU with bf16, fp16 with a gradient scaler on older ones, fp32 elsewhere.
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True  # CUDA only: the memory layout its convolution kernels prefer
    # Under DDP, BatchNorm normalises by the global batch's statistics, so N processes train what one
    # does; False: each rank's own share (no collectives in the forward pass, more noise in small shares).
    sync_batchnorm: bool = True
    semisup: FixMatchConfig | None = None  # FixMatch on `train(unlabeled=...)`'s pool (`semisup`)

    def validate(self) -> None:
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        check(self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}")
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        check_choice("schedule", self.schedule, ("onecycle", "cosine", "none"))
        check_choice("augmentation", self.augment, AUGMENTATIONS)
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        check(
            0 <= self.probe_epochs < self.epochs,
            f"probe_epochs must be in [0, epochs): {self.probe_epochs} of {self.epochs} leaves no full fine-tuning",
        )
        check(0 < self.body_lr_scale <= 1, f"body_lr_scale must be in (0, 1], got {self.body_lr_scale}")
        check(0 <= self.warmup_epochs < self.epochs, f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        check(
            not (self.warmup_epochs and self.schedule == "onecycle"),
            "warmup_epochs applies to the cosine and none schedules (onecycle warms up itself): set --schedule cosine",
        )
        check(self.patience >= 0, "patience must be >= 0 (0 turns early stopping off)")
        check(self.threads >= 0, "threads must be >= 0 (0 uses every core)")
        check(self.max_train_samples >= 0, "max_train_samples must be >= 0 (0 uses all)")
        check(self.workers >= -1, "workers must be >= -1 (-1: every core but one, 0: decode in the main process)")
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice: every core, or OMP_NUM_THREADS


def set_threads(n: int = 0) -> int:
    """Use `n` torch threads; 0 restores torch's default (every core unless OMP_NUM_THREADS says
    otherwise), even after an earlier call chose fewer. Returns the number in use."""
    torch.set_num_threads(n or _DEFAULT_THREADS)
    return torch.get_num_threads()


def photo_stream(data: Dataset, config: TrainConfig) -> bool:
    """Whether `train` feeds `data`'s train split as augmented crops of the original photos."""
    return config.photo_stream and bool(data.manifest.get("photos")) and data.workspace is not None


def subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified subsample of size ~n (all if n is 0)."""
    if not n or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(n * len(idx) / len(y))))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


@torch.no_grad()
def evaluate_split(model: Model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(loss, accuracy) of `model` over (normalised (B, C, H, W), labels (B,)) batches, in eval mode,
    on the device its weights are on. Under DDP each rank passes its own share; the sums are shared."""
    model.net.eval()
    dev = next(model.net.parameters()).device
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in batches:
        yb = yb.to(dev)  # (B,)
        out = model.net(xb.to(dev)).float()  # (B, K)
        loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        seen += len(yb)
    model.net.train()
    total_loss, total_correct, total = distributed.all_sum([loss_sum, correct, seen], dev)
    n = max(total, 1)
    return total_loss / n, total_correct / n


def _batch_reader(
    model: Model, x: np.ndarray, rows: np.ndarray, dev: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reads the normalised train batch at some indices into `rows`. On the CPU each batch is read
    from the (mapped) images when it is drawn, so memory holds a batch, not the split. On a GPU with
    room for four times the split, the split is held there once: a batch is then a gather on the
    device, not a read and a copy."""
    if dev.type == "cuda" and 16 * len(rows) * int(np.prod(x.shape[1:])) < torch.cuda.mem_get_info(dev)[0]:
        held = torch.cat(
            [model.to_tensor(read_rows(x, rows[i : i + 4096])).to(dev) for i in range(0, len(rows), 4096)]
        )  # (N, C, H, W) float32, built in chunks so the host never holds the whole split

        return lambda idx: held[idx.to(dev)]
    return lambda idx: model.to_tensor(read_rows(x, rows[idx.numpy()]))


def train(
    model: Model,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    unlabeled: Dataset | None = None,
) -> Model:
    """Train `model` on `data`'s train split, validating on its val split.

        Returns a new `Model` holding the best-val-accuracy weights, with
        `history` (the learning curve, best epoch, plateau) and the config
        appended to `lineage["recipe"]`. `loss_fn(logits, y, x, idx)` replaces
        cross-entropy (distillation uses it). Under torchrun each process trains
    its share of every batch (DistributedDataParallel, `distributed`). With
    `unlabeled` (a pool version) it trains semi-supervised (`cfg.semisup`,
    FixMatch by default; `datamoat.train.semisup`).

        >>> from datamoat.data import import_digits
        >>> from datamoat.models import new_model
        >>> from datamoat.workspace import Workspace
        >>> ws = Workspace.init("/tmp/dm-doc")
        >>> ds = import_digits(ws)
        >>> m = train(new_model("mlp", ds), ds, TrainConfig(epochs=1), progress=False)
        >>> len(m.history["curve"])
        1
    """
    cfg = config or TrainConfig()
    if unlabeled is not None and cfg.semisup is None:
        cfg = cfg.replace(semisup=FixMatchConfig())
    check(unlabeled is not None or cfg.semisup is None, "semisup trains on unlabeled images: pass unlabeled=POOL")
    if tuple(data.input_shape) != (model.config.in_channels, *model.config.image_size):
        raise BadInput(
            f"model expects inputs {(model.config.in_channels, *model.config.image_size)} but dataset "
            f"{data.name} has {data.input_shape}: build the model for this dataset"
        )
    if data.num_classes != model.config.num_classes:
        raise BadInput(f"model has {model.config.num_classes} classes but dataset has {data.num_classes}")
    streaming = photo_stream(data, cfg)
    if streaming and not cfg.threads:
        # Decode workers need cores of their own: math threads on every core fight them (measured in
        # bench/results/photo_pipeline.md), so the math gets what the workers leave.
        from datamoat.data.photo_render import default_workers

        workers = default_workers() if cfg.workers < 0 else cfg.workers
        set_threads(max(1, _DEFAULT_THREADS - workers))
    else:
        set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # the epochs' order: seeded alike on every rank
    dev = resolve_device(cfg.device)
    rank, world = distributed.setup(dev)
    dev = distributed.local_device(dev)
    semi = (
        None
        if unlabeled is None or cfg.semisup is None
        else FixMatch(cfg.semisup, unlabeled, model, dev, cfg.seed, rank)
    )
    precision = resolve_precision(cfg.precision, dev)
    check(
        cfg.batch_size >= 2 * world,
        f"batch_size {cfg.batch_size} is the global batch: give each of {world} processes 2",
    )

    train_rows = np.flatnonzero(data.split == SPLITS["train"])
    keep = subsample(data.y[train_rows], cfg.max_train_samples, cfg.seed)
    y_tr = torch.from_numpy(data.y[train_rows[keep]])  # (N,)
    n = len(y_tr)
    # A final batch of one sample breaks BatchNorm; drop such a remainder (whatever `world` is, so a
    # run resumes on another number of processes with the same schedule).
    steps = n // cfg.batch_size + (1 if n % cfg.batch_size > 1 else 0)
    stream = None
    if streaming:
        from datamoat.data.photo_render import photo_loader

        sampler = RankBatches(n, cfg.batch_size, steps, rank, world)
        # The processes on this machine share its cores: also those that train alone (`distributed.alone`).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = cfg.workers if cfg.workers >= 0 or local <= 1 else max(0, (os.cpu_count() or 1) // local - 1)
        stream = photo_loader(
            data, train_rows[keep], batch_size=cfg.batch_size, workers=workers, seed=cfg.seed, batch_sampler=sampler
        )
        rows_at = None  # the photos stay in their shards
    else:
        rows_at = _batch_reader(model, data.x, train_rows[keep], dev)
    # This rank's share of the val split, batch by batch, so memory does not grow with the split: a
    # photo version is decoded from its shards (the rendered pixels, bit for bit), arrays are read.
    # Batches of the training batch size: a larger one would make the activations of a val split
    # that is smaller than it grow with the split, and the peak of the run with it.
    val_rows = np.flatnonzero(data.split == SPLITS["val"])[rank::world]  # (V,)
    no_val = not (data.split == SPLITS["val"]).any()  # with no val split there is nothing to select on
    val_batch = cfg.batch_size
    if streaming:
        from datamoat.data.photo_render import pixel_batches

        def val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for xb, at in pixel_batches(data, val_rows, batch_size=val_batch, workers=workers):
                yield model.to_tensor(xb), torch.from_numpy(data.y[at])
    else:

        def val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for i in range(0, len(val_rows), val_batch):
                at = val_rows[i : i + val_batch]  # (B,)
                yield model.to_tensor(read_rows(data.x, at)), torch.from_numpy(data.y[at])

    if dev.type == "cuda":  # fixed input shapes: let cuDNN time its convolution algorithms once
        torch.backends.cudnn.benchmark = True
    net = model.net.to(dev)
    if dev.type == "cuda" and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net.train()
    # Under DDP the forward pass goes through the wrapper, which averages the gradients over ranks;
    # the optimiser, checkpoints and the returned model hold the plain module.
    fwd: torch.nn.Module = net
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=cfg.probe_epochs > 0
        )
    opt = make_optimizer(net, cfg)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    sched = make_scheduler(opt, cfg, cfg.epochs * steps)
    curve: list[dict[str, Any]] = []
    best: dict[str, Any] = {"acc": -1.0, "epoch": 0, "state": None}
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if resume:
        state = load_checkpoint(ckpt_path)
        if config_from_dict(state["config"]).to_dict() != cfg.to_dict():  # an older checkpoint's: defaults filled
            raise BadInput("the checkpoint was written with a different TrainConfig: resume with the same config")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        curve, best, start_epoch = state["curve"], state["best"], state["epoch"]

    loss_fn = loss_fn or (lambda out, yb, xb, idx: F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing))
    bar_ctx = progress_bar() if progress and rank == 0 else contextlib.nullcontext(None)
    stopped_early = False
    with bar_ctx as bar, distributed.synced_batchnorm(net, cfg.sync_batchnorm):
        head = set(head_parameters(net)) if cfg.probe_epochs else set()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            if cfg.probe_epochs:  # a linear probe first: the body frozen, only the classifier learns
                for name, p in net.named_parameters():
                    p.requires_grad_(name in head or epoch >= cfg.probe_epochs)
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, loss=float("nan")) if bar else None
            loss_sum: Any = 0.0 if dev.type == "cpu" else torch.zeros((), device=dev)
            correct: Any = 0 if dev.type == "cpu" else torch.zeros((), dtype=torch.long, device=dev)
            seen = 0
            batches = epoch_batches(rows_at, stream, n, steps, cfg.batch_size, g, epoch, rank, world)
            if semi is not None:
                semi.start(epoch)
            for s, (xb, idx) in enumerate(batches):
                yb = y_tr[idx].to(dev, non_blocking=True)  # (B,)
                # Every rank draws the whole batch's augmentation from `g` (which stays in step) and keeps its share.
                share = (rank, world, batch_total(n, s, cfg.batch_size, world))
                xb = augment(xb, cfg.augment, g, share=share).to(dev, non_blocking=True)  # (B, C, H, W)
                xin = xb if semi is None else semi.inputs(xb)  # FixMatch: + the unlabeled views (B + 2U, ...)
                if dev.type == "cuda" and cfg.channels_last:
                    xin = xin.contiguous(memory_format=torch.channels_last)
                with autocast(dev, precision):
                    out_all = fwd(xin)  # (B [+ 2U], K): one pass, so BatchNorm sees every view together
                    out = out_all[: len(yb)]  # (B, K)
                    loss = loss_fn(out.float(), yb, xb, idx)
                    if semi is not None:
                        loss = loss + semi.loss(out_all[len(yb) :])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if dev.type == "cpu":
                    loss_sum += float(loss.detach()) * len(yb)
                    correct += int((out.argmax(1) == yb).sum())
                else:  # kept on the GPU: a host sync every step would stall the queue of kernels
                    loss_sum += loss.detach() * len(yb)
                    correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                if bar and (s % 20 == 0 or s == steps - 1):
                    bar.update(task, completed=s + 1, loss=float(loss_sum) / seen)
            train_s = time.perf_counter() - t0
            total_loss, total_correct, total = distributed.all_sum([float(loss_sum), float(correct), seen], dev)
            distributed.sync_buffers(net)  # every rank evaluates and keeps rank 0's BatchNorm statistics
            val_loss, val_acc = evaluate_split(model, val_batches())
            point = {
                "epoch": epoch + 1,
                "train_loss": total_loss / total,
                "train_accuracy": total_correct / total,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                "samples_per_s": total / train_s,
                **(semi.epoch_stats() if semi is not None else {}),
            }
            curve.append(point)
            if no_val or val_acc > best["acc"] + (cfg.min_delta if best["state"] is not None else -1.0):
                best = {"acc": val_acc, "epoch": epoch + 1, "state": clone_state(net)}
            if bar:
                bar.console.print(
                    f"epoch {epoch + 1}: train loss {point['train_loss']:.4f}  val acc {val_acc:.4f}  "
                    f"{point['seconds']:.1f}s  {point['samples_per_s']:.0f} samples/s"
                )
                bar.remove_task(task)
            if ckpt_path is not None and rank == 0:  # one writer: the others hold the same state
                save_checkpoint(
                    ckpt_path,
                    {
                        "config": cfg.to_dict(),
                        "net": net.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "rng": g.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "curve": curve,
                        "best": best,
                        "epoch": epoch + 1,
                    },
                )
            if on_epoch:  # after the checkpoint, so a callback that interrupts can resume
                on_epoch(point)
            if cfg.patience and not no_val and epoch + 1 - best["epoch"] >= cfg.patience and epoch + 1 < cfg.epochs:
                stopped_early = True
                break

    for p in net.parameters():  # whatever the probe left frozen (early stopping can end it) trains again later
        p.requires_grad_(True)
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    if dev.type != "cpu":  # export, quantization and the catalog take a CPU model in the default layout
        net = net.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    net.eval()
    accs = [p["val_accuracy"] for p in curve]
    plateau = detect_plateau(accs, cfg.patience or 2, cfg.min_delta)
    history = {
        "curve": curve,
        "best_epoch": best["epoch"],
        "val_accuracy": best["acc"],
        "stopped_early": stopped_early,
        "train_samples": n,
        "device": str(dev),
        "processes": world,
        "precision": precision,
        "seconds": sum(p["seconds"] for p in curve),
        "plateau": {"epoch": plateau, "message": f"plateau at epoch {plateau}: {PLATEAU_ADVICE}"} if plateau else None,
    }
    lineage = dict(model.lineage)
    lineage["dataset_id"] = data.id
    if model.id:
        lineage["parent_id"] = model.id
    lineage["recipe"] = [*lineage.get("recipe", []), cfg.to_dict()]
    if semi is not None:
        lineage["semisup"] = semi.record(curve)
    return dataclasses.replace(model, net=net, lineage=lineage, history=history, id=None, name=None)
