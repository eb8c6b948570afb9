import pytest
import torch
from torch import nn

from datamoat.compress.flops import count_flops
from datamoat.models import build, new_model, preset


def test_cnn_small_on_8x8_matches_hand_count():
    net = build(
        preset("cnn_small", in_channels=1, image_size=(8, 8), num_classes=10)
    )  # channels (16, 32), hidden (64,)
    conv1 = 8 * 8 * 16 * 1 * 9  # 8x8 positions, 16 filters of 1x3x3
    conv2 = 4 * 4 * 32 * 16 * 9  # after a 2x2 pool
    fc = (32 * 2 * 2) * 64  # after the second pool: 32 channels of 2x2
    head = 64 * 10
    assert count_flops(net, (1, 8, 8)) == conv1 + conv2 + fc + head == 91776


def test_resnet_counts_strides_and_the_projection_shortcut():
    net = build(preset("resnet", in_channels=1, image_size=(8, 8), num_classes=10, channels=(4, 4, 4, 8, 8)))
    stem = 8 * 8 * 4 * 1 * 9
    block1 = 2 * (8 * 8 * 4 * 4 * 9)  # stride 1, identity shortcut
    block2 = 4 * 4 * 8 * 4 * 9 + 4 * 4 * 8 * 8 * 9 + 4 * 4 * 8 * 4  # stride 2, then 3x3, then the 1x1 projection
    head = 8 * 10
    assert count_flops(net, (1, 8, 8)) == stem + block1 + block2 + head


def test_model_input_shape_defaults_and_batch_shape_is_per_example(digits):
    m = new_model("mlp", digits, hidden=(16,))
    expected = 64 * 16 + 16 * 10
    assert count_flops(m) == count_flops(m.net, (1, 8, 8)) == count_flops(m.net, (5, 1, 8, 8)) == expected
    with pytest.raises(TypeError, match="input_shape"):
        count_flops(m.net)


def test_nonzero_counts_only_macs_with_nonzero_weights():
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():
        net[1].weight[:2] = 0.0  # half the rows
    assert count_flops(net, (1, 2, 3)) == 24
    assert count_flops(net, (1, 2, 3), nonzero=True) == 12


def test_counting_leaves_mode_and_batchnorm_statistics_alone():
    net = build(preset("cnn_small", in_channels=1, image_size=(8, 8), num_classes=3, channels=(4,), hidden=()))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_flops(net, (1, 8, 8))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())
