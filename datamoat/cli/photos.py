"""`datamoat data synth` writes the synthetic photo benchmark (an image folder of JPEGs);
`datamoat data import-photos` stores photos as content-addressed tar shards with an index."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, emit

__all__ = ["register"]

_SYNTH = "datamoat.data.synth:SynthConfig"


def data_synth(
    out: Path = typer.Argument(
        ..., help="Folder to write: OUT/{train,test}/<label>_<class>/*.jpg, a manifest, a README."
    ),
    n_per_class: int = typer.Option(ConfigDefault(_SYNTH, "n_per_class"), help="Images per class, both splits."),
    test_fraction: float = typer.Option(ConfigDefault(_SYNTH, "test_fraction"), help="Share of the test split."),
    seed: int = typer.Option(ConfigDefault(_SYNTH, "seed"), help="The same seed writes the same bytes."),
    workers: int = typer.Option(ConfigDefault(_SYNTH, "workers"), help="Processes (0: every core); same output."),
    min_side: int = typer.Option(ConfigDefault(_SYNTH, "min_side"), help="Shortest longer side, pixels (>= 16)."),
    max_side: int = typer.Option(
        ConfigDefault(_SYNTH, "max_side"), help="Longest longer side, pixels; small ones make millions fast."
    ),
    source: str = typer.Option(
        "fashion-mnist", help="fashion-mnist (Debian's dataset-fashion-mnist), or digits (scikit-learn's, for a try)."
    ),
    overwrite: bool = typer.Option(False, help="Replace a synthetic set written here before (nothing else)."),
    as_json: bool = JsonOpt,
) -> None:
    """Synthetic photos from Fashion-MNIST: tinted, rotated items on photo crops and textures, as JPEGs
    of 120-480 pixels (by default) and 3:4 to 16:9. They are synthetic: no real photo set can be
    downloaded here."""
    from datamoat.configs import check_choice
    from datamoat.data.synth import SynthConfig, make_photos

    check_choice("source", source, ("fashion-mnist", "digits"))
    src = None
    if source == "digits":
        import numpy as np
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.clip(np.asarray(d.images) * 16, 0, 255).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
        src = (x, np.asarray(d.target), [str(c) for c in d.target_names])
    cfg = SynthConfig(
        n_per_class=n_per_class,
        test_fraction=test_fraction,
        seed=seed,
        workers=workers,
        min_side=min_side,
        max_side=max_side,
    )
    res = make_photos(out, cfg, source=src, progress=not as_json, overwrite=overwrite)
    emit(res, as_json, f"wrote {res['images']} synthetic photos to {out} ({res['bytes']:,} bytes)")


_PHOTOS = "datamoat.data.photos:PhotoImportConfig"


def data_import_photos(
    source: Path = typer.Argument(
        ...,
        help="A folder of class subfolders (and an 'unlabeled' one), an unlabeled folder, or a .csv/.jsonl manifest.",
    ),
    name: str = typer.Option(None, help="Human name for the version."),
    strict: bool = typer.Option(False, help="Refuse the import at the first bad file instead of skipping it."),
    max_pixels: int = typer.Option(ConfigDefault(_PHOTOS, "max_pixels"), help="Per image, read from the header."),
    seed: int = typer.Option(ConfigDefault(_PHOTOS, "seed"), help="Seed of the stratified split."),
    unlabeled_folder: str = typer.Option(
        ConfigDefault(_PHOTOS, "unlabeled_folder"),
        help="The subfolder (or manifest label) of photos with no label yet: `data render` puts them in the pool.",
    ),
    read_ahead: int = typer.Option(
        ConfigDefault(_PHOTOS, "read_ahead"),
        help="Files the OS is asked for ahead of the reader: a cold disk or network filesystem keeps busy. 0: none.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Photos of any size as shards of their original encoded bytes (JPEG, PNG, WebP; EXIF orientation
    recorded); bad files skipped with a reason each. `data render` makes a version a model can train on."""
    from datamoat.cli._common import open_ws
    from datamoat.data.photos import PhotoImportConfig, import_photos

    cfg = PhotoImportConfig(
        strict=strict, max_pixels=max_pixels, seed=seed, unlabeled_folder=unlabeled_folder, read_ahead=read_ahead
    )
    v = import_photos(open_ws(), source, cfg, name=name)
    r = v.report
    reasons = ", ".join(f"{k} {n}" for k, n in sorted(r["skipped_reasons"].items())) or "none"
    text = (
        f"photo version {r['id']} ({r['name']}): {r['imported']} images ({r['unlabeled']} unlabeled), "
        f"{len(r['classes'])} classes, "
        f"{r['shards']} shard(s), {r['stored_vs_source']:.3f}x the source bytes; skipped: {reasons}"
    )
    emit(r, as_json, text)


