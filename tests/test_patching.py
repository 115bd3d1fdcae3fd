import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import patchify, unpatchify


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), p=st.sampled_from([1, 2, 4, 7]), g=st.integers(1, 5), c=st.sampled_from([1, 3]))
def test_unpatchify_inverts_patchify(n, p, g, c):
    imgs = torch.randn(n, c, g * p, g * p)
    x = patchify(imgs, p)
    assert x.shape == (n, g * g, p * p * c)
    assert torch.equal(unpatchify(x, p, channels=c), imgs)


def test_patch_order_is_row_major_with_channels_last():
    # Pixel values that encode (channel, row, column) let us read the layout directly.
    c, h, w, p = 3, 4, 6, 2
    imgs = torch.zeros(1, c, h, w)
    for ch in range(c):
        for r in range(h):
            for col in range(w):
                imgs[0, ch, r, col] = 100 * ch + 10 * r + col
    x = patchify(imgs, p)
    # Patch 1 is row 0, column 1 of the 2x3 grid: pixels rows 0-1, columns 2-3.
    expected = [100 * ch + 10 * r + col for r in (0, 1) for col in (2, 3) for ch in range(c)]
    assert x[0, 1].tolist() == expected
    # Patch 3 starts the second row of patches.
    assert x[0, 3, 0].item() == 10 * 2 + 0


def test_patchify_rejects_bad_input():
    with pytest.raises(ValueError, match="4-D"):
        patchify(torch.zeros(3, 32, 32), 4)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 30, 30), 4)
    with pytest.raises(ValueError, match="perfect square"):
        unpatchify(torch.zeros(1, 5, 48), 4)
    with pytest.raises(ValueError, match="p\\*p\\*C"):
        unpatchify(torch.zeros(1, 4, 47), 4)
