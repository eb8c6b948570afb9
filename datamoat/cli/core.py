"""Commands: init, data, models, runs, archs and train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, emit, nproc_option, open_ws, relaunch, state
from datamoat.errors import BadInput, NotFound

data_app = typer.Typer(help="Import, list and inspect dataset versions.", no_args_is_help=True)
models_app = typer.Typer(help="List and inspect model versions.", no_args_is_help=True)
runs_app = typer.Typer(help="List training runs.", no_args_is_help=True)


def init(
    directory: Path = typer.Argument(
        None, help="Workspace directory (default: --home, $DATAMOAT_HOME or ./.datamoat)."
    ),
    objects: str = typer.Option(
        None,
        "--objects",
        help="Keep the blobs (models, photo shards) at this fsspec URL instead of in the workspace folder: "
        "s3://bucket/prefix, gs://..., az://..., file:///mnt/store. Credentials come from the protocol's standard "
        "environment variables and files, never from the URL.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a workspace: a SQLite catalog and a content-addressed store."""
    from datamoat.workspace import Workspace, default_root

    ws = Workspace.init(directory or state.home or default_root(), objects=objects)
    emit(
        {"workspace": str(ws.root.resolve()), "objects": ws.object_root},
        as_json,
        f"workspace ready at {ws.root} (objects in {ws.object_root})",
    )


@data_app.command("import")
def data_import(
    source: str = typer.Argument(
        ...,
        help="'fashion-mnist', 'digits', an IDX images file (with --labels), a folder of IDX files, "
        "or an image folder with one subfolder per class.",
    ),
    labels: Path = typer.Option(None, help="IDX labels file, when SOURCE is an IDX images file."),
    test_images: Path = typer.Option(None, help="Official test images (IDX)."),
    test_labels: Path = typer.Option(None, help="Official test labels (IDX)."),
    classes: str = typer.Option(None, help="Comma-separated class names, one per label."),
    name: str = typer.Option(None, help="Human name for the version."),
    seed: int = typer.Option(0, help="Seed for the stratified splits."),
    as_json: bool = JsonOpt,
) -> None:
    """Import data as an immutable, content-addressed dataset version."""
    from datamoat import data as d

    ws = open_ws(create=True)
    class_list = [c.strip() for c in classes.split(",")] if classes else None
    path = Path(source)
    if source == "fashion-mnist":
        ds = d.import_fashion_mnist(ws, seed=seed)
    elif source == "digits":
        ds = d.import_digits(ws, seed=seed)
    elif path.is_file():
        if labels is None:
            raise BadInput(f"{path} is a file: pass its IDX labels with --labels, or give an image folder")
        ds = d.import_idx(
            ws,
            path,
            labels,
            test_images=test_images,
            test_labels=test_labels,
            classes=class_list,
            name=name or path.stem,
            seed=seed,
        )
    elif path.is_dir() and any(path.glob("train-images-idx3-ubyte*")):
        if class_list is None and path.resolve() == d.FASHION_MNIST_DIR.resolve():
            ds = d.import_fashion_mnist(ws, path, seed=seed)
        else:
            find = lambda stem: next(iter(sorted(path.glob(stem + "*"))), path / stem)  # noqa: E731
            ds = d.import_idx(
                ws,
                find("train-images-idx3-ubyte"),
                find("train-labels-idx1-ubyte"),
                test_images=find("t10k-images-idx3-ubyte"),
                test_labels=find("t10k-labels-idx1-ubyte"),
                classes=class_list,
                name=name or path.name,
                seed=seed,
            )
    elif path.is_dir():
        ds = d.import_folder(ws, path, name=name, seed=seed)
    else:
        raise NotFound(f"{source} does not exist: give 'fashion-mnist', 'digits', an IDX file or a folder")
    st = ds.stats()
    sp = st["splits"]
    emit(
        {"dataset_id": ds.id, **st},
        as_json,
        f"dataset {ds.id} ({ds.name}): {st['samples']} images {tuple(st['input_shape'])}, {len(ds.classes)} classes; "
        f"train {sp['train']['samples']} / val {sp['val']['samples']} / test {sp['test']['samples']}",
    )


