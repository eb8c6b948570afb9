import pytest
import torch

from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.models import ARCHS, build, load_model, new_model, param_count, preset, save_model


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("size", [(8, 8), (28, 28)])
def test_every_arch_builds_and_runs(arch, size):
    cfg = preset(arch, in_channels=1, image_size=size, num_classes=7)
    net = build(cfg).eval()
    assert net(torch.zeros(3, 1, *size)).shape == (3, 7)
    assert param_count(net) == sum(p.numel() for p in net.parameters()) > 0


def test_param_counts_order_the_cnns():
    counts = {a: param_count(build(preset(a, in_channels=1, image_size=(28, 28), num_classes=10))) for a in ARCHS}
    assert counts["cnn_small"] < counts["cnn_medium"] < counts["cnn_large"]


def test_unknown_arch_and_bad_config():
    with pytest.raises(BadInput, match="unknown architecture 'vit'"):
        preset("vit", in_channels=1, image_size=(8, 8), num_classes=3)
    with pytest.raises(BadInput, match="num_classes"):
        preset("mlp", in_channels=1, image_size=(8, 8), num_classes=1)


def test_config_round_trips_through_json():
    cfg = preset("cnn_large", in_channels=3, image_size=(16, 16), num_classes=4, channels=(5, 6, 7, 8))
    again = config_from_dict(__import__("json").loads(cfg.to_json()))
    assert again == cfg and again.channels == (5, 6, 7, 8)


def test_model_rebuilds_from_catalog_alone(ws, digits):
    m = new_model("resnet", digits, seed=3)
    saved = save_model(ws, m)
    assert save_model(ws, m).id == saved.id  # same weights + meta: same id
    again = load_model(ws, saved.id)
    x = digits.x[:16]
    assert again.config == m.config and again.classes == digits.classes
    assert torch.equal(torch.from_numpy(again.logits(x)), torch.from_numpy(m.logits(x)))
    assert m.example_inputs(4).shape == (4, 1, 8, 8)
