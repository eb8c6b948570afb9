"""Commands: registry profile (a version's reference profile), drift (windows of a dataset tested
against it, with the label-free accuracy estimate beside the measured one), guarantee (the live
check of the poc guarantee on the audited answers people reviewed)."""

from __future__ import annotations

from typing import Any

import typer

from datamoat.cli._common import JsonOpt, admin_actor, emit, open_registry
from datamoat.cli.registry import RegistryOpt, TokenOpt, registry_app

AlphaOpt = typer.Option(0.05, "--alpha", help="Chance that a window without drift alarms (the five tests share it).")


@registry_app.command("profile")
def profile(
    version: str = typer.Argument(..., help="Registry version (id, prefix or name)."),
    data: str = typer.Option(None, "--data", help="Dataset whose val split is the reference (default: its own)."),
    alpha: float = AlphaOpt,
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Record a version's reference profile (promote does this when it has none)."""
    from datamoat.evaluate.drift import DriftConfig
    from datamoat.registry.register import profile_version

    ws, reg = open_registry(registry)
    prof = profile_version(ws, reg, version, actor=admin_actor(reg, token), data=data, config=DriftConfig(alpha=alpha))
    out = profile_summary(prof)
    emit(
        out,
        as_json,
        f"profiled {out['version_id']} on {out['n']} samples of {out['dataset_id']} ({out['split']}): "
        f"accuracy {out['accuracy']:.3f}, ATC threshold {out['atc_threshold']:.3f}",
    )


def profile_summary(prof: dict[str, Any]) -> dict[str, Any]:
    """The profile's headline fields, without its samples."""
    keys = ("version_id", "dataset_id", "split", "n", "accuracy", "atc_threshold", "brightness_mean", "contrast_mean")
    return {k: prof[k] for k in keys} | {"channel_mean": prof["channel_mean"], "class_counts": prof["class_counts"]}


def drift(
    version: str = typer.Argument(..., help="Registry version with a reference profile."),
    data: str = typer.Option(..., "--data", help="Dataset whose split stands in for production traffic."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    window: int = typer.Option(500, "--window", min=10, help="Answers per window."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Test a dataset's split, window by window, against a version's reference profile."""
    import numpy as np

    from datamoat.data.dataset import SPLITS, load_dataset, read_rows
    from datamoat.errors import BadInput, NotFound
    from datamoat.evaluate.drift import check_window, profile_config, summarize
    from datamoat.registry.register import load_version

    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}: choose train, val or test")
    ws, reg = open_registry(registry)
    row = reg.version(version)
    prof = reg.profile(row["id"])
    if prof is None:
        raise NotFound(f"version {row['id']} has no reference profile: run `datamoat registry profile {row['id']}`")
    cfg = profile_config(prof)
    ds = load_dataset(ws, data)
    v = load_version(reg, row["id"], embeddings=True)
    if v.embedding is None:
        raise BadInput(f"version {row['id']}'s graph has no classifier layer to read embeddings from")
    rows = np.flatnonzero(ds.split == SPLITS[split])
    if len(rows) < 10:
        raise BadInput(f"split {split} of {ds.id} has {len(rows)} samples: a window needs at least 10")
    windows, correct = [], 0
    for i in range(0, len(rows), window):
        at = rows[i : i + window]
        if len(at) < 10:
            break  # a tail too short to test
        x = read_rows(ds.x, at)
        probs, emb = v.run(x)
        assert emb is not None  # opened with embeddings, checked above
        right = int((probs.argmax(1) == ds.y[at]).sum())
        correct += right
        check = check_window(prof, summarize(emb, probs, x, cfg))
        windows.append({"start": i, **check, "accuracy": right / len(at)})
    alarms = [w for w in windows if w["alarm"]]
    out = {
        "version": row["id"],
        "dataset": ds.id,
        "split": split,
        "windows": windows,
        "alarms": len(alarms),
        "first_alarm_at": alarms[0]["start"] + alarms[0]["n"] if alarms else None,
        "alpha": cfg.alpha,
        "accuracy": correct / sum(w["n"] for w in windows),
        "estimate": float(np.mean([w["estimate"]["estimate"] for w in windows])),
    }
    lines = [
        f"{w['start']:>7}  n={w['n']:<5} {'ALARM ' + ', '.join(w['fired']) if w['alarm'] else 'ok':<40} "
        f"estimate {w['estimate']['estimate']:.3f}  measured {w['accuracy']:.3f}"
        for w in windows
    ]
    lines.append(
        f"{len(alarms)} of {len(windows)} windows alarmed (alpha {cfg.alpha} each); accuracy estimate "
        f"{out['estimate']:.3f}, measured {out['accuracy']:.3f}"
    )
    emit(out, as_json, "\n".join(lines))


def guarantee(
    version: str = typer.Argument(..., help="Registry version whose policy came from poc."),
    act: bool = typer.Option(False, "--act", help="If the check failed, take the action now (servers do it too)."),
    action: str = typer.Option("review_all", "--action", help="review_all, rollback or none."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Is the poc guarantee still holding? A sequential test on the audited answers people reviewed."""
    from datamoat.feedback.guarantee import check_guarantee, enforce_guarantee

    _, reg = open_registry(registry)
    out = (
        enforce_guarantee(reg, version, actor=admin_actor(reg, token), action=action)
        if act
        else check_guarantee(reg, version)
    )
    acc = "no reviews yet" if not out.get("reviews") else f"accuracy {out['accuracy']:.3f} on {out['reviews']} audited"
    state = f"FAILED at review {out['failed_at']}" if out.get("failed") else "holding"
    emit(
        out,
        as_json,
        f"{out['version']}: {state}; {acc}; evidence {out.get('wealth', 0):.2f} of {out.get('fails_at_wealth')}",
    )


def register(app: typer.Typer) -> None:
    app.command("drift")(drift)
    app.command("guarantee")(guarantee)
