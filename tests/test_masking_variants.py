"""Block-wise and grid-wise masks (the paper's comparison in Table 1f / Figure 6)."""

import math

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


def _reference_block_masks(n, grid_size, mask_ratio, generator, min_block, max_aspect):
    """BEiT's block-wise masking as block_masking's docstring specifies it, in plain Python.

    Per rectangle, four draws from ``generator`` in this order: the area, uniform in
    ``[min(min_block, budget), budget]``; the log aspect ratio, uniform in
    ``[-log(max_aspect), log(max_aspect)]``; the top row and the left column, uniform
    integers.  Its new patches are removed row by row, at most ``budget`` of them.
    """

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=generator).item()

    def randint(high):
        return int(torch.randint(high, (), generator=generator).item())

    L = grid_size * grid_size
    num_mask = L - int(L * (1 - mask_ratio))
    masks = []
    for _ in range(n):
        removed = set()
        while len(removed) < num_mask:
            budget = num_mask - len(removed)
            area = uniform(min(min_block, budget), budget)
            aspect = math.exp(uniform(-math.log(max_aspect), math.log(max_aspect)))
            h = min(grid_size, max(1, round(math.sqrt(area * aspect))))
            w = min(grid_size, max(1, round(math.sqrt(area / aspect))))
            top, left = randint(grid_size - h + 1), randint(grid_size - w + 1)
            new = [(r, c) for r in range(top, top + h) for c in range(left, left + w) if (r, c) not in removed]
            removed.update(new[:budget])
        masks.append([float((i // grid_size, i % grid_size) in removed) for i in range(L)])
    return torch.tensor(masks)


@pytest.mark.parametrize("grid_size, ratio, min_block, max_aspect", [
    (14, 0.75, 16, 1 / 0.3), (14, 0.4, 16, 1 / 0.3), (8, 0.5, 4, 1.0), (7, 0.6, 1, 10.0), (5, 0.9, 30, 2.0),
])
def test_block_masking_follows_the_beit_procedure_draw_for_draw(grid_size, ratio, min_block, max_aspect):
    # (7, 0.6, 1, 10.0): tiny last rectangles of extreme aspect, whose rounded height or width
    # is 0 (then 1); with seed 7 both happen within 12 masks.
    ours = block_masking(12, grid_size, ratio, torch.Generator().manual_seed(7), min_block, max_aspect)
    ref = _reference_block_masks(12, grid_size, ratio, torch.Generator().manual_seed(7), min_block, max_aspect)
    assert torch.equal(ours, ref)


def test_block_masking_defaults_are_beits():
    # mask_ratio 0.75, min_block 16, max_aspect 1/0.3, as BEiT
    ours = block_masking(4, 14, generator=torch.Generator().manual_seed(1))
    ref = _reference_block_masks(4, 14, 0.75, torch.Generator().manual_seed(1), 16, 1 / 0.3)
    assert torch.equal(ours, ref)


def _bounding_box(mask_row, grid_size):
    rows, cols = torch.nonzero(mask_row.view(grid_size, grid_size), as_tuple=True)
    return rows.min().item(), cols.min().item(), rows.max().item() - rows.min().item() + 1, \
        cols.max().item() - cols.min().item() + 1


def test_one_block_of_exactly_the_budget_is_one_rectangle_of_varying_shape_and_place():
    # 16 patches to remove and min_block 16: a single rectangle of area about 16.
    masks = block_masking(300, 8, 0.25, torch.Generator().manual_seed(0), min_block=16, max_aspect=1.0)
    boxes = {_bounding_box(m, 8) for m in masks}
    assert {(h, w) for _, _, h, w in boxes} == {(4, 4)}  # aspect 1: always the 4 x 4 square ...
    assert {(t, l) for t, l, _, _ in boxes} == {(t, l) for t in range(5) for l in range(5)}  # ... anywhere
    # With aspect ratios up to 4, tall and wide rectangles both occur, none beyond 4:1 (plus rounding).
    masks = block_masking(300, 8, 0.25, torch.Generator().manual_seed(0), min_block=16, max_aspect=4.0)
    shapes = {_bounding_box(m, 8)[2:] for m in masks if m.sum() == 16 and _is_rectangle(m, 8)}
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes)
    assert all(max(h, w) <= 8 and max(h / w, w / h) <= 4.5 for h, w in shapes)


def _is_rectangle(mask_row, grid_size):
    _, _, h, w = _bounding_box(mask_row, grid_size)
    return h * w == int(mask_row.sum().item())


def test_block_masking_refuses_bad_sizes_and_accepts_a_one_patch_grid():
    with pytest.raises(ValueError, match="grid_size must be positive"):
        block_masking(1, 0)
    with pytest.raises(ValueError, match="max_aspect >= 1"):
        block_masking(1, 14, 0.75, max_aspect=0.5)
    assert torch.equal(block_masking(2, 1, 0.0), torch.zeros(2, 1))  # nothing to remove: keep the one patch


def test_grid_offsets_are_drawn_as_row_then_column_for_each_sample():
    # The kept patch of the top-left cell sits at the sample's offset (dr, dc), drawn as
    # torch.randint(stride, (N, 2)): the same generator state gives the same masks.
    n, grid_size, stride = 64, 6, 3
    mask = grid_masking(n, grid_size, stride, generator=torch.Generator().manual_seed(5))
    kept = (mask == 0).view(n, grid_size, grid_size)[:, :stride, :stride]
    found = torch.nonzero(kept)[:, 1:]  # one (row, column) per sample, in sample order
    expected = torch.randint(stride, (n, 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(found, expected)
    assert (expected[:, 0] != expected[:, 1]).any()  # rows and columns get their own offsets


def test_grid_masking_refuses_a_zero_or_negative_stride():
    for stride in (0, -2):
        with pytest.raises(ValueError, match="multiple of stride"):
            grid_masking(1, 4, stride)


def test_noise_from_mask_is_the_mask_plus_a_uniform_number_below_one():
    mask = block_masking(8, 14, 0.75, generator=torch.Generator().manual_seed(2))
    noise = noise_from_mask(mask, generator=torch.Generator().manual_seed(3))
    u = noise - mask
    assert noise.shape == mask.shape and noise.dtype == torch.float32
    assert u.min() >= 0 and u.max() < 1 and u.std() > 0.2  # kept patches below 1, removed ones at least 1
    torch.testing.assert_close(u, torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)))
