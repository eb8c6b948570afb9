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
    source: str = typer.Option(
        "fashion-mnist", help="fashion-mnist (Debian's dataset-fashion-mnist), or digits (scikit-learn's, for a try)."
    ),
    overwrite: bool = typer.Option(False, help="Replace a synthetic set written here before (nothing else)."),
    as_json: bool = JsonOpt,
) -> None:
    """Synthetic photos from Fashion-MNIST: tinted, rotated items on photo crops and textures, as JPEGs
    of 120-480 pixels and 3:4 to 16:9. They are synthetic: no real photo set can be downloaded here."""
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
    cfg = SynthConfig(n_per_class=n_per_class, test_fraction=test_fraction, seed=seed, workers=workers)
    res = make_photos(out, cfg, source=src, progress=not as_json, overwrite=overwrite)
    emit(res, as_json, f"wrote {res['images']} synthetic photos to {out} ({res['bytes']:,} bytes)")


_PHOTOS = "datamoat.data.photos:PhotoImportConfig"


def data_import_photos(
    source: Path = typer.Argument(
        ..., help="A folder of class subfolders, an unlabeled folder, or a .csv/.jsonl manifest."
    ),
    name: str = typer.Option(None, help="Human name for the version."),
    strict: bool = typer.Option(False, help="Refuse the import at the first bad file instead of skipping it."),
    max_pixels: int = typer.Option(ConfigDefault(_PHOTOS, "max_pixels"), help="Per image, read from the header."),
    seed: int = typer.Option(ConfigDefault(_PHOTOS, "seed"), help="Seed of the stratified split."),
    as_json: bool = JsonOpt,
) -> None:
    """Photos of any size as shards of their original encoded bytes (JPEG, PNG, WebP; EXIF orientation
    recorded); bad files skipped with a reason each. Training on them is not wired yet (issue 17)."""
    from datamoat.cli._common import open_ws
    from datamoat.data.photos import PhotoImportConfig, import_photos

    cfg = PhotoImportConfig(strict=strict, max_pixels=max_pixels, seed=seed)
    v = import_photos(open_ws(), source, cfg, name=name)
    r = v.report
    reasons = ", ".join(f"{k} {n}" for k, n in sorted(r["skipped_reasons"].items())) or "none"
    text = (
        f"photo version {r['id']} ({r['name']}): {r['imported']} images, {len(r['classes'])} classes, "
        f"{r['shards']} shard(s), {r['stored_vs_source']:.3f}x the source bytes; skipped: {reasons}"
    )
    emit(r, as_json, text)


def register(app: typer.Typer) -> None:
    from datamoat.cli.core import data_app

    data_app.command("synth")(data_synth)
    data_app.command("import-photos")(data_import_photos)