_RENDER = "datamoat.data.photo_fit:PhotoTransformConfig"  # torch-free: --help reads its defaults without torch


def data_render(
    photos: str = typer.Argument(..., help="Photo version id, id prefix or name (from `data import-photos`)."),
    size: int = typer.Option(224, help="Model input height and width in pixels."),
    resize: str = typer.Option(ConfigDefault(_RENDER, "resize"), help="shorter_crop or letterbox."),
    crop_fraction: float = typer.Option(ConfigDefault(_RENDER, "crop_fraction"), help="shorter_crop's crop share."),
    scale_min: float = typer.Option(
        ConfigDefault(_RENDER, "scale", item=0), help="Training crops' smallest share of the photo's area."
    ),
    auto_augment: str = typer.Option(
        ConfigDefault(_RENDER, "auto_augment"), help="Training policy: none, trivialaugment or randaugment."
    ),
    brightness: float = typer.Option(ConfigDefault(_RENDER, "brightness"), help="Training colour jitter."),
    contrast: float = typer.Option(ConfigDefault(_RENDER, "contrast"), help="Training colour jitter."),
    saturation: float = typer.Option(ConfigDefault(_RENDER, "saturation"), help="Training colour jitter."),
    hue: float = typer.Option(ConfigDefault(_RENDER, "hue"), help="Training colour jitter, at most 0.5."),
    grayscale: bool = typer.Option(False, help="One channel instead of RGB."),
    name: str = typer.Option(None, help="Human name for the dataset version."),
    workers: int = typer.Option(-1, help="Decode processes (-1: every core, at most 8)."),
    pool: bool = typer.Option(
        True, help="Keep unlabelled photos as the version's unlabeled pool (else leave them out)."
    ),
    classes: str = typer.Option(
        None, help="Comma-separated class names the labels will come from (a version imported without labels has none)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """A photo version at a model's input size, as a dataset version that every stage takes; the
    transform is recorded, and training still reads augmented crops of the original photos. Unlabelled
    photos wait in the version's pool (split "pool", label -1) until they are labelled."""
    from datamoat.cli._common import open_ws
    from datamoat.data.photo_render import render_photos
    from datamoat.data.photo_transforms import PhotoTransformConfig
    from datamoat.data.photos import load_photos

    gray = {"mean": (0.5,), "std": (0.5,)} if grayscale else {}
    cfg = PhotoTransformConfig(
        size=(size, size),
        resize=resize,
        crop_fraction=crop_fraction,
        scale=(scale_min, 1.0),
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        auto_augment=auto_augment,
        **gray,  # type: ignore[arg-type]
    )
    ws = open_ws()
    v = load_photos(ws, photos)
    names = [c.strip() for c in classes.split(",")] if classes else None
    ds = render_photos(
        ws,
        v,
        cfg,
        channels=1 if grayscale else 3,
        name=name,
        workers=workers,
        progress=not as_json,
        pool=pool,
        classes=names,
    )
    out = {"dataset_id": ds.id, "name": ds.name, "photo_version": v.id, "transform": ds.preprocess["photo"]}
    out["samples"], out["input_shape"] = int(len(ds.y)), list(ds.input_shape)
    out["unlabeled"] = int((ds.y < 0).sum())
    text = (
        f"dataset {ds.id} ({ds.name}): {len(ds.y)} photos ({out['unlabeled']} unlabeled) at {size}x{size} from {v.id}"
    )
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    from datamoat.cli.core import data_app

    data_app.command("synth")(data_synth)
    data_app.command("import-photos")(data_import_photos)
    data_app.command("render")(data_render)
