import numpy as np
import pytest

from datamoat.configs import config_from_dict
from datamoat.data import import_digits
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import EvalConfig, calibration_bins, evaluate, evaluate_probs, worst_confusions
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = Workspace.init(tmp_path_factory.mktemp("ws"))
    ds = import_digits(ws)
    model = train(new_model("mlp", ds), ds, TrainConfig(epochs=1, threads=1), progress=False)
    return ds, model


def test_ece_matches_a_hand_computed_case():
    # Confidences and hits, 5 bins of width 0.2:
    #   (0.4, 0.6]: 0.55 right, 0.58 wrong   -> conf 0.565, acc 0.5,  gap 0.065,  weight 2/5
    #   (0.8, 1.0]: 0.90, 0.95 right, 0.85 wrong -> conf 0.9, acc 2/3, gap 0.2333, weight 3/5
    # ECE = 0.4 * 0.065 + 0.6 * 0.23333 = 0.026 + 0.14 = 0.166
    probs = np.array([[0.55, 0.45], [0.58, 0.42], [0.10, 0.90], [0.95, 0.05], [0.15, 0.85]])
    y = np.array([0, 1, 1, 0, 0])
    ev = evaluate_probs(probs, y, ["a", "b"], ece_bins=5)
    assert ev.ece == pytest.approx(0.166)
    counts = [b["count"] for b in ev.reliability]
    assert counts == [0, 0, 2, 0, 3]
    assert ev.reliability[2]["confidence"] == pytest.approx(0.565)
    assert ev.reliability[2]["accuracy"] == pytest.approx(0.5)
    assert ev.reliability[4]["accuracy"] == pytest.approx(2 / 3)
    assert ev.reliability[0]["confidence"] is None
    assert ev.accuracy == pytest.approx(0.6)


def test_bin_edges_are_lower_open_upper_closed():
    # A confidence exactly on an edge belongs to the lower bin (lo, hi].
    _, bins = calibration_bins(np.array([0.5, 0.5000001, 1.0]), np.array([1, 1, 1]), n_bins=2)
    assert [b["count"] for b in bins] == [1, 2]


def test_perfect_classifier():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    probs = np.eye(3)[y]
    ev = evaluate_probs(probs, y, ["a", "b", "c"])
    assert ev.accuracy == 1.0
    assert ev.macro_f1 == 1.0
    assert ev.ece == 0.0
    cm = np.array(ev.confusion)
    assert (cm == np.diag([2, 2, 3])).all()
    assert [p["support"] for p in ev.per_class] == [2, 2, 3]


def test_per_class_metrics_by_hand():
    # True 0,0,1,1; predicted 0,1,1,1: class 0 P=1 R=0.5, class 1 P=2/3 R=1.
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    ev = evaluate_probs(probs, np.array([0, 0, 1, 1]), ["a", "b"])
    a, b = ev.per_class
    assert (a["precision"], a["recall"]) == (1.0, 0.5)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert ev.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert ev.confusion == [[1, 1], [0, 2]]


def test_to_dict_is_plain_json():
    import json

    probs = np.array([[0.7, 0.3], [0.2, 0.8]], dtype=np.float32)
    d = evaluate_probs(probs, np.array([0, 0]), ["a", "b"], split="val", model_id="m", dataset_id="d").to_dict()
    text = json.dumps(d)  # raises on numpy scalars
    assert json.loads(text) == d
    assert d["split"] == "val" and d["model_id"] == "m" and d["n"] == 2


