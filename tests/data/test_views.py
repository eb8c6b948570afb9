import torch

from datamoat.data.views import rand_augment, simclr_view, to_unit

MEAN, STD = [0.3], [0.4]


def _batch(c: int = 1, b: int = 16, size: int = 12) -> torch.Tensor:
    u = torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(0))  # pixels in [0, 1]
    m, s = torch.tensor(MEAN * c).view(1, c, 1, 1), torch.tensor(STD * c).view(1, c, 1, 1)
    return (u - m) / s


def test_views_are_seeded_and_stay_valid_pixels():
    for c in (1, 3):
        x = _batch(c)
        for view in (simclr_view, rand_augment):
            a = view(x, MEAN * c, STD * c, torch.Generator().manual_seed(5))
            b = view(x, MEAN * c, STD * c, torch.Generator().manual_seed(5))
            other = view(x, MEAN * c, STD * c, torch.Generator().manual_seed(6))
            assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, other)
            u = to_unit(a, MEAN * c, STD * c)
            assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5  # clamped to real pixel values


def test_two_simclr_views_of_one_batch_differ_but_keep_its_images_apart():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    v1, v2 = simclr_view(x, MEAN, STD, g), simclr_view(x, MEAN, STD, g)
    assert not torch.equal(v1, v2)
    # the two views of an image are closer to each other than to the other images' on average
    d = torch.cdist(v1.flatten(1), v2.flatten(1))  # (B, B)
    assert d.diag().mean() < d.mean()


def test_cutout_paints_a_gray_square():
    x = torch.zeros(8, 1, 10, 10)  # all pixels at the mean's value 0.3 after to_unit
    out = to_unit(rand_augment(x, MEAN, STD, torch.Generator().manual_seed(0), ops=1, cutout=0.4), MEAN, STD)
    gray = (out - 0.5).abs() < 1e-5
    assert all(gray[i].sum() >= 4 for i in range(8))  # at least a 2x2 corner of each 4x4 square is inside
    none = to_unit(rand_augment(x, MEAN, STD, torch.Generator().manual_seed(0), ops=1, cutout=0.0), MEAN, STD)
    assert ((none - 0.5).abs() < 1e-5).sum() == 0
