"""Closing the loop: a candidate is registered only when it beats production."""

import numpy as np
import pytest

from datamoat.data import SPLITS, load_dataset
from datamoat.errors import BadInput
from datamoat.feedback import RetrainConfig, compare, retrain_from_feedback


def feed_train_images(q, trained, n=40):
    """n train images with their true labels, accepted by a person."""
    x, y = trained.ds.subset("train")
    ids = q.import_items(x[:n], [str(v) for v in y[:n]], source="vendor")
    q.decide(ids, "accepted", actor="ana")
    return ids


def test_nothing_accepted_is_a_clear_error(q, trained):
    with pytest.raises(BadInput, match="no accepted feedback"):
        retrain_from_feedback(trained.ws, q.registry, RetrainConfig(epochs=1), actor="ops")


def test_not_registered_unless_better_by_the_margin(q, trained):
    ids = feed_train_images(q, trained)
    test_img = q.import_items(trained.x[:2], [str(v) for v in trained.y[:2]], source="leaky")
    q.decide(test_img, "accepted", actor="ana")  # test images must never reach training
    before = len(q.registry.versions())
    out = retrain_from_feedback(trained.ws, q.registry, RetrainConfig(margin=100, epochs=2), actor="ops")
    assert not out["registered"] and out["version"] is None and len(q.registry.versions()) == before
    assert "below the margin 100" in out["reasons"][0]
    assert out["added"] == len(ids) and out["skipped"] == 2
    merged, base = load_dataset(trained.ws, out["dataset"]), trained.ds
    # The new version is base + feedback in train; the test split is the same frozen one.
    assert len(merged.y) == len(base.y) + len(ids)
    np.testing.assert_array_equal(merged.subset("test")[0], base.subset("test")[0])
    assert (merged.split == SPLITS["train"]).sum() == (base.split == SPLITS["train"]).sum() + len(ids)
    assert out["test_samples"] == len(base.subset("test")[1]) and len(out["per_class"]) == 10

    ok = retrain_from_feedback(
        trained.ws, q.registry, RetrainConfig(margin=-100, max_class_drop=100, epochs=2), actor="ops"
    )
    assert ok["registered"] and ok["version"] in {v["id"] for v in q.registry.versions()}
    assert q.registry.snapshot()["aliases"]["production"] == trained.vid  # a candidate, not promoted
    assert q.registry.version(ok["version"])["info"]["lineage"]["dataset_id"] == out["dataset"]


def test_a_class_that_drops_blocks_registration():
    y = np.repeat(np.arange(3), 10)  # 30 samples, classes 0, 1, 2
    prod = y.copy()
    prod[:3] = 1  # production misses 3 of class 0
    cand = y.copy()
    cand[10] = 2  # the candidate fixes class 0 but loses one of class 1: +6.67 overall, class 1 -10
    r = compare(y, prod, cand, ["a", "b", "c"], margin=1.0, max_class_drop=0.5)
    assert r["gain"] == pytest.approx(100 * 2 / 30) and not r["better"]
    assert r["worst_class"]["class"] == "b" and "drops 10.00 points" in r["reasons"][0]
    assert compare(y, prod, cand, ["a", "b", "c"], margin=1.0, max_class_drop=10.0)["better"]


def test_merged_labels_record_who_gave_them(q, trained):
    from datamoat.data.pool import ORIGINS, origins
    from datamoat.feedback.review import ReviewQueue

    from .helpers_fb import answered, served, server_feedback

    reg, (x, y) = q.registry, trained.ds.subset("train")
    feed_train_images(q, trained, n=3)  # a vendor's labels, accepted after the quarantine: "gate"
    reviewed = answered(reg, x[3:5])  # the review queue's items, decided by a person on /review: "human"
    for pid, label in zip(reviewed, y[3:5]):
        ReviewQueue(reg).decide(pid, str(label), "ana")
    spoof = served(q, x[5], str(y[5]))  # a client naming its feedback "review" is still a client: "gate"
    server_feedback(q, spoof, str(y[5]), "review")
    q.sync()
    q.attach_pixels(x[5:6])
    pending = [r["id"] for r in q.items(status="pending")]
    q.decide(pending, "accepted", actor="ana")
    out = retrain_from_feedback(trained.ws, reg, RetrainConfig(margin=100, epochs=1), actor="ops")
    assert out["added"] == 6 and out["origins"] == {"gate": 4, "human": 2}
    merged = load_dataset(trained.ws, out["dataset"])
    new = [ORIGINS[c] for c in origins(merged)[len(trained.ds.y) :]]
    human = {r["id"] for r in q.items() if r["prediction_id"] in reviewed}
    ids = trained.ws.resolve("datasets", merged.id)["source"]["from"]["item_ids"]
    assert new == ["human" if i in human else "gate" for i in ids] and new.count("human") == 2