@data_app.command("list")
def data_list(as_json: bool = JsonOpt) -> None:
    """List dataset versions, and the photo versions they can be rendered from."""
    from rich.table import Table

    from datamoat.data.photos import list_photos

    ws = open_ws()
    rows = ws.rows("datasets")
    photos = list_photos(ws)
    out = [
        {
            "id": r["id"],
            "name": r["name"],
            "samples": r["manifest"]["shape"][0],
            "classes": len(r["manifest"]["classes"]),
            "parent_id": r["parent_id"],
        }
        for r in rows
    ]
    if as_json:
        emit({"datasets": out, "photos": photos}, True)
        return
    t = Table("id", "name", "samples", "classes", "parent")
    for r in out:
        t.add_row(r["id"], r["name"], str(r["samples"]), str(r["classes"]), r["parent_id"] or "")
    from datamoat.cli._common import console

    console.print(t)
    if photos:
        p = Table("photo version", "name", "photos", "classes", "shards", "skipped", title="photos (`data render`)")
        for r in photos:
            p.add_row(r["id"], r["name"], *(str(r[k]) for k in ("samples", "classes", "shards", "skipped")))
        console.print(p)


@data_app.command("show")
def data_show(dataset: str, as_json: bool = JsonOpt) -> None:
    """Show a dataset version: classes, splits and pixel stats."""
    from rich.table import Table

    from datamoat.cli._common import console
    from datamoat.data import load_dataset

    ws = open_ws()
    ds = load_dataset(ws, dataset)
    st = ds.stats()
    row = ws.resolve("datasets", ds.id)
    st["source"], st["parent_id"] = row["source"], row["parent_id"]
    from datamoat.data.intake import provenance

    st["provenance"] = provenance(ds)  # labels by origin per split, and the unlabeled pool
    if as_json:
        emit(st, True)
        return
    console.print(f"dataset {ds.id} ({ds.name}), {st['samples']} images of shape {tuple(st['input_shape'])}")
    console.print(f"pixel mean {st['pixel_mean']}, std {st['pixel_std']}; source {st['source']}")
    t = Table("class", "train", "val", "test")
    for i, c in enumerate(ds.classes):
        t.add_row(c, *(str(st["splits"][s]["per_class"][i]) for s in ("train", "val", "test")))
    t.add_row("[b]total", *(f"[b]{st['splits'][s]['samples']}" for s in ("train", "val", "test")))
    console.print(t)
    for s, p in st["provenance"]["splits"].items():
        if s != "pool" and any(n for o, n in p["origins"].items() if o != "import"):
            console.print(f"{s} labels by origin: " + ", ".join(f"{o} {n}" for o, n in p["origins"].items() if n))
    if st["provenance"]["unlabeled"]:
        console.print(f"unlabeled pool: {st['provenance']['unlabeled']} images")


@models_app.command("list")
def models_list(as_json: bool = JsonOpt) -> None:
    """List model versions."""
    from rich.table import Table

    from datamoat.cli._common import console

    rows = open_ws().rows("models")
    out = [
        {
            "id": r["id"],
            "name": r["name"],
            "arch": r["arch"],
            "params": r["meta"].get("params"),
            "dataset_id": r["dataset_id"],
            "parent_id": r["parent_id"],
            "val_accuracy": (r["meta"].get("history") or {}).get("val_accuracy"),
        }
        for r in rows
    ]
    if as_json:
        emit({"models": out}, True)
        return
    t = Table("id", "name", "arch", "params", "dataset", "parent", "val acc")
    for r in out:
        acc = f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else ""
        t.add_row(r["id"], r["name"], r["arch"], f"{r['params']:,}", r["dataset_id"] or "", r["parent_id"] or "", acc)
    console.print(t)


@models_app.command("show")
def models_show(model: str, as_json: bool = JsonOpt) -> None:
    """Show a model version: architecture, lineage, learning curve."""
    ws = open_ws()
    row = ws.resolve("models", model)
    meta = row["meta"]
    out = {
        "id": row["id"],
        "name": row["name"],
        "arch": row["arch"],
        "dataset_id": row["dataset_id"],
        "parent_id": row["parent_id"],
        "run_id": row["run_id"],
        "weights_sha256": row["weights_sha"],
        **meta,
    }
    hist = meta.get("history") or {}
    lines = [
        f"model {row['id']} ({row['name']}): {row['arch']}, {meta['params']:,} parameters",
        f"dataset {row['dataset_id']}, parent {row['parent_id']}, run {row['run_id']}",
        f"config {meta['config']}",
    ]
    for p in hist.get("curve", []):
        lines.append(f"  epoch {p['epoch']}: train loss {p['train_loss']:.4f}  val acc {p['val_accuracy']:.4f}")
    if hist.get("plateau"):
        lines.append(hist["plateau"]["message"])
    emit(out, as_json, "\n".join(lines))


