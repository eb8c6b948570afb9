"""TrivialAugmentWide and RandAugment on uint8 tensors: each op does what torchvision's does, and the
policies follow their generator, keep shape and dtype, and reach every op."""

from __future__ import annotations

import pytest
import torch

from datamoat.data.photo_augment import apply_op, rand_augment, trivial_augment
from datamoat.errors import BadInput

OPS = [
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
]


def _noise(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_the_same_seed_gives_the_same_image_and_other_seeds_others():
    img = _noise(3, 24, 32)
    for policy in (trivial_augment, rand_augment):
        global_state = torch.get_rng_state()
        outs = [policy(img, torch.Generator().manual_seed(s)) for s in range(20)]
        assert torch.equal(torch.get_rng_state(), global_state)  # every draw came from the generator
        assert all(torch.equal(o, policy(img, torch.Generator().manual_seed(s))) for s, o in enumerate(outs))
        assert len({tuple(o.flatten().tolist()) for o in outs}) > 10


@pytest.mark.parametrize("shape", [(3, 20, 33), (1, 20, 33), (3, 16, 16), (1, 31, 9)])
def test_policies_keep_shape_and_dtype_for_gray_colour_and_non_square(shape):
    img = _noise(*shape)
    for s in range(40):  # enough draws to reach every op (see the next test)
        for out in (
            trivial_augment(img, torch.Generator().manual_seed(s)),
            rand_augment(img, torch.Generator().manual_seed(s), num_ops=3, magnitude=30),
        ):
            assert out.shape == img.shape and out.dtype == torch.uint8


def test_trivial_augment_draws_every_op(monkeypatch):
    import datamoat.data.photo_augment as pa

    seen = []
    for name, (op, *rest) in pa._OPS.items():  # record the op each draw applies, then apply it
        monkeypatch.setitem(pa._OPS, name, (lambda img, m, name=name, op=op: seen.append(name) or op(img, m), *rest))
    img = _noise(3, 12, 12)
    for s in range(200):
        trivial_augment(img, torch.Generator().manual_seed(s))
    assert sorted(set(seen)) == sorted(OPS) and len(seen) == 200


def test_rand_augment_applies_num_ops_at_the_fixed_magnitude():
    img = _noise(3, 12, 12)
    assert torch.equal(rand_augment(img, torch.Generator().manual_seed(0), num_ops=0), img)
    # Magnitude bin 0 is the zero of every signed op, Posterize's 8 bits and Solarize's 255 (no pixel
    # of 0..254 reaches it): only AutoContrast and Equalize, 2 ops of 14, change pixels there.
    low = img.clamp(max=254)

    def changed(magnitude: int) -> int:
        outs = [rand_augment(low, torch.Generator().manual_seed(s), magnitude=magnitude) for s in range(30)]
        return sum(not torch.equal(out, low) for out in outs)

    assert 0 < changed(0) <= 12 and changed(9) >= 25


def test_identity_leaves_the_image_and_geometric_ops_at_zero_too():
    img = _noise(3, 9, 14)
    for name in ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color"):
        assert torch.equal(apply_op(img, name, 0.0), img), name


def test_translate_moves_content_by_whole_pixels_and_fills_with_zero():
    img = _noise(3, 10, 12, seed=1).clamp(min=1)  # no zero in the image: a 0 can only be fill
    right = apply_op(img, "TranslateX", 3.7)  # torchvision truncates to whole pixels: 3
    assert torch.equal(right[:, :, 3:], img[:, :, :-3]) and int(right[:, :, :3].max()) == 0
    up = apply_op(img, "TranslateY", -2.0)
    assert torch.equal(up[:, :-2], img[:, 2:]) and int(up[:, -2:].max()) == 0


def test_rotate_turns_counter_clockwise_about_the_centre_and_shears_keep_the_top_left_corner():
    img = _noise(1, 8, 8, seed=2).clamp(min=1)
    assert torch.equal(apply_op(img, "Rotate", 90.0), torch.rot90(img, 1, (1, 2)))
    assert torch.equal(apply_op(img, "Rotate", -90.0), torch.rot90(img, -1, (1, 2)))
    # Shears pivot on the top-left corner: row y, whose centre is y + 0.5 below the top edge, takes
    # its input from m (y + 0.5) pixels to the right (ShearX); ShearY likewise down the columns.
    wide = _noise(3, 10, 14, seed=3).clamp(min=1)  # no zero in the image: a 0 can only be fill
    sx = apply_op(wide, "ShearX", 2.0)
    assert torch.equal(sx[:, 0, :-1], wide[:, 0, 1:]) and torch.equal(sx[:, 2, :9], wide[:, 2, 5:])
    assert int(sx[:, 2, 9:].max()) == 0
    sy = apply_op(wide, "ShearY", 2.0)
    assert torch.equal(sy[:, :-1, 0], wide[:, 1:, 0]) and torch.equal(sy[:, :5, 2], wide[:, 5:, 2])


def test_solarize_inverts_the_pixels_at_or_above_the_threshold():
    img = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    out = apply_op(img, "Solarize", 128.0)
    assert torch.equal(out[img < 128], img[img < 128]) and torch.equal(out[img >= 128], 255 - img[img >= 128])


@pytest.mark.parametrize("bits", [1, 4, 6, 8])
def test_posterize_clears_the_low_bits(bits):
    img = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    out = apply_op(img, "Posterize", bits)
    assert torch.equal(out, (img.int() >> (8 - bits) << (8 - bits)).to(torch.uint8))
    assert out.unique().numel() == 2**bits


def test_equalize_spreads_a_low_contrast_ramp_over_a_near_flat_histogram():
    img = (100 + torch.arange(32).repeat_interleave(255)).to(torch.uint8).reshape(1, 85, 96)  # 32 values, 255 each
    out = apply_op(img, "Equalize", 0.0)
    assert int(out.min()) == 0 and int(out.max()) == 255 and out.unique().numel() == 32
    counts = torch.histc(out.float(), bins=8, min=0, max=256)  # 8 equal ranges of value
    assert counts.min() >= 0.75 * img.numel() / 8, counts
    flat = torch.full((3, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(apply_op(flat, "Equalize", 0.0), flat)  # one value: nothing to spread


def test_autocontrast_stretches_each_channel_to_the_full_range():
    img = torch.stack([torch.arange(50, 150).reshape(10, 10), torch.full((10, 10), 9)]).to(torch.uint8)[[0, 1, 0]]
    out = apply_op(img, "AutoContrast", 0.0)
    assert int(out[0].min()) == 0 and int(out[0].max()) == 255
    assert torch.equal(out[1], img[1])  # a one-value channel is left alone


def test_colour_ops_move_the_way_their_sign_says():
    img = _noise(3, 16, 16, seed=4).clamp(40, 200)
    assert (
        apply_op(img, "Brightness", 0.5).float().mean()
        > img.float().mean()
        > apply_op(img, "Brightness", -0.5).float().mean()
    )
    assert (
        apply_op(img, "Contrast", 0.5).float().std() > img.float().std() > apply_op(img, "Contrast", -0.5).float().std()
    )
    spread = lambda x: (x.float() - x.float().mean(0)).abs().mean()  # noqa: E731 - how far from gray
    assert spread(apply_op(img, "Color", 0.5)) > spread(img) > spread(apply_op(img, "Color", -0.9))
    gray = img[:1]
    assert torch.equal(apply_op(gray, "Color", 0.9), gray)  # no colour to change
    edges = lambda x: (x.float().diff(dim=-1)).abs().mean()  # noqa: E731
    assert edges(apply_op(img, "Sharpness", 0.9)) > edges(img) > edges(apply_op(img, "Sharpness", -0.9))


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(BadInput, match="uint8"):
        trivial_augment(torch.zeros(3, 8, 8), torch.Generator())
    with pytest.raises(BadInput, match="1 or 3 channels"):
        rand_augment(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.Generator())
    with pytest.raises(BadInput, match="magnitude"):
        rand_augment(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.Generator(), magnitude=31)
    with pytest.raises(BadInput, match="op_name"):
        apply_op(torch.zeros(3, 8, 8, dtype=torch.uint8), "Invert", 0.0)
