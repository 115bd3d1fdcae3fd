import pytest
import torch
import torch.nn.functional as F

from mae_from_scratch import (
    MaskedAutoencoderViT,
    explicit_attention,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
)
from mae_from_scratch.flops import (
    count_flops,
    encoder_decoder_flops,
    flops_saving,
    mask_token_baseline_flops,
)


def test_linear_flops_are_two_per_multiply_add():
    lin = torch.nn.Linear(8, 5, bias=False)
    assert count_flops(lin, torch.randn(3, 8)) == 2 * 3 * 8 * 5


@pytest.mark.parametrize("fused", [True, False])
def test_attention_is_counted_fused_or_not(fused):
    """scaled_dot_product_attention on the CPU counts the same as q k^T and weights v."""
    n, h, t, d = 2, 3, 7, 4
    q = k = v = torch.randn(n, h, t, d)
    fn = F.scaled_dot_product_attention if fused else explicit_attention
    assert count_flops(fn, q, k, v) == 4 * n * h * t * t * d


def test_meta_device_counts_like_a_real_run(micro_config):
    real = MaskedAutoencoderViT(**micro_config)
    with torch.device("meta"):
        meta = MaskedAutoencoderViT(**micro_config)
    assert encoder_decoder_flops(meta, 0.75, batch_size=2) == encoder_decoder_flops(real, 0.75, batch_size=2)


def test_encoder_decoder_flops_matches_a_hand_count(micro_config):
    cfg = micro_config
    model = MaskedAutoencoderViT(**cfg)
    L = (cfg["img_size"] // cfg["patch_size"]) ** 2
    keep = int(L * 0.25)
    r = encoder_decoder_flops(model, 0.75)
    assert (r.encoder_tokens, r.decoder_tokens) == (1 + keep, 1 + L)

    def blocks(depth, dim, t):  # qkv + proj + fc1 + fc2 (ratio 4) = 12 D^2 multiply-adds per token
        return depth * (2 * 12 * dim * dim * t + 4 * t * t * dim)

    D, Dd, pp3 = cfg["embed_dim"], cfg["decoder_embed_dim"], cfg["patch_size"] ** 2 * 3
    assert r.encoder == 2 * L * pp3 * D + blocks(cfg["depth"], D, 1 + keep)
    assert r.decoder == 2 * (1 + keep) * D * Dd + blocks(cfg["decoder_depth"], Dd, 1 + L) + 2 * (1 + L) * Dd * pp3


def test_flops_scale_with_batch_size(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    one, three = encoder_decoder_flops(model, 0.75), encoder_decoder_flops(model, 0.75, batch_size=3)
    assert (three.encoder, three.decoder) == (3 * one.encoder, 3 * one.decoder)
    assert three.per_token_ratio == pytest.approx(one.per_token_ratio)


def test_paper_claim_per_token_holds_for_large_not_base():
    """'<10% computation per token vs. the encoder' (He et al.) is true for ViT-L, not for ViT-B."""
    with torch.device("meta"):
        base, large = mae_vit_base_patch16(), mae_vit_large_patch16()
    assert encoder_decoder_flops(large).per_token_ratio < 0.10
    assert encoder_decoder_flops(base).per_token_ratio > 0.10


def test_mask_token_baseline_runs_the_encoder_on_all_tokens(micro_config):
    cfg = micro_config
    model = MaskedAutoencoderViT(**cfg)
    L = (cfg["img_size"] // cfg["patch_size"]) ** 2
    base = mask_token_baseline_flops(model)
    assert (base.encoder_tokens, base.decoder_tokens) == (1 + L, 1 + L)
    mae = encoder_decoder_flops(model, 0.75)
    # the same decoder blocks and head; only decoder_embed sees 1 + L tokens instead of 1 + L_keep
    D, Dd = cfg["embed_dim"], cfg["decoder_embed_dim"]
    assert base.decoder - mae.decoder == 2 * (L - int(L * 0.25)) * D * Dd
    assert base.total == base.encoder + base.decoder
    assert flops_saving(model, 0.0) == 1.0


@pytest.mark.slow
def test_flops_saving_matches_the_paper_for_large_and_shrinks_for_base():
    """He et al., Table 1c: 3.3x fewer FLOPs than an encoder with mask tokens (ViT-L, 8-block decoder)."""
    with torch.device("meta"):
        base, large, huge = mae_vit_base_patch16(), mae_vit_large_patch16(), mae_vit_huge_patch14()
    b, l, h = flops_saving(base), flops_saving(large), flops_saving(huge)
    assert 3.1 < l < 3.4
    assert b < l < h < 4.0  # the decoder is a larger share of a smaller encoder's cost
    assert 2.2 < b < 2.5
