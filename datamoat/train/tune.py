"""`tune`: the code lever. An Optuna study over hyperparameters and the model itself.

Each trial picks an architecture from the zoo (the model swap), a width
multiplier, a depth (conv blocks, or hidden layers for the MLP, or stages for
the ResNet), a learning rate and a number of epochs, trains on the train split
and scores on the val split; the test split is never looked at. Poor trials
are pruned after any epoch by a MedianPruner.

The study lives in `<workspace>/optuna.db`, a SQLite file of its own rather
than a table set inside `catalog.db`: Optuna creates and migrates its schema
with SQLAlchemy/alembic, while the catalog migrates by `PRAGMA user_version`,
and keeping the files apart means neither migration can trip over the other
and a study can be copied, shared or deleted without touching the catalog.
`storage="postgresql://user:pw@host/db"` (or any SQLAlchemy URL Optuna's
RDBStorage accepts) puts the study in a shared database, so workers on
several machines fill one study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model, new_model, save_model
from datamoat.models.zoo import ARCHS
from datamoat.train.device import DEVICES
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

__all__ = ["TuneConfig", "TuneResult", "tune", "arch_overrides", "default_storage", "STORAGE_SCHEMES"]

STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")  # what Optuna's RDBStorage is tested against


@dataclasses.dataclass
class TuneConfig(Config):
    """The study: how many trials, how long, what to search, where to store it."""

    trials: int = 20
    timeout_s: float = 0.0  # 0: no limit; else no trial starts, nor step runs, after it (once one trial finished)
    archs: tuple[str, ...] = ("mlp", "cnn_small", "cnn_medium", "resnet")
    lr_min: float = 3e-4
    lr_max: float = 1e-2
    epochs_min: int = 2
    epochs_max: int = 8
    widths: tuple[float, ...] = (0.5, 1.0, 2.0)
    depth_min: int = 1
    depth_max: int = 3
    startup_trials: int = 3  # the MedianPruner prunes nothing until this many trials finished
    warmup_epochs: int = 0
    seed: int = 0  # sampler seed and every trial's training seed
    max_train_samples: int = 0  # 0: the whole train split
    threads: int = 0
    device: str = "auto"  # every trial's: auto (CUDA, then MPS, then the CPU), cpu, cuda or mps
    storage: str = ""  # "": <workspace>/optuna.db
    study: str = "tune"

    def validate(self) -> None:
        self.archs, self.widths = tuple(self.archs), tuple(float(w) for w in self.widths)
        check(self.trials >= 1, f"trials must be at least 1, got {self.trials}")
        check(self.timeout_s >= 0, f"timeout_s must be >= 0 (0: no limit), got {self.timeout_s}")
        check(len(self.archs) >= 1, "give at least one architecture to search")
        for a in self.archs:
            check(a in ARCHS, f"unknown architecture {a!r}: choose among {', '.join(ARCHS)}")
        check(0 < self.lr_min <= self.lr_max, f"need 0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}")
        check(1 <= self.epochs_min <= self.epochs_max, "need 1 <= epochs_min <= epochs_max")
        check(len(self.widths) >= 1 and min(self.widths) > 0, "widths must be positive multipliers")
        check(1 <= self.depth_min <= self.depth_max, "need 1 <= depth_min <= depth_max")
        check(self.startup_trials >= 0 and self.warmup_epochs >= 0, "startup_trials and warmup_epochs must be >= 0")
        check(self.max_train_samples >= 0, "max_train_samples must be >= 0 (0 uses all)")
        check(bool(self.study.strip()), "the study needs a name")
        check_choice("device", self.device, DEVICES)
        if self.storage:
            scheme = self.storage.split("://", 1)[0].split("+", 1)[0] if "://" in self.storage else ""
            check(
                scheme in STORAGE_SCHEMES,
                f"unknown storage URL scheme {scheme or self.storage!r}: use sqlite:///path/optuna.db, "
                "postgresql://user:pass@host/db or mysql://user:pass@host/db",
            )


@dataclasses.dataclass
class TuneResult:
    """What the study found. `model` is the best trial's model, saved."""

    study: str
    storage: str
    best_params: dict[str, Any]
    best_val_accuracy: float
    best_trial: int
    trials: list[dict[str, Any]]
    model: Model
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model"} | {
            "model_id": self.model.id,
            "model_name": self.model.name,
            "arch": self.model.config.arch,
        }


