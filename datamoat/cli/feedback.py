"""Commands: feedback import/sync/gate/review/accept/reject/log, and
retrain --from-feedback. Feedback lives in the registry database."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from pathlib import Path

import numpy as np
import typer

from datamoat.cli._common import JsonOpt, emit, open_ws

feedback_app = typer.Typer(help="Feedback quarantine, the poisoning gate, and decisions.", no_args_is_help=True)
RegistryOpt = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL.")
TokenOpt = typer.Option(None, "--token", envvar="DATAMOAT_TOKEN", help="Review or admin token (once one exists).")


def _open(url: str | None):
    from datamoat.feedback import Quarantine
    from datamoat.registry.core import Registry, registry_url

    ws = open_ws()
    reg = Registry(registry_url(ws, url))
    return ws, reg, Quarantine(reg)


def _actor(reg, token: str | None) -> str:
    """A review (or admin) token's name once the registry has such tokens; the OS user before that."""
    if reg.has_token("admin", "review") or token:
        return reg.check_token(token, "review")
    return os.environ.get("USER") or getpass.getuser()


def _read_labelled(path: Path, classes: list[str], shape: list[int]) -> tuple[np.ndarray, list[str]]:
    """Images (N, C, H, W) uint8 and class names from a folder of class subfolders or an .npz (x, y)."""
    from datamoat.errors import BadInput, NotFound

    if path.is_dir():
        from PIL import Image

        xs, labels = [], []
        for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                    continue
                im: Image.Image
                try:
                    with Image.open(f) as im:
                        im = im.convert("L" if shape[0] == 1 else "RGB").resize((shape[2], shape[1]))
                except (OSError, SyntaxError, ValueError) as e:
                    raise BadInput(f"image {f} is unreadable ({e}): remove or re-export it") from None
                arr = np.asarray(im, np.uint8)
                xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
                labels.append(d.name)
        if not xs:
            raise BadInput(f"{path} has no class subfolders with .png/.jpg images: make one subfolder per class")
        return np.stack(xs), labels
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise BadInput(f"{path} needs arrays 'x' (N, C, H, W) uint8 and 'y' (class index or name per image)")
            x, y = z["x"], z["y"]
        x = x[:, None] if x.ndim == 3 else x
        if x.dtype != np.uint8 or list(x.shape[1:]) != list(shape):
            raise BadInput(
                f"{path}: x is {x.dtype} {x.shape} but the model takes uint8 (N, {', '.join(map(str, shape))})"
            )
        if y.dtype.kind in "iu":
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise BadInput(f"{path}: y holds class indices outside 0..{len(classes) - 1}")
            return x, [classes[int(i)] for i in y]
        return x, [str(v) for v in y]
    raise NotFound(f"{path} is neither a folder of class subfolders nor an .npz file: pass one of those")


