"""Closing the loop: accepted feedback -> new data version -> candidate model.

`retrain_from_feedback` merges the items the gate (or a person) accepted into
a new version of the production model's dataset (train split only, so the
test split stays frozen; each new label's origin recorded, `label_origins`), trains the same architecture with the same recipe
from scratch, and compares both models as ONNX on the base dataset's test
split, overall and per class. The candidate is registered (not promoted)
only when it beats production by `margin` points and no class drops more
than `max_class_drop` points: a poisoned class pair cannot slip through on
the strength of the average.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from datamoat.configs import Config, check, config_from_dict
from datamoat.data.dataset import Dataset, load_dataset
from datamoat.errors import BadInput, NotFound
from datamoat.feedback.store import Quarantine
from datamoat.registry.core import Registry
from datamoat.workspace import Workspace

__all__ = ["RetrainConfig", "retrain_from_feedback", "compare", "accepted_feedback", "label_origins"]


@dataclasses.dataclass
class RetrainConfig(Config):
    """Margins are in accuracy points (0..100)."""

    margin: float = 0.5
    max_class_drop: float = 0.5
    epochs: int = 0  # 0: as many as the production model's recipe
    alias: str = "production"
    base: str = ""  # dataset to merge into; "": the production model's dataset
    seed: int = 0

    def validate(self) -> None:
        check(-100 <= self.margin <= 100, f"margin is in points, -100..100, got {self.margin}")
        check(0 <= self.max_class_drop <= 100, f"max_class_drop is in points, 0..100, got {self.max_class_drop}")
        check(self.epochs >= 0, "epochs must be >= 0 (0 keeps the production recipe)")


def compare(
    y: np.ndarray,
    pred_prod: np.ndarray,
    pred_cand: np.ndarray,
    classes: list[str],
    margin: float,
    max_class_drop: float,
) -> dict[str, Any]:
    """Accuracy (points) of both models, overall and per class, and the verdict.

    >>> r = compare(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]), np.array([0, 0, 1, 1]), ["a", "b"], 10, 0.5)
    >>> r["gain"], r["better"]
    (25.0, True)
    """
    y = np.asarray(y)
    acc = {k: 100 * float((p == y).mean()) for k, p in (("production", pred_prod), ("candidate", pred_cand))}
    per_class: list[dict[str, Any]] = []
    for i, name in enumerate(classes):
        m = y == i
        if m.any():
            a, b = 100 * float((pred_prod[m] == i).mean()), 100 * float((pred_cand[m] == i).mean())
            per_class.append({"class": name, "production": a, "candidate": b, "delta": b - a})
    gain = acc["candidate"] - acc["production"]
    worst = min(per_class, key=lambda c: c["delta"])
    reasons = []
    if gain < margin:
        reasons.append(f"gain {gain:+.2f} points is below the margin {margin:g}")
    if worst["delta"] < -max_class_drop:
        reasons.append(f"class {worst['class']!r} drops {-worst['delta']:.2f} points (bound {max_class_drop:g})")
    return {
        "production": acc["production"],
        "candidate": acc["candidate"],
        "gain": gain,
        "per_class": per_class,
        "worst_class": worst,
        "test_samples": int(len(y)),
        "better": not reasons,
        "reasons": reasons,
    }


def accepted_feedback(
    q: Quarantine, base: Dataset, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """(x, y, item ids, skipped) of accepted items with images, minus any that
    are test images of `base` (training on them would inflate the very score
    the candidate is judged by) and decisions on pool items, which `label apply` owns. `datamoat data merge --accepted` can use it.

    >>> x, y, ids, skipped = accepted_feedback(Quarantine(reg), base, base.classes)  # doctest: +SKIP
    """
    from datamoat.registry.answer_rows import input_hash
    from datamoat.registry.ledger import POOL_PREFIX

    # A decision on a pool item labels its row in the pool's own lineage (`label apply`): merged here
    # as well, one image would be labelled twice across versions.
    items = [
        r
        for r in q.items(status="accepted")
        if r["has_pixels"] and r["label"] in classes and not (r["prediction_id"] or "").startswith(POOL_PREFIX)
    ]
    pix = q.pixels([r["id"] for r in items])
    test = {input_hash(img) for img in base.subset("test")[0]}
    usable = [r for r in items if pix[r["id"]].shape == base.input_shape and r["input_sha256"] not in test]
    if not usable:
        raise BadInput(
            "no accepted feedback with images to train on: run `datamoat feedback gate`, "
            "then `datamoat feedback review` and `accept`"
        )
    x = np.stack([pix[r["id"]] for r in usable])  # (N, C, H, W)
    y = np.array([classes.index(r["label"]) for r in usable], np.int64)
    return x, y, [r["id"] for r in usable], len(items) - len(usable)


def label_origins(reg: Registry, item_ids: list[int]) -> list[str]:
    """The origin (`datamoat.data.pool.ORIGINS`) of each accepted item's label: "human" for a
    reviewer's decision on /review (the review queue's own link to the item, which no client's
    feedback can claim, whatever source it names), "gate" for any other feedback the quarantine let
    through: a client's label, checked by the poisoning gate (or accepted by a person after it held it).

    >>> label_origins(Registry("sqlite://"), [1, 2])
    ['gate', 'gate']
    """
    from datamoat.registry.ledger import ensure_ledger, review_items

    ensure_ledger(reg.engine)  # a registry no server has used yet has no queue: then none is a person's
    human = {r["feedback_item"] for r in review_items(reg.engine, "decided")}
    return ["human" if i in human else "gate" for i in item_ids]


def retrain_from_feedback(
    ws: Workspace, reg: Registry, config: RetrainConfig | None = None, *, actor: str, progress: bool = False
) -> dict[str, Any]:
    """Merge accepted feedback, train a candidate, compare, register if better.

    Returns the comparison plus the new dataset id, how many accepted items
    were `skipped` (no usable image, or a test image of the base) and, when
    it passed, the candidate's model id and registry version.

    >>> out = retrain_from_feedback(ws, reg, RetrainConfig(margin=1.0), actor="ops")  # doctest: +SKIP
    >>> out["registered"]  # doctest: +SKIP
    False
    """
    from datamoat.compress.export import export_bytes
    from datamoat.data.versions import merge
    from datamoat.inference.onnx import onnx_predict_proba
    from datamoat.models import load_model, save_model
    from datamoat.models.model import Model
    from datamoat.models.zoo import build
    from datamoat.registry.register import register_model
    from datamoat.train.loop import TrainConfig, train

    cfg = config or RetrainConfig()
    vid = reg.snapshot()["aliases"].get(cfg.alias)
    if vid is None:
        raise NotFound(f"alias {cfg.alias!r} points at no version: promote a model first")
    row = reg.version(vid)
    model_id = row["info"].get("model_id")
    if not model_id:
        raise BadInput(f"version {vid} records no catalog model: retrain needs the model it was exported from")
    prod = load_model(ws, model_id)
    base = load_dataset(ws, cfg.base or prod.lineage.get("dataset_id") or "")
    classes = [str(c) for c in row["info"]["classes"]]
    if list(base.classes) != classes:
        raise BadInput(
            f"dataset {base.name} has classes {base.classes} but version {vid} has {classes}: "
            "pass --base with the production model's dataset"
        )
    x_new, y_new, ids, skipped = accepted_feedback(Quarantine(reg), base, classes)
    merged = merge(
        ws,
        base,
        x_new,
        y_new,
        name=f"{base.name}+feedback",
        source={"kind": "feedback", "item_ids": ids, "production_version": vid},
        origin=(org := label_origins(reg, ids)),
    )

    recipe = [r for r in prod.lineage.get("recipe", []) if r.get("type") == "TrainConfig"]
    tcfg = config_from_dict(recipe[-1]) if recipe else TrainConfig()
    assert isinstance(tcfg, TrainConfig)  # the recipe entries kept are TrainConfigs
    tcfg = tcfg.replace(seed=cfg.seed, **({"epochs": cfg.epochs} if cfg.epochs else {}))
    torch.manual_seed(cfg.seed)
    fresh = Model(
        build(prod.config),
        prod.config,
        classes,
        dict(merged.preprocess),
        {"dataset_id": merged.id, "retrained_from": {"model_id": prod.id, "version": vid}},
    )
    cand = train(fresh, merged, tcfg, progress=progress)

    x_test, y_test = base.subset("test")  # the frozen split both models are judged on
    onnx_cand, _ = export_bytes(cand)
    p_prod = onnx_predict_proba(reg.artifact(row["onnx_sha"]), x_test, row["info"]["preprocess"]).argmax(1)
    p_cand = onnx_predict_proba(onnx_cand, x_test, cand.preprocess).argmax(1)
    out = compare(y_test, p_prod, p_cand, classes, cfg.margin, cfg.max_class_drop)
    out.update(
        dataset=merged.id,
        base=base.id,
        added=len(ids),
        origins={o: org.count(o) for o in sorted(set(org))},
        skipped=skipped,
        production_version=vid,
        registered=False,
        model_id=None,
        version=None,
        config=cfg.to_dict(),
    )
    if out["better"]:
        saved = save_model(ws, cand, name=f"{prod.name}-feedback")
        assert saved.id is not None  # save_model sets it
        out.update(registered=True, model_id=saved.id, version=register_model(ws, reg, saved.id, actor=actor))
    return out
