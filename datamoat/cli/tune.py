"""Commands: tune (the code lever) and improve (both levers side by side)."""

from __future__ import annotations

import typer

from datamoat.cli._common import JsonOpt, check_device, console, device_option, emit, open_ws
from datamoat.errors import BadInput


def tune(
    data: str = typer.Option(..., "--data", "-d", help="Dataset id or name."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials this worker runs (the study may hold more)."),
    storage: str = typer.Option("", "--storage", help="Study database URL (default: the workspace's optuna.db)."),
    study: str = typer.Option("tune", "--study", help="Study name; workers with the same storage and name share it."),
    timeout: float = typer.Option(0.0, "--timeout", help="Seconds after which no trial or epoch starts (0: none)."),
    archs: str = typer.Option("mlp,cnn_small,cnn_medium,resnet", "--archs", help="Architectures to swap between."),
    epochs_max: int = typer.Option(8, help="Most epochs a trial may train."),
    max_train_samples: int = typer.Option(0, help="Tune on a stratified subset of the train split (0: all)."),
    seed: int = typer.Option(0, help="Sampler and training seed."),
    threads: int = typer.Option(0, help="Torch threads (0: every core)."),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Search hyperparameters, width, depth and architecture with Optuna, pruning poor trials."""
    from datamoat.data import load_dataset
    from datamoat.train.tune import TuneConfig
    from datamoat.train.tune import tune as run_tune

    cfg = TuneConfig(
        trials=trials,
        storage=storage,
        study=study,
        timeout_s=timeout,
        seed=seed,
        threads=threads,
        device=device,
        archs=tuple(a.strip() for a in archs.split(",") if a.strip()),
        epochs_max=epochs_max,
        epochs_min=min(2, epochs_max),
        max_train_samples=max_train_samples,
    )
    check_device(device)
    ws = open_ws()
    res = run_tune(ws, load_dataset(ws, data), cfg)
    out = res.to_dict()
    if as_json:
        emit(out, True)
        return
    from rich.table import Table

    t = Table(
        "trial", "state", "val acc", "epochs", "arch", "width", "depth", "lr", "worker", title=f"study {res.study}"
    )
    for r in out["trials"]:
        p = r["params"]
        acc = "" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        t.add_row(
            str(r["number"]),
            r["state"],
            acc,
            str(r["epochs_run"]),
            str(p.get("arch", "")),
            str(p.get("width", "")),
            str(p.get("depth", "")),
            f"{p.get('lr', 0):.2e}",
            str(r["worker"]),
        )
    console.print(t)
    console.print(
        f"best: trial {res.best_trial}, val accuracy {res.best_val_accuracy:.4f}, {res.best_params}; "
        f"saved as model {res.model.id} ({res.model.name})",
        highlight=False,
    )


def improve(
    data: str = typer.Option(..., "--data", "-d", help="Dataset id or name."),
    budget_minutes: float = typer.Option(
        ..., "--budget-minutes", "-b", help="Wall clock shared equally by the levers."
    ),
    arch: str = typer.Option("cnn_small", "--arch", "-a", help="Baseline architecture."),
    epochs: int = typer.Option(4, help="Baseline epochs."),
    baseline_fraction: float = typer.Option(0.5, help="Share of the train split the baseline sees."),
    no_clean: bool = typer.Option(False, "--no-clean", help="Data lever: only add data, do not relabel."),
    no_labels: bool = typer.Option(False, "--no-labels", help="No label lever (its share goes to the others)."),
    label_budget: int = typer.Option(0, help="Labels the label lever spends (0: a fifth of the baseline's)."),
    label_strategy: str = typer.Option(
        "margin", help="How the label lever picks: margin, entropy, kcenter, badge, random or hybrid."
    ),
    seed: int = typer.Option(0, help="Seed."),
    threads: int = typer.Option(0, help="Torch threads (0: every core)."),
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Baseline, then the model, data and label levers on equal budgets, and the data-size curve."""
    from datamoat.data import load_dataset
    from datamoat.models.zoo import ARCHS
    from datamoat.train.improve import ImproveConfig
    from datamoat.train.improve import improve as run_improve

    if arch not in ARCHS:
        raise BadInput(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    cfg = ImproveConfig(
        budget_minutes=budget_minutes,
        arch=arch,
        epochs=epochs,
        baseline_fraction=baseline_fraction,
        clean=not no_clean,
        labels=not no_labels,
        label_budget=label_budget,
        label_strategy=label_strategy,
        seed=seed,
        threads=threads,
        device=device,
    )
    check_device(device)
    ws = open_ws()
    out = run_improve(ws, load_dataset(ws, data), cfg)
    b, lv = out["baseline"], out["levers"]
    lines = [f"baseline {b['arch']} on {b['train_samples']} train samples: test accuracy {b['test_accuracy']:.4f}"]
    for key in lv:
        r = lv[key]
        if r.get("skipped"):
            lines.append(f"{key} lever ({r['kind']}): skipped, {r['skipped']}")
            continue
        lines.append(
            f"{key} lever ({r['kind']}): test accuracy {r['test_accuracy']:.4f}, gain {r['gain']:+.4f}, "
            f"{r['seconds']:.1f}s of {r['budget_s']:.1f}s"
        )
    lines.append(
        "data-size curve (baseline recipe): "
        + ", ".join(f"{p['fraction']:.0%} ({p['train_samples']}) {p['test_accuracy']:.4f}" for p in out["curve"])
    )
    lines.append(f"overhead (baseline and curve) {out['overhead_s']:.1f}s; report {out['report']}")
    emit(out, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
    app.command("improve")(improve)
