import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import PatchEmbed, patchify, unpatchify


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


def test_patchify_refuses_a_zero_patch_size_and_either_side_not_divisible():
    with pytest.raises(ValueError, match="patch size must be positive"):
        patchify(torch.zeros(1, 3, 8, 8), 0)
    # One side divisible is not enough: both must be.
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 8, 6), 4)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 6, 8), 4)


def test_unpatchify_assumes_three_channels_by_default():
    imgs = torch.randn(2, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(imgs, 4), 4), imgs)


def test_patch_embed_is_patchify_then_one_shared_linear_layer():
    torch.manual_seed(0)
    p, c, d = 4, 2, 5
    embed = PatchEmbed(img_size=8, patch_size=p, in_chans=c, embed_dim=d)
    assert (embed.img_size, embed.patch_size, embed.grid_size, embed.num_patches) == (8, p, 2, 4)
    assert embed.proj.weight.shape == (d, c, p, p)
    imgs = torch.randn(3, c, 8, 8)
    # The convolution's kernel (D, C, p, p), flattened in patchify's (p1 p2 c) order, is the linear map.
    weight = embed.proj.weight.permute(0, 2, 3, 1).reshape(d, p * p * c)
    expected = patchify(imgs, p) @ weight.T + embed.proj.bias
    out = embed(imgs)
    assert out.shape == (3, 4, d)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_patch_embed_defaults_are_vit_base_on_224_pixel_images():
    embed = PatchEmbed()
    assert (embed.img_size, embed.patch_size, embed.grid_size, embed.num_patches) == (224, 16, 14, 196)
    assert isinstance(embed.grid_size, int) and isinstance(embed.num_patches, int)  # sizes, used by range()
    assert embed.proj.weight.shape == (768, 3, 16, 16)
    assert embed.proj.stride == (16, 16)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        PatchEmbed(img_size=30, patch_size=4)
