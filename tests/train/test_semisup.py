import json

import numpy as np
import pytest
import torch
from dmtest import dm_main

from datamoat.data.dataset import SPLITS, load_dataset
from datamoat.data.pool import POOL, UNLABELED, make_pool, origins
from datamoat.errors import BadInput
from datamoat.models import new_model
from datamoat.train.loop import TrainConfig, train
from datamoat.train.run import train_in_workspace
from datamoat.train.semisup import FixMatchConfig, pseudo_label_loss


@pytest.fixture
def pool(ws, digits):
    """The digits' train images without their labels, normalised like the digits."""
    x = np.asarray(digits.x[digits.split == SPLITS["train"]][:300])
    return make_pool(ws, x, digits.classes, name="digits-pool", source={"test": True}, preprocess=digits.preprocess)


def _cfg(**semi) -> TrainConfig:
    return TrainConfig(
        epochs=2, batch_size=32, max_train_samples=128, threads=1, patience=0, semisup=FixMatchConfig(**semi)
    )


def test_only_confident_items_train_toward_their_pseudo_labels():
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.50, 0.45, 0.05], [0.01, 0.01, 0.98], [0.10, 0.90, 0.00]])
    weak = probs.clamp(min=1e-9).log()  # logits whose softmax is `probs`
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, mask, pseudo = pseudo_label_loss(weak, strong, threshold=0.9)
    assert mask.tolist() == [True, False, True, True]  # 0.90 reaches a threshold of 0.90
    assert pseudo[mask].tolist() == [0, 2, 1]
    expected = torch.nn.functional.cross_entropy(strong[mask], pseudo[mask], reduction="sum") / 4
    assert torch.allclose(loss, expected)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0  # the unsure item gives no gradient
    none, nothing, _ = pseudo_label_loss(weak, strong, threshold=0.99)
    assert not nothing.any() and float(none.detach()) == 0.0


def test_fixmatch_trains_and_records_the_pool_threshold_and_mu(ws, digits, pool):
    before = {r["id"]: r for r in ws.rows("datasets")}
    cfg = _cfg(threshold=0.7, mu=2)
    model, run_id = train_in_workspace(ws, digits.id, "cnn_small", cfg, unlabeled=pool.name, progress=False)
    semi = model.lineage["semisup"]
    assert semi["pool_id"] == pool.id and semi["threshold"] == 0.7 and semi["mu"] == 2 and semi["pool_images"] == 300
    assert len(semi["mask_rate"]) == 2 and all(0 <= r <= 1 for r in semi["mask_rate"])
    recipe = model.lineage["recipe"][-1]
    assert recipe["semisup"]["threshold"] == 0.7 and recipe["semisup"]["mu"] == 2  # in the config itself
    point = model.history["curve"][0]
    # mu unlabeled images per labelled one: 4 batches of 32 labelled, 64 unlabeled each
    assert point["unlabeled_seen"] == 4 * 64 and sum(point["pseudo_labels"]) == round(point["mask_rate"] * 256)
    assert ws.resolve("runs", run_id)["config"]["unlabeled"] == pool.id
    # The pseudo-labels were never stored: no new dataset version, the pool unchanged, labels and origins too.
    assert {r["id"]: r for r in ws.rows("datasets")} == before
    again = load_dataset(ws, pool.id)
    assert (again.y == UNLABELED).all() and (again.split == POOL).all()
    assert np.array_equal(origins(again), origins(pool))
    assert np.array_equal(load_dataset(ws, digits.id).y, digits.y)


def test_a_low_threshold_passes_everything(digits, pool):
    # 10 classes: the top probability is at least 0.1, so every unlabeled image gets a pseudo-label
    m = train(new_model("cnn_small", digits), digits, _cfg(threshold=0.1, mu=1), progress=False, unlabeled=pool)
    assert m.lineage["semisup"]["mask_rate"] == [1.0, 1.0]


def test_same_seed_same_semisupervised_model(digits, pool):
    cfg = _cfg(threshold=0.5, strong="simclr")
    a = train(new_model("cnn_small", digits, seed=1), digits, cfg, progress=False, unlabeled=pool)
    b = train(new_model("cnn_small", digits, seed=1), digits, cfg, progress=False, unlabeled=pool)
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert a.history["curve"][0]["mask_rate"] == b.history["curve"][0]["mask_rate"]


def test_empty_or_mismatched_pools_are_refused(ws, digits):
    cfg = _cfg()
    with pytest.raises(BadInput, match="no unlabeled images"):
        train(new_model("cnn_small", digits), digits, cfg, progress=False, unlabeled=digits)
    big = make_pool(ws, np.zeros((4, 1, 12, 12), np.uint8), digits.classes, name="big", source={})
    with pytest.raises(BadInput, match=r"shape \(1, 12, 12\)"):
        train(new_model("cnn_small", digits), digits, cfg, progress=False, unlabeled=big)
    with pytest.raises(BadInput, match="unlabeled=POOL"):
        train(new_model("cnn_small", digits), digits, cfg, progress=False)
    with pytest.raises(BadInput, match="threshold"):
        FixMatchConfig(threshold=0)


def test_cli_train_unlabeled(ws, digits, pool, monkeypatch, capfd):
    home = ws.root
    args = ("train", "--data", digits.id, "--arch", "cnn_small", "--epochs", "1", "--threads", "1")
    code, out, err = dm_main(
        monkeypatch, capfd, home, *args, "--unlabeled", pool.id, "--threshold", "0.8", "--mu", "2", "--json"
    )
    assert code == 0, err
    semi = json.loads(out)["semisup"]
    assert semi["pool_id"] == pool.id and semi["threshold"] == 0.8 and semi["mu"] == 2
    code, _, err = dm_main(monkeypatch, capfd, home, *args, "--unlabeled", digits.id)
    assert code == 2 and "no unlabeled images" in err and "Traceback" not in err
    code, _, err = dm_main(monkeypatch, capfd, home, *args, "--mu", "2")
    assert code == 2 and "--mu tune FixMatch" in err
    big = make_pool(ws, np.zeros((4, 1, 12, 12), np.uint8), digits.classes, name="big", source={})
    code, _, err = dm_main(monkeypatch, capfd, home, *args, "--unlabeled", big.id)
    assert code == 2 and "shape (1, 12, 12)" in err
