import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import MaskedAutoencoderViT, masked_mse_loss, normalize_patches


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
