"""Commands: data issues, data fix and data diff (the data lever)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from datamoat.cli._common import JsonOpt, check_device, console, device_option, emit, nproc_option, open_ws, relaunch
from datamoat.errors import BadInput, NotFound


def data_issues(
    dataset: str = typer.Argument(..., help="Dataset id or name."),
    folds: int = typer.Option(5, help="Cross-validation folds (at least 2)."),
    epochs: int = typer.Option(5, help="Epochs per fold model (the label-noise benchmark: 10, with --augment crop)."),
    augment: str = typer.Option(
        "none", help="Augmentation of the fold models' training: none, crop (random shifts) or crop_flip."
    ),
    arch: str = typer.Option("cnn_small", "--arch", "-a", help="Architecture of the fold models."),
    ensemble: list[str] = typer.Option(
        [], "--ensemble", "-e", help="Another architecture whose fold models' probabilities are averaged in (repeat)."
    ),
    max_train_samples: int = typer.Option(0, help="Examine a stratified subset of the train split (0: all)."),
    seed: int = typer.Option(0, help="Seed for folds and models."),
    threads: int = typer.Option(0, help="Torch threads (0: every core)."),
    top: int = typer.Option(20, help="Rows to show per kind of issue."),
    output: Path = typer.Option(None, "--output", "-o", help="Write every issue as JSON here (input to `data fix`)."),
    nproc: int = nproc_option(),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Find likely label errors (cleanlab on out-of-fold predictions), near duplicates and outliers."""
    from datamoat.data import load_dataset
    from datamoat.train import distributed
    from datamoat.train.cleaning import CleaningConfig, find_issues

    cfg = CleaningConfig(
        arch=arch,
        ensemble=tuple(ensemble),
        folds=folds,
        epochs=epochs,
        augment=augment,
        seed=seed,
        max_train_samples=max_train_samples,
        threads=threads,
        device=device,
    )
    if top < 0:
        raise BadInput(f"--top must be >= 0, got {top}")
    check_device(device)
    ws = open_ws()
    relaunch(nproc, lambda: ws.resolve("datasets", dataset), device)
    ds = load_dataset(ws, dataset)
    # Under torchrun each fold model trains on every process (DDP); rank 0 writes and reports.
    with distributed.leaving_together():
        found = find_issues(ds, cfg, progress=not as_json and distributed.is_main())
        if not distributed.is_main():
            return
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        found.write_json(output)
    summary = found.summary()
    counts = summary["counts"]
    out = {**summary, **{k: v for k, v in found.to_dict(top=top).items() if k in counts}}
    out["output"] = str(output) if output else None
    if as_json:
        emit(out, True)
        return
    _print_issues(ds.classes, out, counts)


def _print_issues(classes: list[str], out: dict[str, Any], counts: dict[str, int]) -> None:
    from rich.table import Table

    console.print(
        f"dataset {out['dataset_id']}: {out['examined']} train samples examined, out-of-fold accuracy "
        f"{out['oof_accuracy']:.4f}; {counts['label_issues']} likely label errors, "
        f"{counts['near_duplicates']} near-duplicate pairs, {counts['outliers']} outliers",
        highlight=False,
    )
    t = Table("rank", "index", "given", "suggested", "quality", "confidence", title="likely label errors")
    for i in out["label_issues"]:
        t.add_row(
            str(i["rank"]),
            str(i["index"]),
            i["given_class"],
            i["suggested_class"],
            f"{i['quality']:.4f}",
            f"{i['confidence']:.3f}",
        )
    console.print(t)
    if out["near_duplicates"]:
        t = Table("a", "b", "similarity", "labels", "splits", "conflict", title="near duplicates")
        for p in out["near_duplicates"]:
            labels = " / ".join(classes[k] if k >= 0 else "(unlabeled)" for k in p["labels"])
            t.add_row(
                str(p["a"]),
                str(p["b"]),
                "exact" if p["exact"] else f"{p['similarity']:.4f}",
                labels,
                " / ".join(p["splits"]),
                "yes" if p["conflict"] else "",
            )
        console.print(t)
    if out["outliers"]:
        t = Table("index", "label", "score", title="outliers (least typical first)")
        for o in out["outliers"]:
            t.add_row(str(o["index"]), classes[o["label"]], f"{o['score']:.4f}")
        console.print(t)
    if out["output"]:
        console.print(f"all issues written to {out['output']}: apply them with `datamoat data fix`", highlight=False)


def _read_fixes(
    path: Path, ds_id: str, drop: bool, min_confidence: float, drop_below: float = 0.0, keep_above: float | str = 0.0
) -> tuple[list[dict[str, Any]], Any, int]:
    """The fixes to apply, the keep-above threshold as a number, and how many flags the file held."""
    from datamoat.train.cleaning import fixes_from_issues, plausible_threshold

    if not path.is_file():
        raise NotFound(f"issues file {path} does not exist: write one with `datamoat data issues DATASET -o FILE`")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON ({e}): pass the file `datamoat data issues -o` wrote") from None
    if isinstance(doc, dict) and doc.get("dataset_id") not in (None, ds_id):
        raise BadInput(
            f"{path} lists issues of dataset {doc['dataset_id']}, not {ds_id}: "
            "fix that version, or run `datamoat data issues` on this one"
        )
    if isinstance(doc, dict) and isinstance(doc.get("fixes"), list):
        return doc["fixes"], keep_above, len(doc["fixes"])  # hand-written fixes: [{index, new_label} | {index, drop}]
    if keep_above == "auto" and isinstance(doc, dict) and isinstance(doc.get("label_issues"), list):
        keep_above = plausible_threshold(doc)  # recorded with the version as the number it was
    fixes = fixes_from_issues(
        doc, drop=drop, min_confidence=min_confidence, drop_below=drop_below, keep_above=keep_above
    )
    return fixes, keep_above, len(doc["label_issues"])