@runs_app.command("list")
def runs_list(as_json: bool = JsonOpt) -> None:
    """List training runs with their status."""
    rows = open_ws().rows("runs")
    out = [{k: r[k] for k in ("id", "name", "arch", "dataset_id", "status", "model_id")} for r in rows]
    emit(
        {"runs": out},
        as_json,
        "\n".join(f"{r['id']}  {r['status']:<11} {r['name']}  model {r['model_id']}" for r in out),
    )


def archs(as_json: bool = JsonOpt) -> None:
    """List the model zoo: parameter counts at each family's usual input, 10 classes (photo backbones at
    3x224x224, the small models at 1x28x28; any input size trains)."""
    from datamoat.models import ARCHS, build, param_count, preset
    from datamoat.models.backbones import BACKBONES

    out: list[dict[str, Any]] = []
    for a in ARCHS:
        c, s = (3, 224) if a in BACKBONES else (1, 28)
        cfg = preset(a, in_channels=c, image_size=(s, s), num_classes=10)
        out.append(
            {
                "arch": a,
                "params": param_count(build(cfg)),
                "input": [c, s, s],
                "photo_backbone": a in BACKBONES,
                "channels": cfg.channels,
                "hidden": cfg.hidden,
            }
        )
    text = "\n".join(f"{r['arch']:<19} {r['params']:>11,} params at {'x'.join(map(str, r['input']))}" for r in out)
    emit({"archs": out}, as_json, text)


def _train(param: str) -> ConfigDefault:
    return ConfigDefault("datamoat.train.loop:TrainConfig", param)


def _semi(param: str) -> ConfigDefault:
    return ConfigDefault("datamoat.train.semisup:FixMatchConfig", param)