def default_storage(ws: Workspace) -> str:
    """The workspace's own study database, `sqlite:///<ws>/optuna.db`."""
    return f"sqlite:///{(ws.root / 'optuna.db').resolve()}"


def arch_overrides(arch: str, width: float, depth: int) -> dict[str, Any]:
    """Zoo overrides for `arch` scaled to `width` x the preset and `depth` blocks.

    >>> arch_overrides("cnn_small", 2.0, 3)
    {'channels': (32, 64, 128), 'hidden': (128,)}
    >>> arch_overrides("mlp", 1.0, 2)
    {'hidden': (256, 128)}
    """
    base = ARCHS[arch][1]

    def w(c: float) -> int:
        return max(4, int(round(c * width)))

    if arch == "mlp":  # depth = hidden layers, each half the one before
        return {"hidden": tuple(w(base["hidden"][0] / 2**i) for i in range(depth))}
    if arch == "resnet":  # depth = stages after the stem, widths doubling
        stem = base["channels"][0]
        return {"channels": (w(stem), *(w(stem * 2**i) for i in range(depth) for _ in range(2)))}
    # ConvNets: depth = conv blocks, widths doubling from the preset's first
    return {
        "channels": tuple(w(base["channels"][0] * 2**i) for i in range(depth)),
        "hidden": tuple(w(h) for h in base["hidden"]),
    }


def _storage(url: str) -> Any:
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if url.startswith("sqlite"):
        # Several workers on one SQLite file: wait for the write lock instead of
        # failing, and take turns creating the tables (two workers starting at
        # once otherwise race on Optuna's schema version row).
        kwargs = {"connect_args": {"timeout": 60}}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            lock = _file_lock(Path(path).with_name(Path(path).name + ".lock"))
    try:
        with lock:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except sqlalchemy.exc.ArgumentError as e:
        raise BadInput(f"bad storage URL {_redact(url)!r}: {e}") from e
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise BadInput(f"cannot open study storage {_redact(url)}: {str(e).splitlines()[0]}") from e
    except ModuleNotFoundError as e:
        raise BadInput(f"storage {url.split('://')[0]} needs the database driver {e.name}: pip install it") from e


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _trial_row(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "val_accuracy": t.value,
        "params": t.params,
        "epochs_run": len(t.intermediate_values),
        "worker": t.user_attrs.get("worker"),
        "seconds": t.duration.total_seconds() if t.duration else None,
    }


