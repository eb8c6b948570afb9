"""Pool items onto /review, people's labels back as a new version, and the loop.

A digits pool: the val and test rows keep their labels, 300 train images are the unlabeled
pool; `truth` holds every row's true class (the oracle, and the reviewers' answers)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from datamoat.data import import_digits
from datamoat.data.dataset import SPLITS, make_dataset
from datamoat.data.pool import ORIGINS, POOL, origins, pool_rows, with_pool
from datamoat.errors import BadInput, Unprocessable
from datamoat.feedback import GateConfig, Quarantine, evaluate_gate
from datamoat.feedback.loop import label_loop
from datamoat.feedback.review import ReviewQueue
from datamoat.feedback.suggest import apply_labels, suggest
from datamoat.models import new_model, save_model
from datamoat.registry.answer_rows import input_hash
from datamoat.registry.core import Registry
from datamoat.registry.ledger import queue_pool_items, record_feedback
from datamoat.train.acquire import AcquireConfig, scores
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

TRAIN = TrainConfig(epochs=8, batch_size=32, threads=1, patience=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    ws = Workspace.init(tmp_path_factory.mktemp("al") / "ws")
    d = import_digits(ws)
    keep = d.split != SPLITS["train"]
    held = make_dataset(
        ws,
        np.array(d.x[keep]),
        np.array(d.y[keep]),
        d.classes,
        name="held",
        source={"kind": "test"},
        split=np.array(d.split[keep]),
        preprocess=d.preprocess,
    )
    x_tr, y_tr = d.subset("train")
    pool = with_pool(ws, held, np.array(x_tr[:300]), name="digits-pool")
    truth = np.concatenate([held.y, y_tr[:300]])
    small = train(new_model("mlp", d), d, TRAIN.replace(epochs=2), progress=False)
    model = save_model(ws, small, name="mlp-al")
    other = train(new_model("mlp", d, seed=1), d, TRAIN.replace(epochs=2, seed=1), progress=False)
    return SimpleNamespace(ws=ws, digits=d, pool=pool, truth=truth, model=model, other=save_model(ws, other))


@pytest.fixture
def reg(tmp_path) -> Registry:
    r = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    r.create_token("review", "ana", actor="test")  # the gate trusts a review token's decisions
    return r


def pool_ids(reg: Registry) -> list[dict]:
    return [r for r in ReviewQueue(reg).items() if r["prediction_id"].startswith("pool:")]


def decide_all(reg: Registry, truth: np.ndarray, actor: str = "ana") -> None:
    """A reviewer labels every open pool item with its true class; the gate then runs."""
    queue = ReviewQueue(reg)
    for r in pool_ids(reg):
        if r["status"] == "open":
            row = int(r["prediction_id"].rsplit(":", 1)[1])
            queue.decide(r["prediction_id"], str(truth[row]), actor=actor)
    evaluate_gate(Quarantine(reg), GateConfig())


def test_suggest_queues_the_strategys_top_items_on_review(world, reg):
    out = suggest(world.ws, reg, world.pool, world.model, AcquireConfig(strategy="margin", budget=5))
    rows = pool_rows(world.pool)
    margin = scores(world.model.predict_proba(world.pool.x, rows=rows), "margin")
    assert out["rows"] == rows[np.argsort(-margin, kind="stable")[:5]].tolist()
    items = pool_ids(reg)
    assert [r["prediction_id"] for r in items] == out["queued"] == [f"pool:{world.pool.id}:{r}" for r in out["rows"]]
    assert all(r["status"] == "open" and "margin pick" in r["reason"] and len(r["top"]) == 3 for r in items)
    first = ReviewQueue(reg).next()["item"]
    assert first["classes"] == world.pool.classes and first["model_version"] == out["version"]
    assert np.array_equal(first["pixels"], world.pool.x[out["rows"][0]])


def test_disagreement_asks_a_committee(world, reg):
    cfg = AcquireConfig(strategy="disagreement", budget=3)
    with pytest.raises(BadInput, match="at least 2 models"):
        suggest(world.ws, reg, world.pool, world.model, cfg)
    out = suggest(world.ws, reg, world.pool, world.model, cfg, members=[world.other])
    rows = pool_rows(world.pool)
    members = np.stack([m.predict_proba(world.pool.x, rows=rows) for m in (world.model, world.other)])
    kl = scores(members.mean(0), "disagreement", members)
    assert out["rows"] == rows[np.argsort(-kl, kind="stable")[:3]].tolist()


def test_an_item_is_queued_once_open_or_decided(world, reg):
    cfg = AcquireConfig(strategy="entropy", budget=4)
    a = suggest(world.ws, reg, world.pool, world.model, cfg)
    b = suggest(world.ws, reg, world.pool, world.model, cfg)  # the same ranking: the next four
    assert not set(a["rows"]) & set(b["rows"]) and b["already_on_review"] == 4
    decide_all(reg, world.truth)
    c = suggest(world.ws, reg, world.pool, world.model, cfg)
    assert not set(c["rows"]) & set(a["rows"] + b["rows"]) and c["already_on_review"] == 8
    assert len(pool_ids(reg)) == 12
    # Queuing a row again by hand is a no-op too.
    again = {"dataset_id": world.pool.id, "row": a["rows"][0], "model_version": a["version"], "reason": "x"}
    assert queue_pool_items(reg.engine, [{**again, "pixels": world.pool.x[a["rows"][0]], "top": []}], "pool") == []
    n = len(pool_rows(world.pool))
    with pytest.raises(BadInput, match=f"only {n - 12} unlabeled items"):
        suggest(world.ws, reg, world.pool, world.model, cfg.replace(budget=n - 11))


def test_decided_accepted_labels_become_a_version_with_lineage(world, reg):
    out = suggest(world.ws, reg, world.pool, world.model, AcquireConfig(strategy="badge", budget=6))
    queue = ReviewQueue(reg)
    ids = out["queued"]
    for pid in ids[:4]:
        queue.decide(pid, str(world.truth[int(pid.rsplit(":", 1)[1])]), actor="ana")
    ds, report = apply_labels(world.ws, reg, world.pool)  # decided, but the gate has not run
    assert ds is world.pool and report["applied"] == 0 and report["waiting"] == {"open": 2, "pending": 4}
    evaluate_gate(Quarantine(reg), GateConfig())
    ds, report = apply_labels(world.ws, reg, world.pool)
    rows = sorted(int(p.rsplit(":", 1)[1]) for p in ids[:4])
    assert report["applied"] == 4 and report["rows"] == rows and report["reviewers"] == ["ana"]
    assert ds.id != world.pool.id and ds.y[rows].tolist() == world.truth[rows].tolist()
    assert (ds.split[rows] == SPLITS["train"]).all() and (origins(ds)[rows] == ORIGINS.index("human")).all()
    assert len(pool_rows(ds)) == len(pool_rows(world.pool)) - 4
    row = world.ws.resolve("datasets", ds.id)
    assert row["parent_id"] == world.pool.id
    src = row["source"]
    assert (src["origin"], src["actor"], src["labelled"], row["name"]) == ("human", "ana", 4, world.pool.name)
    assert sorted(src["from"]["prediction_ids"]) == sorted(ids[:4]) and len(src["from"]["feedback_items"]) == 4
    # retrain's merge of accepted feedback leaves them to this lineage: no image labelled twice
    from datamoat.feedback.retrain import accepted_feedback

    with pytest.raises(BadInput, match="no accepted feedback"):
        accepted_feedback(Quarantine(reg), ds, ds.classes)
    # Applied again, on the new version: nothing new, the four already labelled.
    again, report = apply_labels(world.ws, reg, ds)
    assert again is ds and report["applied"] == 0 and report["already_labelled"] == 4


def test_an_item_whose_pixels_are_not_its_rows_is_refused(world, reg):
    rows = pool_rows(world.pool)
    vid = suggest(world.ws, reg, world.pool, world.model, AcquireConfig(strategy="random", budget=1))["version"]
    victim, other = int(rows[-1]), int(rows[-2])
    # An item that names the victim's row but carries another image, as a forged write would.
    forged = {"dataset_id": world.pool.id, "row": victim, "model_version": vid, "reason": "forged", "top": []}
    queue_pool_items(reg.engine, [{**forged, "pixels": world.pool.x[other]}], "pool")
    # Nor can a client label a pool item through /v1/feedback: its id is guessable.
    pid = f"pool:{world.pool.id}:{victim}"
    with pytest.raises(Unprocessable, match="unlabeled pool item"):
        record_feedback(reg, pid, "3", source="review", actor="mallory")
    decide_all(reg, world.truth)
    ds, report = apply_labels(world.ws, reg, world.pool)
    assert [r["prediction_id"] for r in report["refused"]] == [pid]
    assert "not row" in report["refused"][0]["reason"] and report["applied"] == 1
    assert ds.split[victim] == POOL and input_hash(world.pool.x[victim]) != input_hash(world.pool.x[other])


def test_the_loop_with_an_oracle_for_two_rounds(world):
    out = label_loop(
        world.ws,
        world.pool,
        arch="mlp",
        acquire_config=AcquireConfig(strategy="hybrid", budget=20),
        train_config=TRAIN,
        rounds=2,
        oracle=lambda rows: world.truth[rows],
    )
    r1, r2 = out["rounds"]
    assert (r1["round"], r1["strategy"], r1["labels"]) == (1, "random", 20)
    assert (r2["round"], r2["strategy"], r2["labels"]) == (2, "hybrid", 40)
    assert all(0 < r["test_accuracy"] <= 1 and r["seconds"] > 0 for r in out["rounds"])
    ds = out["dataset"]
    labelled = np.flatnonzero(ds.split == SPLITS["train"])
    assert len(labelled) == 40 and (ds.y[labelled] == world.truth[labelled]).all()
    assert out["model"].lineage["dataset_id"] == ds.id and out["model"].id == r2["model"]
    again = label_loop(
        world.ws,
        world.pool,
        arch="mlp",
        acquire_config=AcquireConfig(strategy="hybrid", budget=20),
        train_config=TRAIN,
        rounds=2,
        oracle=lambda rows: world.truth[rows],
    )
    assert again["dataset"].id == ds.id  # the same picks and labels with the same seeds


def test_the_loop_with_people_stops_for_them_and_resumes(world, reg):
    acq = AcquireConfig(strategy="margin", budget=8)
    first = label_loop(world.ws, world.pool, arch="mlp", acquire_config=acq, train_config=TRAIN, registry=reg)
    assert first["waiting"] and first["model"] is None and len(first["queued"]) == 8
    assert all(r["top"] == [] for r in pool_ids(reg))  # no untrained guesses shown to the reviewer
    waiting = label_loop(world.ws, world.pool, arch="mlp", acquire_config=acq, train_config=TRAIN, registry=reg)
    assert waiting["queued"] == [] and waiting["applied"]["waiting"] == {"open": 8}
    decide_all(reg, world.truth)
    step = label_loop(world.ws, world.pool, arch="mlp", acquire_config=acq, train_config=TRAIN, registry=reg)
    assert step["applied"]["applied"] == 8 and [r["labels"] for r in step["rounds"]] == [8]
    assert len(step["queued"]) == 8 and step["suggest"]["model"] == step["model"].id
    assert all("margin pick" in r["reason"] for r in pool_ids(reg)[8:])


def test_bad_loop_input(world):
    acq = AcquireConfig(budget=5)
    with pytest.raises(BadInput, match="an architecture"):
        label_loop(world.ws, world.pool, acquire_config=acq)
    with pytest.raises(BadInput, match="registry"):
        label_loop(world.ws, world.pool, arch="mlp", acquire_config=acq)
    with pytest.raises(BadInput, match="the oracle gave"):
        label_loop(world.ws, world.pool, arch="mlp", acquire_config=acq, oracle=lambda rows: rows * 0 + 99)
