"""The tensor augmentations training applies to array batches."""

from __future__ import annotations

import pytest
import torch

from datamoat.data.transforms import augment


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
@pytest.mark.parametrize(("total", "world"), [(8, 2), (9, 2), (10, 3), (5, 1)])
def test_each_share_of_a_batch_is_augmented_as_the_whole_batch_would_be(mode, total, world):
    x = torch.rand(total, 3, 6, 6, generator=torch.Generator().manual_seed(total))  # (B, C, H, W)
    x[:, :, 0, 0] = -1.0  # every share holds the batch's minimum, the padding value
    whole = augment(x, mode, torch.Generator().manual_seed(7))
    for rank in range(world):
        g = torch.Generator().manual_seed(7)  # each process's generator, seeded alike
        part = augment(x[rank::world], mode, g, share=(rank, world, total))
        assert torch.equal(part, whole[rank::world])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    augment(x, mode, g1)
    augment(x[: len(range(0, total, world))], mode, g2, share=(0, world, total))
    assert torch.equal(g1.get_state(), g2.get_state())  # every rank's generator stays in step with one process's
    assert not torch.equal(whole, x)  # the shifts moved something


def test_a_share_that_does_not_fit_its_batch_is_refused():
    with pytest.raises(ValueError, match="has 4, not 3"):
        augment(torch.zeros(3, 1, 4, 4), "crop", torch.Generator(), share=(0, 2, 8))
