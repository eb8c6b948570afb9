"""Unlabeled pools: stored beside labelled data, passed by every split, labelled into new versions
with the origin of each label."""

import numpy as np
import pytest

from datamoat.data.dataset import SPLITS, load_dataset, make_dataset
from datamoat.data.pool import POOL, hide_labels, label_rows, make_pool, origin_counts, origins, pool_rows, with_pool
from datamoat.data.versions import apply_fixes, merge
from datamoat.errors import BadInput


def _mixed(ws):
    """40 labelled 4x4 images in two classes and 10 unlabeled ones (label -1)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 1, 4, 4), dtype=np.uint8)
    y = np.r_[np.repeat([0, 1], 20), np.full(10, -1)]
    return make_dataset(ws, x, y, ["a", "b"], name="mixed", source={"kind": "test"}, val=0.2, test=0.2)


def test_unlabeled_items_go_to_the_pool_and_out_of_every_split(ws):
    ds = _mixed(ws)
    assert pool_rows(ds).tolist() == list(range(40, 50))
    assert (ds.y[pool_rows(ds)] == -1).all()
    for name in SPLITS:  # the labelled splits hold labelled rows only
        assert (ds.subset(name)[1] >= 0).all()
    assert sum(len(ds.subset(n)[1]) for n in SPLITS) == 40
    assert ds.stats()["unlabeled"] == 10
    again = load_dataset(ws, ds.id)
    assert np.array_equal(again.split, ds.split) and again.id == ds.id


def test_a_dataset_without_unlabeled_items_keeps_its_id(ws, digits):
    # the pool support must not change the content hash of existing versions
    again = make_dataset(
        ws, np.array(digits.x), np.array(digits.y), digits.classes, name="d2", source={}, split=np.array(digits.split)
    )
    assert again.id == digits.id and "origin" not in again.manifest["blobs"]


def test_label_rows_moves_pool_rows_into_train_with_their_origin_and_lineage(ws):
    ds = _mixed(ws)
    rows = pool_rows(ds)[[3, 0]]
    v2 = label_rows(ws, ds, rows, np.array([1, 0]), origin="human", actor="ana")
    assert v2.id != ds.id and load_dataset(ws, ds.id).stats()["unlabeled"] == 10  # the parent is untouched
    assert v2.y[rows].tolist() == [1, 0] and (v2.split[rows] == SPLITS["train"]).all()
    assert len(pool_rows(v2)) == 8
    assert origins(load_dataset(ws, v2.id))[rows].tolist() == [1, 1]  # "human"
    assert origin_counts(v2) == {"import": 40, "human": 2, "gate": 0, "model": 0}
    row = ws.resolve("datasets", v2.id)
    assert row["parent_id"] == ds.id and row["source"]["actor"] == "ana" and row["source"]["labelled"] == 2
    # a later version made by another verb carries the origins of the rows it keeps
    fixed = apply_fixes(ws, v2, [{"index": 0, "drop": True}])
    assert origins(load_dataset(ws, fixed.id))[rows - 1].tolist() == [1, 1]


def test_merge_records_the_origin_of_appended_labels(ws, digits):
    x = np.array(digits.x[:3])
    v2 = merge(ws, digits, x, np.array([1, 2, 3]), name="fb", source={}, origin="gate")
    assert origins(load_dataset(ws, v2.id))[-3:].tolist() == [2, 2, 2]
    assert origin_counts(v2)["import"] == len(digits.y)
    with pytest.raises(BadInput, match="origin"):
        merge(ws, digits, x, np.array([1, 2, 3]), name="fb", source={}, origin="crowd")


def test_a_pool_alone_and_grown(ws):
    x = np.random.default_rng(1).integers(0, 255, (6, 1, 4, 4), dtype=np.uint8)
    pool = make_pool(ws, x, ["a", "b"], name="p", source={"kind": "test"})
    assert (pool.split == POOL).all() and len(pool.preprocess["mean"]) == 1
    grown = with_pool(ws, pool, x[:2], source={"kind": "more"})
    assert len(pool_rows(grown)) == 8 and grown.preprocess == pool.preprocess
    labelled = label_rows(ws, grown, np.array([0, 1, 2]), np.array([0, 1, 1]), origin="model", actor="m")
    assert origin_counts(labelled)["model"] == 3


@pytest.mark.parametrize(
    ("rows", "labels", "origin", "match"),
    [
        ([0], [1], "human", "unlabeled items"),  # row 0 is labelled already
        ([45], [2], "human", "class indices"),
        ([45, 45], [0, 1], "human", "twice"),
        ([45], [0, 1], "human", "one to one"),
        ([], [], "human", "no labels"),
        ([45], [0], "crowd", "origin"),
    ],
)
def test_label_rows_refuses_bad_input(ws, rows, labels, origin, match):
    ds = _mixed(ws)
    with pytest.raises(BadInput, match=match):
        label_rows(ws, ds, np.array(rows), np.array(labels), origin=origin, actor="x")


def test_bad_pools_are_refused(ws):
    with pytest.raises(BadInput, match="empty"):
        make_pool(ws, np.zeros((0, 1, 4, 4), np.uint8), ["a", "b"], name="p", source={})
    with pytest.raises(BadInput, match="class names"):
        make_pool(ws, np.zeros((2, 1, 4, 4), np.uint8), ["a"], name="p", source={})
    ds = _mixed(ws)
    with pytest.raises(BadInput, match="resize"):
        with_pool(ws, ds, np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(BadInput, match="coincide"):
        make_dataset(ws, np.array(ds.x), np.array(ds.y), ds.classes, name="x", source={}, split=np.zeros(50, np.uint8))


def test_hide_labels_puts_labelled_rows_back_in_the_pool(ws, digits):
    train = np.flatnonzero(digits.split == SPLITS["train"])
    held = hide_labels(ws, digits, train[:50])
    assert pool_rows(held).tolist() == sorted(train[:50].tolist()) and (held.y[train[:50]] == -1).all()
    back = label_rows(ws, held, train[:50], digits.y[train[:50]], origin="import", actor="oracle")
    assert np.array_equal(back.y, digits.y) and np.array_equal(back.split, digits.split)
    with pytest.raises(BadInput, match="labelled items"):
        hide_labels(ws, held, train[:1])