def test_worst_confusions_by_hand():
    # Errors: 0->1 three times (rows 0, 1, 4), 0->2 once (row 2), 2->1 once (row 3); row 5 is right.
    probs = np.array(
        [[0.1, 0.7, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]
    )
    y = np.array([0, 0, 0, 2, 0, 1])
    index = np.array([50, 40, 30, 20, 10, 0])
    worst = worst_confusions(probs, y, ["a", "b", "c"], index)
    # The tie in count (one error each) goes to the smaller (true, predicted) pair.
    assert [(w["true"], w["predicted"], w["count"]) for w in worst] == [("a", "b", 3), ("a", "c", 1), ("c", "b", 1)]
    # Most confident first; the tie at 0.8 goes to the smaller index.
    assert worst[0]["examples"] == [
        {"index": 10, "confidence": 0.8},
        {"index": 40, "confidence": 0.8},
        {"index": 50, "confidence": 0.7},
    ]
    fewer = worst_confusions(probs, y, ["a", "b", "c"], index, pairs=1, per_pair=2)
    assert len(fewer) == 1 and [e["index"] for e in fewer[0]["examples"]] == [10, 40]
    # Through evaluate_probs, the default index is the row number.
    ev = evaluate_probs(probs, y, ["a", "b", "c"])
    assert [e["index"] for e in ev.worst_confusions[0]["examples"]] == [1, 4, 0]
    assert evaluate_probs(np.eye(3), np.arange(3), ["a", "b", "c"]).worst_confusions == []


def test_evaluate_probs_rejects_bad_input():
    with pytest.raises(BadInput, match="softmax"):
        evaluate_probs(np.array([[2.0, -1.0]]), np.array([0]), ["a", "b"])
    with pytest.raises(BadInput, match=r"\(N, 3\)"):
        evaluate_probs(np.eye(2), np.array([0, 1]), ["a", "b", "c"])
    with pytest.raises(BadInput, match="labels"):
        evaluate_probs(np.eye(2), np.array([0]), ["a", "b"])
    with pytest.raises(BadInput, match="index"):
        evaluate_probs(np.eye(2), np.array([0, 1]), ["a", "b"], index=np.array([3]))


def test_eval_config_validates_and_round_trips():
    with pytest.raises(BadInput, match="split"):
        EvalConfig(split="holdout")
    with pytest.raises(BadInput, match="ece_bins"):
        EvalConfig(ece_bins=0)
    cfg = EvalConfig(split="val", ece_bins=10)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_evaluate_agrees_with_numpy(trained):
    ds, model = trained
    ev = evaluate(model, ds)
    x, y = ds.subset("test")
    pred = model.logits(x).argmax(1)
    assert ev.n == len(y)
    assert ev.accuracy == pytest.approx(float((pred == y).mean()))
    cm = np.array(ev.confusion)
    assert cm.sum() == len(y)
    assert np.trace(cm) == int((pred == y).sum())
    assert (cm.sum(1) == np.bincount(y, minlength=10)).all()
    assert sum(b["count"] for b in ev.reliability) == len(y)
    assert ev.dataset_id == ds.id and ev.split == "test"
    # The worst confusions' examples are rows of the whole dataset, in the test split, mistaken as listed.
    np.fill_diagonal(cm, 0)
    assert bool(ev.worst_confusions) == bool(cm.any())
    assert [w["count"] for w in ev.worst_confusions] == sorted(cm.ravel(), reverse=True)[: len(ev.worst_confusions)]
    for w in ev.worst_confusions:
        idx = np.array([e["index"] for e in w["examples"]])
        assert (ds.split[idx] == 2).all() and (ds.y[idx] == ds.classes.index(w["true"])).all()
        assert (model.logits(ds.x[idx]).argmax(1) == ds.classes.index(w["predicted"])).all()


def test_evaluate_other_split_and_batch_size(trained):
    ds, model = trained
    a = evaluate(model, ds, EvalConfig(split="val", batch_size=7))
    b = evaluate(model, ds, EvalConfig(split="val"))
    assert a.n == int((ds.split == 1).sum())
    assert a.confusion == b.confusion
    assert a.ece == pytest.approx(b.ece, abs=1e-6)


def test_evaluate_rejects_mismatched_classes(trained, tmp_path):
    from datamoat.data import make_dataset

    ds, model = trained
    ws = Workspace.init(tmp_path)
    other = make_dataset(ws, ds.x, ds.y, [f"c{i}" for i in range(10)], name="renamed", source={"kind": "test"})
    with pytest.raises(BadInput, match="same classes"):
        evaluate(model, other)