def train(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", "-d", help="Dataset id or name."),
    arch: str = typer.Option(
        ConfigDefault("datamoat.models.zoo:ModelConfig", "arch"),
        "--arch",
        "-a",
        help="Architecture from the zoo (`datamoat archs`).",
    ),
    epochs: int = typer.Option(_train("epochs"), help="Maximum epochs."),
    batch_size: int = typer.Option(_train("batch_size"), help="Batch size."),
    optimizer: str = typer.Option(_train("optimizer"), help="adamw or sgd."),
    lr: float = typer.Option(_train("lr"), help="Peak learning rate."),
    schedule: str = typer.Option(_train("schedule"), help="onecycle, cosine or none."),
    augment: str = typer.Option(_train("augment"), help="none, crop or crop_flip."),
    patience: int = typer.Option(_train("patience"), help="Early-stopping patience in epochs (0: off)."),
    seed: int = typer.Option(_train("seed"), help="Random seed."),
    threads: int = typer.Option(_train("threads"), help="Torch threads (0: every core)."),
    label_smoothing: float = typer.Option(_train("label_smoothing"), help="Label smoothing in [0, 1)."),
    probe_epochs: int = typer.Option(_train("probe_epochs"), help="First train only the classifier (linear probe)."),
    body_lr_scale: float = typer.Option(_train("body_lr_scale"), help="The body's learning rate, times --lr."),
    warmup_epochs: float = typer.Option(_train("warmup_epochs"), help="Linear warm-up (cosine/none schedules)."),
    photo_stream: bool = typer.Option(
        _train("photo_stream"), help="Photo datasets: train on augmented crops of the originals, not the render."
    ),
    workers: int = typer.Option(_train("workers"), help="Photo decode processes (-1: every core but one)."),
    device: str = typer.Option(_train("device"), help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps."),
    precision: str = typer.Option(
        _train("precision"), help="auto (bf16 or fp16 autocast on a GPU, fp32 on the CPU), fp32, bf16 or fp16."
    ),
    sync_batchnorm: bool = typer.Option(
        _train("sync_batchnorm"), help="With --nproc: BatchNorm over the global batch, as one process trains."
    ),
    name: str = typer.Option(None, help="Human name for the model."),
    resume: str = typer.Option(None, "--resume", help="Resume an interrupted run by its id."),
    weights: str = typer.Option(
        None,
        "--weights",
        help="Start from this checkpoint: a torchvision-format .pth or .safetensors file (resnet18/50, "
        "mobilenet_v3_*, efficientnet_b0), or a file in a Hugging Face hub repo, fetched into the Hugging Face cache: "
        "hub:OWNER/REPO (its model.safetensors), hub:OWNER/REPO:FILE or hub:OWNER/REPO@REVISION:FILE. "
        "The classifier starts fresh for the dataset's classes (see --keep-head). "
        "A `datamoat pretrain` backbone: pretrain:RUN_ID (or its sha256).",
    ),
    keep_head: bool = typer.Option(
        False, "--keep-head", help="With --weights: keep a checkpoint's classifier when it fits (same classes)."
    ),
    unlabeled: str = typer.Option(
        None, "--unlabeled", help="Semi-supervised (FixMatch): also learn from this pool's unlabeled images."
    ),
    threshold: float = typer.Option(_semi("threshold"), help="With --unlabeled: confidence a pseudo-label needs."),
    mu: int = typer.Option(_semi("mu"), help="With --unlabeled: unlabeled images per labelled one in a batch."),
    nproc: int = nproc_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Train a zoo model on a dataset version, with a learning curve and checkpoints."""
    from datamoat.models import ARCHS
    from datamoat.train import distributed
    from datamoat.train.loop import TrainConfig
    from datamoat.train.run import train_in_workspace

    if arch not in ARCHS:
        raise BadInput(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    # by name: typer vendors its own click, whose enum is not `click.core`'s
    given = [f"--{p}" for p in ("threshold", "mu") if getattr(ctx.get_parameter_source(p), "name", "") != "DEFAULT"]
    if given and not unlabeled:
        raise BadInput(f"{' and '.join(given)} tune FixMatch: pass them with --unlabeled POOL")
    if unlabeled and resume:
        raise BadInput("--resume continues a run with the pool it started with: leave --unlabeled out")
    check_device(device)
    ws = open_ws()
    cfg = None
    if not resume:
        from datamoat.train.semisup import FixMatchConfig

        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            schedule=schedule,
            augment=augment,
            patience=patience,
            seed=seed,
            threads=threads,
            label_smoothing=label_smoothing,
            probe_epochs=probe_epochs,
            body_lr_scale=body_lr_scale,
            warmup_epochs=warmup_epochs,
            photo_stream=photo_stream,
            workers=workers,
            device=device,
            precision=precision,
            sync_batchnorm=sync_batchnorm,
            semisup=FixMatchConfig(threshold=threshold, mu=mu) if unlabeled else None,
        )
    if weights and resume:
        raise BadInput("--weights starts a new run; --resume continues one from its own checkpoint: pass one of them")
    dev = ws.resolve("runs", resume)["config"].get("train", {}).get("device", "auto") if resume else device
    relaunch(nproc, lambda: data and ws.resolve("datasets", data), dev)
    with distributed.leaving_together():
        model, run_id = train_in_workspace(
            ws,
            data,
            arch,
            cfg,
            name=name,
            resume=resume,
            weights=weights or None,
            keep_head=keep_head,
            unlabeled=unlabeled or None,
            progress=True,
        )
        if not distributed.is_main():
            return  # rank 0 reports for all
    h = model.history
    out = {
        "run_id": run_id,
        "model_id": model.id,
        "dataset_id": model.lineage["dataset_id"],
        "arch": model.config.arch,
        "params": model.params,
        "val_accuracy": h["val_accuracy"],
        "best_epoch": h["best_epoch"],
        "stopped_early": h["stopped_early"],
        "plateau": h["plateau"],
        "curve": h["curve"],
        "pretrained": model.lineage.get("pretrained"),
        "semisup": model.lineage.get("semisup"),
    }
    text = (
        f"model {model.id} ({model.name}): val accuracy {h['val_accuracy']:.4f} at epoch {h['best_epoch']}, "
        f"{h['seconds']:.0f}s; run {run_id}"
    )
    if out["semisup"]:
        rates = ", ".join(f"{r:.2f}" for r in out["semisup"]["mask_rate"])
        text += f"\nunlabeled images above the threshold per epoch (mask rate): {rates}"
    if h["plateau"]:
        text += "\n" + h["plateau"]["message"]
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(data_app, name="data")
    app.add_typer(models_app, name="models")
    app.add_typer(runs_app, name="runs")
    app.command("archs")(archs)
    app.command("train")(train)