def data_fix(
    dataset: str = typer.Argument(..., help="Dataset id or name the issues were found on."),
    source: Path = typer.Option(..., "--from", help="Issues JSON from `datamoat data issues -o`, or {'fixes': [...]}."),
    min_confidence: float = typer.Option(0.0, help="Only fix issues whose suggested label has this probability."),
    drop: bool = typer.Option(False, "--drop/--relabel", help="Drop flagged samples instead of relabelling them."),
    drop_below: float = typer.Option(
        0.0, help="With --relabel, drop (rather than relabel) issues whose suggestion has a lower probability."
    ),
    keep_above: str = typer.Option(
        "0",
        help="Leave issues whose given label still has at least this out-of-fold probability (0: off; 'auto': "
        "2 x flagged share / (classes - 1)).",
    ),
    name: str = typer.Option(None, help="Name of the new version (default: <name>-fixed)."),
    as_json: bool = JsonOpt,
) -> None:
    """Apply fixes as a new dataset version; the old version stays."""
    from datamoat.data import load_dataset
    from datamoat.data.versions import apply_fixes, diff

    keep: float | str = keep_above
    if keep_above != "auto":
        try:
            keep = float(keep_above)
        except ValueError:
            raise BadInput(f"--keep-above is a probability in [0, 1] or 'auto', got {keep_above!r}") from None
    for opt, val in (("--min-confidence", min_confidence), ("--drop-below", drop_below), ("--keep-above", keep)):
        if not isinstance(val, str) and not 0.0 <= val <= 1.0:  # the only str is "auto"
            raise BadInput(f"{opt} is a probability in [0, 1], got {val}")
    ws = open_ws()
    ds = load_dataset(ws, dataset)
    fixes, keep, flagged = _read_fixes(source, ds.id, drop, min_confidence, drop_below, keep)
    fixed = apply_fixes(
        ws,
        ds,
        fixes,
        name=name,
        source={
            "issues_file": str(source),
            "mode": "drop" if drop else "relabel",
            "min_confidence": min_confidence,
            "drop_below": drop_below,
            "keep_above": keep,
        },
    )
    totals = diff(ws, ds, fixed)["totals"]
    # Flags left alone: below --min-confidence or, with --keep-above, given labels still plausible.
    left = flagged - len(fixes)
    out = {
        "dataset_id": fixed.id,
        "name": fixed.name,
        "parent_id": ds.id,
        "fixes": len(fixes),
        "left_alone": left,
        "keep_above": keep,
        "diff": totals,
    }
    emit(
        out,
        as_json,
        f"dataset {fixed.id} ({fixed.name}) from {ds.id}: {totals['relabelled']} relabelled, "
        f"{totals['removed']} dropped, {left} flags left alone; {ds.id} is unchanged",
    )


def data_diff(
    a: str = typer.Argument(..., help="Old dataset version (id or name)."),
    b: str = typer.Argument(..., help="New dataset version (id or name)."),
    as_json: bool = JsonOpt,
) -> None:
    """Show what changed between two dataset versions, per split and class."""
    from rich.table import Table

    from datamoat.data import load_dataset
    from datamoat.data.versions import diff

    ws = open_ws()
    da, db = load_dataset(ws, a), load_dataset(ws, b)
    d = diff(ws, da, db)
    if as_json:
        emit(d, True)
        return
    console.print(f"{da.id} ({da.name}) -> {db.id} ({db.name})", highlight=False)
    t = Table("split", "added", "removed", "relabelled", "unchanged")
    for split, s in d["splits"].items():
        t.add_row(split, str(s["added"]), str(s["removed"]), str(s["relabelled"]), str(s["unchanged"]))
    tot = d["totals"]
    t.add_row("[b]total", *(f"[b]{tot[k]}" for k in ("added", "removed", "relabelled", "unchanged")))
    console.print(t)
    for r in sorted(d["relabels"], key=lambda r: -r["count"])[:20]:
        console.print(
            f"  {r['split']}: {da.classes[r['from']]} -> {db.classes[r['to']]}: {r['count']}", highlight=False
        )
    for c in d["classes"]["changes"]:
        console.print(f"  class {c['index']}: {c['a']!r} -> {c['b']!r}", highlight=False)
    if "pool" in d:
        p = d["pool"]
        console.print(
            f"unlabeled pool: {p['a']} -> {p['b']} ({p['added']} added, {p['removed']} left it, {p['labelled']} of "
            "them labelled)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    from datamoat.cli.core import data_app

    data_app.command("issues")(data_issues)
    data_app.command("fix")(data_fix)
    data_app.command("diff")(data_diff)
