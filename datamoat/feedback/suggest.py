"""Active learning with people: pool items onto the review queue, and their labels back.

`suggest` ranks a dataset version's unlabeled rows (`datamoat.data.pool`) with
a model and an acquisition strategy (`datamoat.train.acquire`) and puts the
top `budget` on the review queue (``/review``) as items whose prediction id
names the row, ``pool:<dataset id>:<row>``, with the pixels, the model's top
answers and the strategy as the reason. The server writes that id and the
pixels' hash; an item is queued once (an image already on review, open or
decided, is not picked again).

A person's decision on ``/review`` becomes a quarantine item (source
``review``) that the gate accepts or holds like any other label
(`datamoat.feedback.gate`). `apply_labels` then turns the accepted ones into a
new version (`datamoat.data.pool.label_rows`, origin "human", the reviewer as
actor, the review and feedback ids in its source). The row an item labels is
taken from the id the server wrote, never from pixels a client sent, and the
stored pixels must hash to that row's pixels: an item that names a row with
other pixels is refused.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from datamoat.data.dataset import SPLITS, Dataset, read_rows
from datamoat.data.pool import POOL, label_rows, pool_rows
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import check_model_fits
from datamoat.feedback.store import Quarantine
from datamoat.models.model import Model, save_model
from datamoat.registry.answer_rows import input_hash
from datamoat.registry.core import Registry
from datamoat.registry.ledger import POOL_PREFIX, REVIEW_SOURCE, pool_reviews, queue_pool_items, review_pixels
from datamoat.registry.register import register_model
from datamoat.train.acquire import AcquireConfig, rank_pool
from datamoat.workspace import Workspace

__all__ = ["suggest", "apply_labels", "registered_version", "lineage_ids", "row_hashes"]


def row_hashes(ds: Dataset, rows: np.ndarray, batch: int = 1024) -> list[str]:
    """The review queue's input hash of each of `ds`'s `rows`, read batch by batch."""
    out: list[str] = []
    for i in range(0, len(rows), batch):
        out += [input_hash(img) for img in read_rows(ds.x, rows[i : i + batch])]
    return out


def lineage_ids(ws: Workspace, ds: Dataset) -> list[str]:
    """`ds`'s id and its ancestors' (parent first): pool rows keep their index along the chain."""
    out, at = [ds.id], ws.resolve("datasets", ds.id).get("parent_id")
    while at and at not in out:
        out.append(at)
        parent = ws.rows("datasets", "WHERE id = ?", (at,))
        at = parent[0].get("parent_id") if parent else None
    return out


def registered_version(ws: Workspace, reg: Registry, model: Model, *, actor: str) -> str:
    """The registry version of catalog model `model` (fp32), registered now if it has none; the
    review queue reads the classes a decision may choose from there."""
    if model.id is None:
        model = save_model(ws, model)
    for v in reg.versions():
        if v["info"].get("model_id") == model.id and v["kind"] == "fp32":
            return str(v["id"])
    assert model.id is not None  # save_model sets it
    return register_model(ws, reg, model.id, actor=actor)


def suggest(
    ws: Workspace,
    registry: Registry,
    pool_ds: Dataset,
    model: Model,
    config: AcquireConfig,
    *,
    members: list[Model] | None = None,
    actor: str = "suggest",
    answers: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Rank `pool_ds`'s unlabeled rows with `model` and queue the top `config.budget` on ``/review``.

    `members` are the other models of a committee for ``disagreement``; `answers` False queues the
    items without the model's answers (an untrained model's guesses would only lead a reviewer).
    Returns what was queued: ids, rows, the registry version the reviewers' classes come from.

    >>> out = suggest(ws, reg, load_dataset(ws, "pool"), load_model(ws, "small"), AcquireConfig(budget=20))  # doctest: +SKIP
    >>> len(out["queued"])  # doctest: +SKIP
    20
    """
    t0 = time.perf_counter()
    rows = pool_rows(pool_ds)
    if len(rows) == 0:
        raise BadInput(
            f"dataset {pool_ds.name} ({pool_ds.id}) has no unlabeled items: give a pool version, or add images to it"
        )
    check_model_fits(model, pool_ds, "suggest")
    for m in members or []:
        check_model_fits(m, pool_ds, "suggest")
    b = config.budget
    if b > len(rows):
        raise BadInput(
            f"budget {b} is larger than the {len(rows)} unlabeled items of {pool_ds.name}: "
            f"lower --budget to at most {len(rows)}"
        )
    on_review = {r.input_sha256 for r in pool_reviews(registry.engine)}
    queued_rows = np.array([], np.int64)
    if on_review:
        seen = np.array([h in on_review for h in row_hashes(pool_ds, rows)], bool)
        rows, queued_rows = rows[~seen], rows[seen]
        if b > len(rows):
            raise BadInput(
                f"only {len(rows)} unlabeled items of {pool_ds.name} are not on review yet: lower --budget, "
                "or decide the queued ones and run `datamoat label apply`"
            )
    labelled = np.concatenate([np.flatnonzero(pool_ds.split == SPLITS["train"]), queued_rows])
    picks, probs = rank_pool(pool_ds, rows, model, config, members=members, labelled=labelled, progress=progress)
    if model.id is None:
        model = save_model(ws, model)
    vid = registered_version(ws, registry, model, actor=actor)
    items = []
    for rank, (row, p) in enumerate(zip(picks, probs), start=1):
        top = np.argsort(-p, kind="stable")[:3]
        items.append(
            {
                "dataset_id": pool_ds.id,
                "row": int(row),
                "model_version": vid,
                "pixels": read_rows(pool_ds.x, np.array([row]))[0],  # (C, H, W)
                "top": [{"label": model.classes[k], "probability": float(p[k])} for k in top] if answers else [],
                "reason": f"active learning: {config.strategy} pick {rank} of {b} (seed {config.seed})",
            }
        )
    ids = queue_pool_items(registry.engine, items, alias="pool")
    return {
        "pool": pool_ds.id,
        "name": pool_ds.name,
        "model": model.id,
        "version": vid,
        "strategy": config.strategy,
        "budget": b,
        "unlabeled": int(len(rows) + len(queued_rows)),
        "already_on_review": int(len(queued_rows)),
        "queued": ids,
        "rows": [int(r) for r in picks],
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def _parse(prediction_id: str) -> tuple[str, int] | None:
    """(dataset id, row) of a pool item's id, or None."""
    ds_id, _, row = prediction_id.removeprefix(POOL_PREFIX).rpartition(":")
    return (ds_id, int(row)) if ds_id and row.isdigit() else None


def _judge(r: Any, item: dict[str, Any] | None, pool_ds: Dataset) -> tuple[str, Any]:
    """What to do with one pool review row: ("take", (row, item)), ("wait", status), ("already", row)
    or ("refuse", why). `item` is the quarantine item its decision became."""
    _, row = _parse(r.prediction_id) or ("", -1)
    if r.status != "decided" or r.feedback_item is None:
        return "wait", "open"
    if item is None or item["prediction_id"] != r.prediction_id or item["source"] != REVIEW_SOURCE:
        return "refuse", "its decision links to no review item of this id"
    if item["status"] != "accepted":
        return "wait", item["status"]
    if item["label"] != r.decided_label or item["label"] not in pool_ds.classes:
        return "refuse", f"label {item['label']!r} is not the reviewer's decision or not a class of {pool_ds.name}"
    if not 0 <= row < len(pool_ds.y):
        return "refuse", f"row {row} is not in {pool_ds.name} ({len(pool_ds.y)} rows)"
    if pool_ds.split[row] != POOL:
        return "already", row
    want = row_hashes(pool_ds, np.array([row]))[0]
    if not (input_hash(review_pixels(r)) == r.input_sha256 == item["input_sha256"] == want):
        return "refuse", f"the stored pixels are not row {row}'s pixels"
    return "take", (row, item)


def apply_labels(
    ws: Workspace, registry: Registry, pool_ds: Dataset, *, name: str | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """The accepted review labels of `pool_ds`'s rows as a new version, and a report.

    Takes the pool items queued for `pool_ds` or an ancestor (`suggest`) whose ``/review``
    decision the gate or a person accepted. The new version keeps `pool_ds`'s name unless `name`
    says otherwise, so the name keeps naming the newest labels (`load_dataset` resolves a name to
    its newest version). Returns `pool_ds` itself when none is new. The report
    counts the items still waiting (open on review, or in quarantine as pending, held or rejected),
    those already labelled in `pool_ds`, and lists the refused ones with why.

    >>> ds, report = apply_labels(ws, reg, load_dataset(ws, "pool"))  # doctest: +SKIP
    >>> report["applied"]  # doctest: +SKIP
    20
    """
    chain = set(lineage_ids(ws, pool_ds))
    reviews = [r for r in pool_reviews(registry.engine, pixels=True) if (_parse(r.prediction_id) or ("",))[0] in chain]
    decided = [r.feedback_item for r in reviews if r.status == "decided" and r.feedback_item is not None]
    fb = {it["id"]: it for it in Quarantine(registry).items(ids=decided)} if decided else {}
    waiting: Counter[str] = Counter()
    refused: list[dict[str, Any]] = []
    take: dict[int, tuple[int, str, int, str]] = {}  # row -> (class, reviewer, feedback item, prediction id)
    already = 0
    for r in reviews:
        verdict, what = _judge(r, fb.get(r.feedback_item) if r.status == "decided" else None, pool_ds)
        if verdict == "wait":
            waiting[what] += 1
        elif verdict == "refuse":
            refused.append({"prediction_id": r.prediction_id, "feedback_item": r.feedback_item, "reason": what})
        elif verdict == "already" or what[0] in take:  # a row queued under two versions: the first decision stands
            already += 1
        else:
            row, item = what
            take[row] = (pool_ds.classes.index(item["label"]), str(r.decided_by), int(item["id"]), r.prediction_id)
    out, made = pool_ds, []
    by_actor: dict[str, list[int]] = defaultdict(list)
    for row, (_, actor, _, _) in take.items():
        by_actor[actor].append(row)
    for actor in sorted(by_actor):  # one version per reviewer: each version's actor is one person
        rows = np.array(sorted(by_actor[actor]), np.int64)
        source = {
            "kind": "review",
            "reviewer": actor,
            "feedback_items": [take[int(r)][2] for r in rows],
            "prediction_ids": [take[int(r)][3] for r in rows],
        }
        labels = np.array([take[int(r)][0] for r in rows], np.int64)
        out = label_rows(ws, out, rows, labels, origin="human", actor=actor, name=name or pool_ds.name, source=source)
        made.append(out.id)
    report = {
        "pool": pool_ds.id,
        "dataset": out.id,
        "versions": made,
        "applied": len(take),
        "rows": sorted(int(r) for r in take),
        "reviewers": sorted(by_actor),
        "already_labelled": already,
        "waiting": dict(waiting),
        "refused": refused,
    }
    return out, report
