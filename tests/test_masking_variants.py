"""Block-wise and grid-wise masks (the paper's comparison in Table 1f / Figure 6)."""

import pytest
import torch

from mae_from_scratch import random_masking
from mae_from_scratch.masking import block_masking, grid_masking, noise_from_mask, num_kept


@pytest.mark.parametrize("grid_size", [4, 7, 14])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_block_masking_removes_exactly_the_right_count(grid_size, ratio):
    L = grid_size**2
    if int(L * (1 - ratio)) < 1:
        pytest.skip("keeps no patch")
    mask = block_masking(5, grid_size, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, L) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(mask.sum(1) == L - num_kept(L, ratio))


def test_block_masking_is_deterministic_with_a_generator():
    a = block_masking(4, 14, 0.75, generator=torch.Generator().manual_seed(3))
    b = block_masking(4, 14, 0.75, generator=torch.Generator().manual_seed(3))
    c = block_masking(4, 14, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # samples differ within a batch


def _neighbour_agreement(mask, grid_size):
    """Share of horizontally/vertically adjacent patch pairs with the same mask value."""
    m = mask.view(-1, grid_size, grid_size)
    same_h = (m[:, :, 1:] == m[:, :, :-1]).float().mean()
    same_v = (m[:, 1:, :] == m[:, :-1, :]).float().mean()
    return ((same_h + same_v) / 2).item()


def test_blocks_are_more_clustered_than_random():
    g = torch.Generator().manual_seed(0)
    block = block_masking(32, 14, 0.5, generator=g)
    _, rand, _ = random_masking(torch.zeros(32, 196, 1), 0.5, torch.rand(32, 196, generator=g))
    assert _neighbour_agreement(block, 14) > _neighbour_agreement(rand, 14) + 0.15


def test_min_block_one_and_bad_arguments():
    mask = block_masking(2, 5, 0.6, generator=torch.Generator().manual_seed(1), min_block=1, max_aspect=1.0)
    assert torch.all(mask.sum(1) == 25 - num_kept(25, 0.6))
    with pytest.raises(ValueError, match="mask_ratio"):
        block_masking(1, 14, 1.0)
    with pytest.raises(ValueError, match="min_block"):
        block_masking(1, 14, 0.75, min_block=0)


@pytest.mark.parametrize("grid_size,stride", [(14, 2), (8, 2), (9, 3), (4, 1)])
def test_grid_masking_keeps_one_per_cell(grid_size, stride):
    n = 6
    mask = grid_masking(n, grid_size, stride, generator=torch.Generator().manual_seed(0))
    L = grid_size**2
    assert mask.shape == (n, L) and mask.dtype == torch.float32
    assert torch.all(mask.sum(1) == L - (grid_size // stride) ** 2)
    # Exactly one kept patch in every stride x stride cell, at the same offset in every cell.
    kept = (mask == 0).view(n, grid_size // stride, stride, grid_size // stride, stride)
    assert torch.all(kept.sum((2, 4)) == 1)
    assert torch.all(kept == kept[:, :1, :, :1, :])


def test_grid_masking_default_is_one_in_four_and_offsets_vary():
    mask = grid_masking(16, 14, generator=torch.Generator().manual_seed(0))
    assert torch.all(mask.sum(1) == 196 - 49)
    assert len({tuple(m.tolist()) for m in mask}) > 1
    again = grid_masking(16, 14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match="multiple of stride"):
        grid_masking(1, 7, 2)


@pytest.mark.parametrize("make", ["block", "grid"])
def test_noise_from_mask_reproduces_the_mask_in_random_masking(make):
    g = torch.Generator().manual_seed(0)
    mask = block_masking(3, 14, 0.75, generator=g) if make == "block" else grid_masking(3, 14, generator=g)
    x = torch.randn(3, 196, 8, generator=g)
    x_masked, mask_out, ids_restore = random_masking(x, 0.75, noise_from_mask(mask, generator=g))
    assert torch.equal(mask_out, mask)
    for i in range(3):
        kept = torch.nonzero(mask[i] == 0).flatten()
        assert sorted(x_masked[i, :, 0].tolist()) == sorted(x[i, kept, 0].tolist())
