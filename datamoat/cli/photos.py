"""`datamoat data synth`: write the synthetic photo benchmark (an image folder of JPEGs)."""

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


def register(app: typer.Typer) -> None:
    from datamoat.cli.core import data_app

    data_app.command("synth")(data_synth)
