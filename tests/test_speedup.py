"""The paper's Table 2: an encoder that also processes mask tokens, and the timing of both."""

from __future__ import annotations

import math

import pytest
import torch

from mae_from_scratch import timing
from mae_from_scratch.flops import count_flops, encoder_decoder_flops, flops_saving, mask_token_baseline_flops
from mae_from_scratch.model import MaskedAutoencoderViT, create_model

ROW_KEYS = {"decoder_depth", "mask_ratio", "visible_ms", "baseline_ms", "speedup", "flop_ratio",
            "baseline_decoder_depth", "batch_size", "steps", "precision", "device"}


def _batch(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = model.patch_embed.num_patches
    return torch.randn(n, 3, model.img_size, model.img_size, generator=g), torch.rand(n, L, generator=g)


def _tokens_seen_by_the_encoder(model, fn):
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_mask_token_mode_has_the_same_outputs_shapes_and_a_full_length_encoder(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    imgs, noise = _batch(model)
    L = model.patch_embed.num_patches  # 64
    loss, pred, mask = model(imgs, 0.75, noise)
    loss_t, pred_t, mask_t = model(imgs, 0.75, noise, encoder_mask_tokens=True)
    assert pred_t.shape == pred.shape == (2, L, 4 * 4 * 3) and loss_t.shape == loss.shape == ()
    assert torch.equal(mask_t, mask)  # the same noise removes the same patches
    assert math.isfinite(loss_t.item()) and not torch.isclose(loss_t, loss)  # a different model of the same weights
    assert _tokens_seen_by_the_encoder(model, lambda: model(imgs, 0.75, noise)) == [1 + L // 4]
    assert _tokens_seen_by_the_encoder(model, lambda: model(imgs, 0.75, noise, encoder_mask_tokens=True)) == [1 + L]
    latent, _, ids_restore = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
    assert latent.shape == (2, 1 + L, 48) and ids_restore is None


def test_mask_token_mode_adds_no_state(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    keys, buffers = list(model.state_dict()), [n for n, _ in model.named_buffers()]
    params = [n for n, _ in model.named_parameters()]
    imgs, noise = _batch(model)
    model(imgs, 0.75, noise, encoder_mask_tokens=True)[0].backward()
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_buffers()] == buffers == []
    assert [n for n, _ in model.named_parameters()] == params
    MaskedAutoencoderViT(**micro_config).load_state_dict(model.state_dict(), strict=True)


def test_mask_token_mode_never_sees_the_removed_pixels(micro_config):
    model = MaskedAutoencoderViT(**micro_config).eval()
    imgs, noise = _batch(model)
    _, _, mask = model(imgs, 0.75, noise)
    # Scribble over the removed patches only: patch (i, j) of a 32-px image with 4-px patches.
    scribbled = imgs.clone()
    for n, l in mask.nonzero().tolist():
        i, j = divmod(l, 8)
        scribbled[n, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = 100.0
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
        latent_s, _, _ = model.forward_encoder(scribbled, 0.75, noise, encoder_mask_tokens=True)
    torch.testing.assert_close(latent_s, latent)


def test_with_nothing_removed_both_encoders_make_the_same_prediction(micro_config):
    # At mask ratio 0 the visible-only encoder sees every patch (in shuffled order) and the mask-token encoder
    # sees every patch in patch order with no mask token; attention does not care about order, so after the
    # decoder the predictions agree.
    model = MaskedAutoencoderViT(**micro_config).eval()
    imgs, noise = _batch(model)
    with torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(imgs, 0.0, noise)
        pred = model.forward_decoder(latent, ids_restore)
        latent_t, mask, none = model.forward_encoder(imgs, 0.0, noise, encoder_mask_tokens=True)
        pred_t = model.forward_decoder(latent_t, none)
    assert mask.sum() == 0
    torch.testing.assert_close(pred_t, pred, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(latent_t[:, 0], latent[:, 0], atol=1e-5, rtol=1e-4)  # the same cls token


def test_mask_token_mode_feeds_the_encoder_the_mask_token_plus_the_position(micro_config):
    # The values the first block reads, built by hand: the cls token and its position, then every patch in
    # patch order, a kept one as its embedding plus its position, a removed one as the encoder's mask token
    # (the zero vector: forward_encoder_with_mask_tokens) plus its position.  Shapes alone let a token without
    # its position, or with another patch's, through.
    model = MaskedAutoencoderViT(**micro_config).eval()
    imgs, noise = _batch(model)
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            _, mask, _ = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
    finally:
        hook.remove()
    with torch.no_grad():
        pos = model.pos_embed[0]  # (1 + L, D), row 0 the cls token's
        kept = model.patch_embed(imgs) + pos[1:]
        encoder_mask_token = torch.zeros(model.config.embed_dim)
        patches = torch.where(mask.bool().unsqueeze(-1), encoder_mask_token + pos[1:], kept)
        cls = (model.cls_token[0] + pos[:1]).expand(len(imgs), 1, -1)
    assert mask.sum().item() == 2 * 48  # 3 in 4 of the 64 patches of each image removed
    torch.testing.assert_close(seen, [torch.cat([cls, patches], dim=1)])


def test_mask_token_mode_tells_removed_patches_apart_by_their_position(micro_config):
    # A removed patch's token is all position: giving it another removed patch's position changes what the
    # encoder makes of the image (through attention, the cls token too); zeros without the position would not.
    # (Another patch's row, not a constant added to the row: every LayerNorm takes a constant shift out.)
    model = MaskedAutoencoderViT(**micro_config).eval()
    imgs, noise = _batch(model, n=1)
    with torch.no_grad():
        latent, mask, _ = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
        a, b = mask[0].nonzero().flatten()[:2].tolist()
        model.pos_embed[0, 1 + a] = model.pos_embed[0, 1 + b]
        moved, _, _ = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
    assert not torch.allclose(moved[0, 0], latent[0, 0], atol=1e-3)  # the cls token
    assert not torch.allclose(moved[0, 1 + a], latent[0, 1 + a], atol=1e-3)

def test_mask_token_mode_costs_what_the_flop_counter_says(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    imgs, noise = _batch(model, n=3)
    latent, _, _ = model.forward_encoder(imgs, 0.75, noise, encoder_mask_tokens=True)
    counted = (count_flops(model.forward_encoder, imgs, 0.75, noise, encoder_mask_tokens=True)
               + count_flops(model.forward_decoder, latent, None))
    assert counted == mask_token_baseline_flops(model, batch_size=3).total
    assert counted > encoder_decoder_flops(model, 0.75, batch_size=3).total


def test_decoder_without_ids_restore_needs_every_patch(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    with pytest.raises(ValueError, match=r"without ids_restore the latent must hold 1 \+ L = 65 tokens"):
        model.forward_decoder(torch.zeros(2, 17, 48), None)


def _meta(config, decoder_depth):
    with torch.device("meta"):
        return MaskedAutoencoderViT(config, decoder_depth=decoder_depth)


def test_every_row_is_measured_against_mask_tokens_with_the_8_block_decoder(micro_config, monkeypatch):
    # The paper's Table 2 has one baseline entry (encoder with mask tokens, 8-block decoder), and the 1-block row's
    # 3.7x is against it.  Against a 1-block decoder with mask tokens the 1-block row would show the encoder's
    # saving only.  The FLOPs tell the two apart; the calls tell which model the timed baseline ran.
    model = MaskedAutoencoderViT(**micro_config)  # its own decoder has 1 block: the baseline must not follow it
    calls = []
    forward = MaskedAutoencoderViT.forward

    def spy(self, imgs, mask_ratio=0.75, noise=None, encoder_mask_tokens=False):
        calls.append((len(self.decoder_blocks), encoder_mask_tokens, mask_ratio))
        return forward(self, imgs, mask_ratio, noise, encoder_mask_tokens)

    monkeypatch.setattr(MaskedAutoencoderViT, "forward", spy)
    rows = timing.mask_token_speedup(model, batch_size=1, mask_ratios=(0.75,), decoder_depths=(8, 1), steps=1,
                                     warmup=0)
    assert sorted(set(calls)) == [(1, False, 0.75), (8, False, 0.75), (8, True, 0.75)]
    assert [(r["decoder_depth"], r["baseline_decoder_depth"]) for r in rows] == [(8, 8), (1, 8)]
    baseline = mask_token_baseline_flops(_meta(model.config, 8)).total
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["flop_ratio"] == pytest.approx(baseline / encoder_decoder_flops(_meta(model.config,
                                                                                      r["decoder_depth"]), 0.75).total)
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["visible_ms"])
    assert rows[0]["baseline_ms"] == rows[1]["baseline_ms"]  # one baseline entry, timed once
    # the 8-block row's baseline is the same-depth one, so there the ratio is flops_saving's
    assert rows[0]["flop_ratio"] == pytest.approx(flops_saving(_meta(model.config, 8), 0.75))
    same_depth = flops_saving(_meta(model.config, 1), 0.75)  # the old, wrong baseline for the 1-block row
    assert rows[1]["flop_ratio"] > 1.2 * same_depth


def test_the_baseline_depth_can_be_chosen(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    (row,) = timing.mask_token_speedup(model.config, 1, decoder_depths=(1,), steps=1, warmup=0,
                                       baseline_decoder_depth=2)
    assert (row["decoder_depth"], row["baseline_decoder_depth"]) == (1, 2)
    expected = (mask_token_baseline_flops(_meta(model.config, 2)).total
                / encoder_decoder_flops(_meta(model.config, 1), 0.75).total)
    assert row["flop_ratio"] == pytest.approx(expected)


@pytest.mark.slow
def test_flop_ratios_against_the_8_block_baseline_depend_on_the_model():
    # The numbers mask_token_speedup's docstring quotes: the paper's 3.3x (ViT-L, 8 blocks) and a 1-block ratio
    # that is larger for ViT-B than for ViT-L, whose encoder is a larger share of the baseline.
    ratios = {}
    for name in ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"):
        with torch.device("meta"):
            config = create_model(name).config
        baseline = mask_token_baseline_flops(_meta(config, 8)).total
        ratios[name] = [baseline / encoder_decoder_flops(_meta(config, d), 0.75).total for d in (8, 1)]
    (b8, b1), (l8, l1), (h8, h1) = ratios.values()
    assert round(l8, 1) == 3.2 and round(l1, 1) == 4.2
    assert round(b8, 2) == 2.35 and round(b1, 2) == 4.45
    assert round(h8, 1) == 3.6 and round(h1, 1) == 4.1
    assert b1 > l1 > h1 and b8 < l8 < h8


@pytest.mark.slow
def test_speedup_rows_on_a_tiny_model(micro_config):
    model = MaskedAutoencoderViT(**micro_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = timing.mask_token_speedup(model, batch_size=2, mask_ratios=(0.5, 0.75), decoder_depths=(2, 1),
                                     steps=2, warmup=1)
    assert [(r["decoder_depth"], r["mask_ratio"]) for r in rows] == [(2, 0.5), (2, 0.75), (1, 0.5), (1, 0.75)]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["visible_ms"] > 0 and r["baseline_ms"] > 0 and r["steps"] == 2 and r["precision"] == "fp32"
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["visible_ms"])
        assert r["flop_ratio"] > 1  # no thresholds on times: those belong in a benchmark, not a test
        assert r["baseline_decoder_depth"] == 8
    # one baseline per mask ratio, shared by the decoder depths
    assert rows[0]["baseline_ms"] == rows[2]["baseline_ms"] and rows[1]["baseline_ms"] == rows[3]["baseline_ms"]
    baseline = mask_token_baseline_flops(_meta(model.config, 8)).total
    assert rows[3]["flop_ratio"] == pytest.approx(baseline / encoder_decoder_flops(_meta(model.config, 1), 0.75).total)
    assert rows[1]["flop_ratio"] > rows[0]["flop_ratio"]  # more removed, more saved
    assert rows[2]["flop_ratio"] > rows[0]["flop_ratio"]  # a lighter decoder, more saved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # timed on a copy
    # the model's own decoder depth, and a config or a name as the architecture
    (row,) = timing.mask_token_speedup(model.config, 1, mask_ratios=(0.75,), decoder_depths=None, steps=1, warmup=0)
    assert (row["decoder_depth"], row["baseline_decoder_depth"]) == (1, 8)
    with pytest.raises(TypeError, match="model must be a model name"):
        timing.mask_token_speedup(42)
