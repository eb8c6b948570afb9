"""Commands: label suggest / apply / loop, active learning on a dataset version's unlabeled pool.
The review queue and the quarantine live in the registry database."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

import typer

from datamoat.cli._common import ConfigDefault, JsonOpt, check_device, device_option, emit, open_ws

label_app = typer.Typer(help="Active learning: which unlabeled items people label next.", no_args_is_help=True)
RegistryOpt = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL.")
_ACQ = "datamoat.train.acquire:AcquireConfig"
BudgetOpt = typer.Option(ConfigDefault(_ACQ, "budget"), "--budget", help="Items to pick (a round's, in a loop).")
StrategyOpt = typer.Option(
    ConfigDefault(_ACQ, "strategy"),
    "--strategy",
    help="margin, entropy, disagreement, kcenter, badge, random or hybrid (margin candidates, then k-center).",
)
SeedOpt = typer.Option(ConfigDefault(_ACQ, "seed"), "--seed", help="Seeds ties, random picks and BADGE's draws.")
FactorOpt = typer.Option(
    ConfigDefault(_ACQ, "hybrid_factor"), "--hybrid-factor", help="hybrid: candidates = factor x budget."
)


def _open(url: str | None) -> tuple[Any, Any]:
    from datamoat.registry.core import Registry, registry_url

    ws = open_ws()
    return ws, Registry(registry_url(ws, url))


def _user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def _oracle(path: Path, n: int) -> Any:
    """rows -> labels from a file of every row's true class: .npy (N,), or .npz with y (N,)."""
    import numpy as np

    from datamoat.errors import BadInput, NotFound

    if not path.is_file():
        raise NotFound(f"no file at {path}: give an .npy or .npz (y) with one class index per dataset row")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                y = z.get("y")
        else:
            y = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path} is not a NumPy .npy/.npz file ({e}): save the labels with numpy.save") from None
    if y is None or y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        got = "no array y" if y is None else f"{y.dtype} {y.shape}"
        raise BadInput(f"{path} must hold one integer class per dataset row ({n}), got {got}")
    return lambda rows: y[rows]


@label_app.command("suggest")
def suggest_cmd(
    pool: str = typer.Argument(..., help="A dataset version with unlabeled items (id or name)."),
    model: str = typer.Option(..., "--model", help="The model that ranks the pool (id or name)."),
    budget: int = BudgetOpt,
    strategy: str = StrategyOpt,
    seed: int = SeedOpt,
    member: list[str] = typer.Option([], "--member", help="disagreement: another committee model (repeatable)."),
    hybrid_factor: int = FactorOpt,
    registry: str = RegistryOpt,
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Rank the pool's unlabeled items and queue the top N on /review."""
    from datamoat.data.dataset import load_dataset
    from datamoat.feedback.suggest import suggest
    from datamoat.models import load_model
    from datamoat.train.acquire import AcquireConfig

    cfg = AcquireConfig(strategy=strategy, budget=budget, seed=seed, hybrid_factor=hybrid_factor, device=device)
    check_device(device)
    ws, reg = _open(registry)
    ds, m = load_dataset(ws, pool), load_model(ws, model)
    members = [load_model(ws, ref) for ref in member]
    out = suggest(ws, reg, ds, m, cfg, members=members or None, actor=_user(), progress=not as_json)
    text = (
        f"queued {len(out['queued'])} of {out['unlabeled']} unlabeled item(s) of {out['name']} on /review "
        f"({strategy}, model version {out['version']}; {out['already_on_review']} already there)"
    )
    emit(out, as_json, text)


@label_app.command("apply")
def apply_cmd(
    pool: str = typer.Argument(..., help="The dataset version whose pool items people labelled (id or name)."),
    name: str = typer.Option(
        None, "--name", help="Name of the new version (default: the pool's, which then names the newest)."
    ),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Accepted review labels of the pool's items -> a new dataset version (origin human)."""
    from datamoat.data.dataset import load_dataset
    from datamoat.feedback.suggest import apply_labels

    ws, reg = _open(registry)
    _, out = apply_labels(ws, reg, load_dataset(ws, pool), name=name)
    wait = ", ".join(f"{n} {k}" for k, n in sorted(out["waiting"].items())) or "none"
    text = f"applied {out['applied']} label(s) -> dataset {out['dataset']}; waiting: {wait}"
    if out["waiting"].get("pending") or out["waiting"].get("held"):
        text += "\n[yellow]decided labels wait in quarantine: run `datamoat feedback gate` (and review held ones)"
    for r in out["refused"]:
        text += f"\n[red]refused {r['prediction_id']}: {r['reason']}"
    emit(out, as_json, text)


@label_app.command("loop")
def loop_cmd(
    pool: str = typer.Argument(..., help="A dataset version with unlabeled items (id or name)."),
    arch: str = typer.Option(None, "--arch", help="Start from this architecture (first round: random picks)."),
    model: str = typer.Option(None, "--model", help="Or start from this model (its picks lead round 1)."),
    budget: int = BudgetOpt,
    rounds: int = typer.Option(1, "--rounds", help="Rounds with an oracle; without one, each call is one step."),
    strategy: str = StrategyOpt,
    seed: int = SeedOpt,
    hybrid_factor: int = FactorOpt,
    members: int = typer.Option(ConfigDefault(_ACQ, "members"), "--members", help="disagreement: ensemble size."),
    epochs: int = typer.Option(ConfigDefault("datamoat.train:TrainConfig", "epochs"), "--epochs"),
    oracle_labels: Path = typer.Option(
        None, "--oracle-labels", help="Benchmarks: .npy/.npz of every row's true class, standing in for people."
    ),
    registry: str = RegistryOpt,
    device: str = device_option(),
    as_json: bool = JsonOpt,
) -> None:
    """Pick, label, retrain, repeat: with --oracle-labels for R rounds, else one step with people on /review."""
    from datamoat.data.dataset import load_dataset
    from datamoat.feedback.loop import label_loop
    from datamoat.models import load_model
    from datamoat.train.acquire import AcquireConfig
    from datamoat.train.loop import TrainConfig

    acq = AcquireConfig(
        strategy=strategy, budget=budget, seed=seed, hybrid_factor=hybrid_factor, members=members, device=device
    )
    tcfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    check_device(device)
    ws, reg = _open(registry)
    ds = load_dataset(ws, pool)
    start = load_model(ws, model) if model else None
    oracle = _oracle(oracle_labels, len(ds.y)) if oracle_labels is not None else None
    out = label_loop(
        ws,
        ds,
        acquire_config=acq,
        train_config=tcfg,
        arch=arch,
        model=start,
        rounds=rounds,
        oracle=oracle,
        registry=reg,
        actor=_user(),
        progress=not as_json,
    )
    out["dataset"] = out["dataset"].id
    out["model"] = out["model"].id if out["model"] is not None else None
    lines = []
    for r in out["rounds"]:
        acc = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(
            f"round {r['round']}: {r['labels']} labels ({r['strategy']}), test accuracy {acc}, {r['seconds']:.1f}s"
        )
    if out["waiting"]:
        lines.append(f"queued {len(out['queued'])} item(s) on /review; run `datamoat label loop` again once decided")
    lines.append(f"dataset {out['dataset']}, model {out['model'] or '-'}")
    emit(out, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    app.add_typer(label_app, name="label")
