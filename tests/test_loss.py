import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import MaskedAutoencoderViT, masked_mse_loss, normalize_patches
from mae_from_scratch.loss import patch_stats, unnormalize_patches


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_visible_predictions_never_change_the_loss(seed, scale):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(3, 10, 12, generator=g), torch.randn(3, 10, 12, generator=g)
    mask = (torch.rand(3, 10, generator=g) > 0.5).float()
    mask[:, 0] = 1  # at least one removed patch per sample
    changed = pred + scale * torch.randn(3, 10, 12, generator=g) * (1 - mask)[..., None]
    assert not torch.equal(changed, pred) or mask.all()
    assert torch.equal(masked_mse_loss(pred, target, mask), masked_mse_loss(changed, target, mask))


def test_loss_is_mean_over_removed_patches():
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert masked_mse_loss(pred, target, mask).item() == (1 + 9) / 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), std=st.floats(1e-3, 10.0), mean=st.floats(-5, 5))
def test_normalized_target_statistics(seed, std, mean):
    g = torch.Generator().manual_seed(seed)
    patch = (mean + std * torch.randn(1, 1, 48, generator=g, dtype=torch.float64))
    var = patch.var(dim=-1).item()
    out = normalize_patches(patch)
    assert abs(out.mean().item()) < 1e-9
    expected_var = var / (var + 1e-6)
    assert abs(out.var().item() - expected_var) < 1e-9 * max(1.0, expected_var)


def test_constant_patch_gives_zeros_not_nan():
    # 0.5 is exact in binary, so the mean is exact and the result is exactly zero ...
    assert torch.all(normalize_patches(torch.full((2, 3, 12), 0.5)) == 0)
    # ... other constants leave only float32 rounding of the mean, divided by sqrt(1e-6).
    out = normalize_patches(torch.full((2, 3, 12), 0.7))
    assert torch.isfinite(out).all() and out.abs().max() < 1e-3


def test_model_uses_normalized_targets_only_when_asked(micro_config):
    imgs = torch.randn(2, 3, 32, 32) * 5 + 3
    noise = torch.rand(2, 64)
    torch.manual_seed(0)
    plain = MaskedAutoencoderViT(**micro_config, norm_pix_loss=False)
    torch.manual_seed(0)
    normed = MaskedAutoencoderViT(**micro_config, norm_pix_loss=True)
    l1, pred, mask = plain(imgs, noise=noise)
    l2, pred2, _ = normed(imgs, noise=noise)
    torch.testing.assert_close(pred, pred2)
    target = normalize_patches(plain.patchify(imgs))
    torch.testing.assert_close(l2, masked_mse_loss(pred, target, mask))
    assert abs(l1.item() - l2.item()) > 1.0


def test_loss_squares_the_difference_of_prediction_and_target():
    # Non-zero predictions: (pred - target)^2, not (pred + target)^2 nor anything symmetric in zero.
    pred = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])
    target = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0]])
    assert masked_mse_loss(pred, target, mask).item() == (1 + 4) / 2
    assert masked_mse_loss(pred, target, torch.ones(1, 2)).item() == ((1 + 4) / 2 + 25) / 2


def _patches():
    g = torch.Generator().manual_seed(0)
    # Two samples of three patches of six values, each patch with its own mean and spread.
    spread = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64).view(1, 3, 1)
    offset = torch.arange(6.0, dtype=torch.float64).view(2, 3, 1)
    return torch.randn(2, 3, 6, generator=g, dtype=torch.float64) * spread + offset


def test_patch_stats_are_each_patchs_mean_and_unbiased_std_with_eps():
    patches = _patches()
    mean, std = patch_stats(patches)
    assert mean.shape == std.shape == (2, 3, 1)
    for n in range(2):
        for k in range(3):
            values = patches[n, k].tolist()
            m = sum(values) / 6
            var = sum((v - m) ** 2 for v in values) / 5  # unbiased: divided by P - 1
            assert mean[n, k, 0].item() == pytest.approx(m, rel=1e-12)
            assert std[n, k, 0].item() == pytest.approx((var + 1e-6) ** 0.5, rel=1e-12)
    # A constant patch: the std is sqrt(eps), the default eps being 1e-6.
    assert patch_stats(torch.full((1, 1, 4), 3.0, dtype=torch.float64))[1].item() == pytest.approx(1e-3)
    assert patch_stats(torch.full((1, 1, 4), 3.0, dtype=torch.float64), eps=0.25)[1].item() == 0.5


def test_unnormalize_with_true_stats_inverts_normalize():
    patches = _patches()
    back = unnormalize_patches(normalize_patches(patches), patches)  # stats="true" by default
    torch.testing.assert_close(back, patches, rtol=1e-12, atol=1e-12)
    pred = torch.randn(2, 3, 6, dtype=torch.float64)
    mean, std = patch_stats(patches)
    torch.testing.assert_close(unnormalize_patches(pred, patches, stats="true"), pred * std + mean)


def test_unnormalize_with_visible_stats_gives_removed_patches_the_visible_average():
    patches = _patches()
    pred = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # sample 0 sees patches 0 and 2; sample 1 only 2
    mean, std = patch_stats(patches)
    out = unnormalize_patches(pred, patches, mask, stats="visible")
    expected = pred.clone()
    for n, seen in ((0, [0, 2]), (1, [2])):
        vis_mean = sum(mean[n, k] for k in seen) / len(seen)
        vis_std = sum(std[n, k] for k in seen) / len(seen)
        for k in range(3):
            own = k in seen
            expected[n, k] = pred[n, k] * (std[n, k] if own else vis_std) + (mean[n, k] if own else vis_mean)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_unnormalize_a_sample_with_no_visible_patch_gives_zeros_not_nan():
    patches = _patches()
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    out = unnormalize_patches(torch.ones(2, 3, 6, dtype=torch.float64), patches, mask, stats="visible")
    assert torch.all(out[0] == 0)  # no visible statistics to borrow: mean 0, std 0
    torch.testing.assert_close(out[1], unnormalize_patches(torch.ones(2, 3, 6, dtype=torch.float64), patches)[1])


def test_unnormalize_refuses_a_missing_mask_and_unknown_stats():
    patches = _patches()
    with pytest.raises(ValueError, match="needs the mask"):
        unnormalize_patches(patches, patches, stats="visible")
    with pytest.raises(ValueError, match="stats must be"):
        unnormalize_patches(patches, patches, torch.zeros(2, 3), stats="hidden")
