"""`datamoat demo`: the main job on the embedded default workspace."""

from __future__ import annotations

import typer

from datamoat.cli._common import JsonOpt, emit, err_console, open_ws


def demo(
    epochs: int = typer.Option(None, help="Override the demo's epochs."),
    photos: bool = typer.Option(
        False, "--photos", help="The photo flow: synthetic JPEGs to shards, a served model and a signed bundle."
    ),
    per_class: int = typer.Option(None, help="--photos: synthetic photos per class (default 500)."),
    as_json: bool = JsonOpt,
) -> None:
    """Import Fashion-MNIST (digits if absent), train a teacher, evaluate it, write the report."""
    from datamoat.data import sources
    from datamoat.demo import DEMO_TRAIN, run_demo

    if photos:
        _photo_demo(epochs, per_class, as_json)
        return

    if not sources.FASHION_MNIST_DIR.is_dir():  # said first, not after minutes of training
        note = sources.fashion_mnist_missing("digits")
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    cfg = DEMO_TRAIN.replace(epochs=epochs) if epochs else DEMO_TRAIN
    out = run_demo(open_ws(create=True), config=cfg)
    text = (
        f"dataset {out['dataset_id']} ({out['dataset']}), model {out['model_id']} ({out['arch']}, {out['params']:,} params)\n"
        f"test accuracy {out['test_accuracy']:.4f}, ECE {out['ece']:.4f}, {out['seconds']:.0f}s\n"
        + (f"{out['plateau']['message']}\n" if out["plateau"] else "")
        + f"report: {out['report']}"
    )
    emit(out, as_json, text)


def _photo_demo(epochs: int | None, per_class: int | None, as_json: bool) -> None:
    from datamoat.demo import PHOTO_SYNTH, PHOTO_TRAIN, run_photo_demo
    from datamoat.errors import BadInput

    if per_class is not None and per_class < 4:
        raise BadInput(
            f"--per-class must be at least 4 (train, val and test need photos of each class), got {per_class}"
        )
    cfg = PHOTO_TRAIN.replace(epochs=epochs) if epochs else PHOTO_TRAIN
    n = per_class or PHOTO_SYNTH.n_per_class
    out = run_photo_demo(open_ws(create=True), n_per_class=n, config=cfg, progress=not as_json)
    s = out["served"]
    text = (
        f"{out['photos']} synthetic photos -> photo version {out['photo_version']} -> dataset {out['dataset_id']} "
        f"({'x'.join(map(str, out['input_shape']))})\n"
        f"model {out['model_id']} ({out['arch']}, {out['params']:,} params): test accuracy "
        f"{out['test_accuracy']:.4f}, ECE {out['ece']:.4f}\n"
        f"registered as {out['version_id']} and promoted to production; bundle {out['bundle']['sha'][:12]} "
        f"(sequence {out['bundle']['sequence']}, {out['bundle']['bytes']:,} bytes) signed, verify with "
        f"{out['public_key']}\n"
        f"served a {s['bytes_sent']:,}-byte JPEG: HTTP {s['status']}, label {s['label']}\n"
        f"report: {out['report']}   {out['seconds']:.0f}s\n"
        "next: `datamoat serve` answers JPEG uploads; `datamoat edge install` puts the bundle on a device"
    )
    emit(out, as_json, text)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
