"""Command: pretrain (self-supervised, SimCLR) a backbone on unlabeled images."""

from __future__ import annotations

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, emit, open_ws


def _pre(param: str) -> ConfigDefault:
    return ConfigDefault("datamoat.train.pretrain:PretrainConfig", param)


def pretrain(
    pool: str = typer.Argument(..., help="Dataset id or name: a pool of unlabeled images (or any version)."),
    arch: str = typer.Option(
        ConfigDefault("datamoat.models.zoo:ModelConfig", "arch"),
        "--arch",
        "-a",
        help="Architecture from the zoo (`datamoat archs`) whose backbone to pretrain.",
    ),
    epochs: int = typer.Option(_pre("epochs"), help="Passes over the images."),
    batch_size: int = typer.Option(_pre("batch_size"), help="Images per step (twice as many views)."),
    lr: float = typer.Option(_pre("lr"), help="Peak learning rate (AdamW, cosine decay)."),
    temperature: float = typer.Option(_pre("temperature"), help="NT-Xent temperature."),
    projection_dim: int = typer.Option(_pre("projection_dim"), help="Projection head output size."),
    strength: float = typer.Option(_pre("strength"), help="Intensity/colour jitter strength."),
    min_scale: float = typer.Option(_pre("min_scale"), help="Smallest random crop, a fraction of the area."),
    flip: bool = typer.Option(_pre("flip"), help="Random horizontal flips (off for text or digits)."),
    max_samples: int = typer.Option(_pre("max_samples"), help="Use at most this many images (0: all)."),
    seed: int = typer.Option(_pre("seed"), help="Random seed."),
    threads: int = typer.Option(_pre("threads"), help="Torch threads (0: every core)."),
    device: str = typer.Option(_pre("device"), help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps."),
    name: str = typer.Option(None, help="Human name for the run."),
    as_json: bool = JsonOpt,
) -> None:
    """Pretrain an architecture's backbone on unlabeled images (SimCLR); `train --weights pretrain:<run>` starts from it."""
    from datamoat.data.dataset import load_dataset
    from datamoat.errors import BadInput
    from datamoat.models import ARCHS
    from datamoat.train.pretrain import PretrainConfig
    from datamoat.train.pretrain import pretrain as run_pretrain

    if arch not in ARCHS:
        raise BadInput(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    check_device(device)
    cfg = PretrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        projection_dim=projection_dim,
        strength=strength,
        min_scale=min_scale,
        flip=flip,
        max_samples=max_samples,
        seed=seed,
        threads=threads,
        device=device,
    )
    ws = open_ws()
    ds = load_dataset(ws, pool)
    pre = run_pretrain(ws, ds, arch, cfg, name=name, progress=True)
    curve = pre.history["curve"]
    out = {
        "run_id": pre.run_id,
        "ref": pre.ref,
        "weights_sha256": pre.sha256,
        "location": pre.location,
        "pool_id": pre.pool_id,
        "arch": pre.arch,
        "images": pre.images,
        "input_shape": list(pre.input_shape),
        "config": cfg.to_dict(),
        "curve": curve,
        "seconds": pre.history["seconds"],
    }
    text = (
        f"pretrained {pre.arch} on {pre.images} images of {ds.name}: loss {curve[0]['loss']:.4f} -> "
        f"{curve[-1]['loss']:.4f}, {pre.history['seconds']:.0f}s ({curve[-1]['images_per_s']:.0f} images/s)\n"
        f"start from it: datamoat train --data DATA --arch {pre.arch} --weights {pre.ref}"
    )
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