@feedback_app.command("import")
def fb_import(
    path: Path = typer.Argument(..., help="A folder with one subfolder per class, or an .npz with x and y."),
    source: str = typer.Option(..., "--source", help="Who labelled these (the gate judges each source)."),
    model_version: str = typer.Option(
        None, "--model-version", help="Version whose classes apply (default production)."
    ),
    skip_duplicates: bool = typer.Option(False, "--skip-duplicates", help="Skip items this source already sent."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Put labelled images into quarantine (never straight into training data)."""
    _, _, q = _open(registry)
    vid, classes, shape = q._classes(model_version)
    x, labels = _read_labelled(path, classes, shape)
    ids = q.import_items(x, labels, source=source, model_version=vid, skip_duplicates=skip_duplicates)
    emit(
        {"imported": len(ids), "ids": ids, "source": source, "model_version": vid},
        as_json,
        f"{len(ids)} item(s) from {source!r} in quarantine; run `datamoat feedback gate`",
    )


@feedback_app.command("sync")
def fb_sync(registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Copy new /v1/feedback answers from the server's log into quarantine."""
    _, _, q = _open(registry)
    n = q.sync()
    emit({"synced": n}, as_json, f"{n} new server feedback item(s) in quarantine")


@feedback_app.command("gate")
def fb_gate(
    max_per_hour: int = typer.Option(200, "--max-per-hour", help="Per source; 0 turns the rate limit off."),
    min_model_prob: float = typer.Option(0.05, "--min-model-prob", help="Floor on the model's p(label); 0: off."),
    max_contradiction_rate: float = typer.Option(0.3, "--max-contradiction-rate"),
    min_judged: int = typer.Option(5, "--min-judged", help="Judged items before a source can be flagged."),
    trusted: list[str] = typer.Option([], "--trusted", help="A trusted edge/import source (repeatable)."),
    require_approval: bool = typer.Option(False, "--require-approval", help="Hold everything for a person."),
    alias: str = typer.Option("production", "--alias"),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Sync server feedback, then accept or hold every undecided item."""
    from datamoat.feedback import GateConfig, evaluate_gate

    cfg = GateConfig(
        max_per_hour=max_per_hour,
        min_model_prob=min_model_prob,
        min_judged=min_judged,
        max_contradiction_rate=max_contradiction_rate,
        trusted_sources=tuple(trusted),
        require_approval=require_approval,
        alias=alias,
    )
    _, _, q = _open(registry)
    synced = q.sync()
    out = evaluate_gate(q, cfg)
    out["synced"] = synced
    c = out["counts"]
    text = (
        f"accepted {c.get('accepted', 0)}, held {c.get('held', 0)}, rejected {c.get('rejected', 0)} "
        f"({out['changed']} changed, {synced} synced)"
    )
    if out["flagged"]:
        text += f"\n[yellow]flagged sources: {', '.join(out['flagged'])}[/yellow]"
    emit(out, as_json, text)


@feedback_app.command("review")
def fb_review(
    show_all: bool = typer.Option(False, "--all", help="Every item, not only held ones."),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List held items with their reasons (decide with accept / reject)."""
    _, _, q = _open(registry)
    rows = q.items() if show_all else q.items(status="held")
    lines = [
        f"{r['id']:>6}  {r['status']:<8} {r['source']:<16} {r['label']:<12} "
        f"{dt.datetime.fromtimestamp(r['ts']).isoformat(timespec='seconds')}  {'; '.join(r['reasons'])}"
        for r in rows
    ]
    emit({"items": rows}, as_json, "\n".join(lines) or "nothing held")


def _decide(ids: list[int], decision: str, reason: str, registry: str | None, token: str | None, as_json: bool):
    _, reg, q = _open(registry)
    rows = q.decide(ids, decision, actor=_actor(reg, token), reason=reason)
    emit({"items": rows}, as_json, f"{decision} {len(rows)} item(s): {', '.join(str(r['id']) for r in rows)}")


@feedback_app.command("accept")
def fb_accept(
    ids: list[int] = typer.Argument(...),
    reason: str = typer.Option("", "--reason"),
    registry: str = RegistryOpt,
    token: str = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Accept items for training (final: the gate will not hold them again)."""
    _decide(ids, "accepted", reason, registry, token, as_json)


@feedback_app.command("reject")
def fb_reject(
    ids: list[int] = typer.Argument(...),
    reason: str = typer.Option("", "--reason"),
    registry: str = RegistryOpt,
    token: str = TokenOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Reject items (counts against their source's reputation)."""
    _decide(ids, "rejected", reason, registry, token, as_json)


@feedback_app.command("log")
def fb_log(registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """The append-only log of every decision, by the gate or a person."""
    _, _, q = _open(registry)
    log = q.decisions()
    lines = [
        f"{dt.datetime.fromtimestamp(e['ts']).isoformat(timespec='seconds')}  item {e['item_id']:<6} "
        f"{e['decision']:<8} {e['actor']:<12} {e['reason']}"
        for e in log
    ]
    emit({"decisions": log}, as_json, "\n".join(lines) or "no decisions yet")


def retrain(
    from_feedback: bool = typer.Option(False, "--from-feedback", help="Merge accepted feedback (required for now)."),
    base: str = typer.Option("", "--base", help="Dataset to merge into (default: the production model's)."),
    margin: float = typer.Option(0.5, "--margin", help="Points the candidate must gain to be registered."),
    max_class_drop: float = typer.Option(0.5, "--max-class-drop", help="Points any one class may lose."),
    epochs: int = typer.Option(0, "--epochs", help="0: as many as the production recipe."),
    alias: str = typer.Option("production", "--alias"),
    seed: int = typer.Option(0, "--seed"),
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train on base + accepted feedback; register a candidate only if it beats production.

    Exit code 0 either way: `registered` in --json says whether it did."""
    from datamoat.errors import BadInput
    from datamoat.feedback import RetrainConfig, retrain_from_feedback

    if not from_feedback:
        raise BadInput("retrain needs a source of new data: pass --from-feedback")
    cfg = RetrainConfig(margin=margin, max_class_drop=max_class_drop, epochs=epochs, alias=alias, base=base, seed=seed)
    ws, reg, _ = _open(registry)
    out = retrain_from_feedback(ws, reg, cfg, actor=os.environ.get("USER") or getpass.getuser(), progress=not as_json)
    lines = [
        f"test split of {out['base']} ({out['test_samples']} samples), {out['added']} feedback item(s) "
        f"merged into {out['dataset']}",
        f"production {out['production_version']}: {out['production']:.2f}   candidate: {out['candidate']:.2f}   "
        f"gain {out['gain']:+.2f} points (margin {margin:g})",
    ]
    lines += [
        f"  {c['class']:<14} {c['production']:6.2f} -> {c['candidate']:6.2f}  ({c['delta']:+.2f})"
        for c in out["per_class"]
    ]
    lines.append(
        f"[green]registered candidate {out['version']} (model {out['model_id']}); promote it to serve it"
        if out["registered"]
        else f"[yellow]not registered: {'; '.join(out['reasons'])}"
    )
    emit(out, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
    app.command("retrain")(retrain)