def tune(
    ws: Workspace,
    data: Dataset,
    config: TuneConfig | None = None,
    *,
    enqueue: list[dict[str, Any]] | None = None,
    name: str | None = None,
) -> TuneResult:
    """Run `config.trials` trials of the study (joining it if it exists) and
    save the best model, its params and the study in its lineage.

    `enqueue` lists params to try first (e.g. the baseline's), so the study
    starts from a known point.

    >>> res = tune(ws, digits, TuneConfig(trials=4, epochs_max=3))  # doctest: +SKIP
    >>> res.best_params["arch"], res.model.id  # doctest: +SKIP
    ('cnn_small', '3f9a...')
    """
    import optuna

    cfg = config or TuneConfig()
    t0 = time.perf_counter()  # the budget covers opening the study (~1 s to create a new database)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = cfg.storage or default_storage(ws)
    study = optuna.create_study(
        storage=_storage(url),
        study_name=cfg.study,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs),
    )
    for params in enqueue or []:
        study.enqueue_trial(params, skip_if_exists=True)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    deadline = t0 + cfg.timeout_s if cfg.timeout_s else float("inf")
    best: dict[str, Any] = {"acc": -1.0, "model": None, "number": -1}

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = _suggest(trial, cfg)
        model = new_model(
            params["arch"], data, seed=cfg.seed, **arch_overrides(params["arch"], params["width"], params["depth"])
        )
        tc = TrainConfig(
            epochs=params["epochs"],
            lr=params["lr"],
            seed=cfg.seed,
            threads=cfg.threads,
            device=cfg.device,
            max_train_samples=cfg.max_train_samples,
        )

        def on_epoch(point: dict[str, Any]) -> None:
            trial.report(point["val_accuracy"], point["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        def loss_fn(out: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            # Out of time: stop at this step (train() has no step callback, so the
            # check rides on the loss hook), unless this worker has nothing
            # finished yet: a budget shorter than one trial overruns by that trial.
            if best["model"] is not None and time.perf_counter() > deadline:
                trial.set_user_attr("stopped", "budget")
                raise optuna.TrialPruned()
            return F.cross_entropy(out, yb)  # (B, K), (B,) -> ()

        trained = train(model, data, tc, progress=False, on_epoch=on_epoch, loss_fn=loss_fn)
        acc = float(trained.history["val_accuracy"])
        if acc > best["acc"]:
            best.update(acc=acc, model=trained, number=trial.number)
        return acc

    # The first trial runs whatever the clock says, so every worker finishes one.
    study.optimize(objective, n_trials=1)
    if cfg.trials > 1 and time.perf_counter() < deadline:
        left = deadline - time.perf_counter() if cfg.timeout_s else None
        study.optimize(objective, n_trials=cfg.trials - 1, timeout=left)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise BadInput(f"no trial of study {cfg.study!r} finished within {cfg.timeout_s}s: raise the timeout")
    bt = study.best_trial
    model = best["model"]
    if bt.number != best["number"]:  # another worker found it: retrain its params here to save it
        p = bt.params
        model = train(
            new_model(p["arch"], data, seed=cfg.seed, **arch_overrides(p["arch"], p["width"], p["depth"])),
            data,
            TrainConfig(
                epochs=p["epochs"],
                lr=p["lr"],
                seed=cfg.seed,
                threads=cfg.threads,
                device=cfg.device,
                max_train_samples=cfg.max_train_samples,
            ),
            progress=False,
        )
    lineage = dict(model.lineage)
    lineage["tune"] = {
        "study": cfg.study,
        "storage": _redact(url),
        "trial": bt.number,
        "params": bt.params,
        "val_accuracy": bt.value,
    }
    lineage["recipe"] = [*lineage.get("recipe", []), cfg.replace(storage=_redact(url)).to_dict()]
    model = dataclasses.replace(model, lineage=lineage)
    saved = save_model(ws, model, name=name or f"tuned-{bt.params['arch']}-{data.name}")
    assert bt.value is not None  # the best trial is a completed one
    return TuneResult(
        cfg.study,
        _redact(url),
        dict(bt.params),
        float(bt.value),
        bt.number,
        [_trial_row(t) for t in study.trials],
        saved,
        time.perf_counter() - t0,
    )


def _suggest(trial: Any, cfg: TuneConfig) -> dict[str, Any]:
    return {
        "arch": trial.suggest_categorical("arch", list(cfg.archs)),
        "width": trial.suggest_categorical("width", list(cfg.widths)),
        "depth": trial.suggest_int("depth", cfg.depth_min, cfg.depth_max),
        "lr": trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True),
        "epochs": trial.suggest_int("epochs", cfg.epochs_min, cfg.epochs_max),
    }


def _redact(url: str) -> str:
    """The URL without its password, fit for lineage and reports."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
