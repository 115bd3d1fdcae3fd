import pytest
import torch

import mae_from_scratch as mae
from mae_from_scratch import MaskedAutoencoderViT


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "factory,expected",
    [
        (mae.mae_vit_base_patch16, 111_907_840),
        (mae.mae_vit_large_patch16, 329_541_888),
        (mae.mae_vit_huge_patch14, 657_074_508),
    ],
)
def test_official_parameter_counts(factory, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = factory()
    assert _count(model) == expected


def test_official_state_dict_names():
    with torch.device("meta"):
        model = mae.mae_vit_base_patch16()
    keys = set(model.state_dict())
    expected = {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias", "mask_token",
        "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias",
        "decoder_pred.weight", "decoder_pred.bias",
    }
    for prefix, n in (("blocks", 12), ("decoder_blocks", 8)):
        for i in range(n):
            for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                expected |= {f"{prefix}.{i}.{name}.weight", f"{prefix}.{i}.{name}.bias"}
    assert keys == expected
    assert model.state_dict()["decoder_pred.weight"].shape == (16 * 16 * 3, 512)
    assert model.blocks[0].norm1.eps == 1e-6


def test_small_configs_have_small_decoders():
    m = mae.mae_vit_tiny_patch4_32()
    assert (m.config.embed_dim, m.config.depth) == (192, 12)
    assert (m.config.decoder_embed_dim, m.config.decoder_depth) == (128, 4)
    enc = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("decoder", "mask_token")))
    dec = _count(m) - enc
    assert dec < enc / 5


def test_initialization(micro_config):
    m = MaskedAutoencoderViT(**micro_config)
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    assert torch.equal(m.pos_embed[0], mae.get_2d_sincos_pos_embed(48, 8, cls_token=True))
    for blk in m.blocks:
        assert torch.all(blk.attn.qkv.bias == 0) and torch.all(blk.norm1.weight == 1)
    # xavier-uniform bound for the patch embedding viewed as Linear(p*p*3, D).
    fan_in, fan_out = 4 * 4 * 3, 48
    bound = (6 / (fan_in + fan_out)) ** 0.5
    w = m.patch_embed.proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert 0.01 < m.cls_token.std() < 0.04 and 0.01 < m.mask_token.std() < 0.04


def test_forward_shapes(micro_config):
    m = MaskedAutoencoderViT(**micro_config)
    imgs = torch.randn(3, 3, 32, 32)
    loss, pred, mask = m(imgs, mask_ratio=0.75)
    assert loss.shape == () and pred.shape == (3, 64, 48) and mask.shape == (3, 64)
    assert torch.all(mask.sum(1) == 48)
    latent, mask, ids_restore = m.forward_encoder(imgs, 0.75)
    assert latent.shape == (3, 1 + 16, 48)
    latent0, mask0, _ = m.forward_encoder(imgs, 0.0)  # allowed: every patch visible
    assert latent0.shape == (3, 65, 48) and mask0.sum() == 0


def test_encoder_sees_only_visible_patches(micro_config):
    """Changing a removed patch's pixels leaves the encoder output unchanged."""
    m = MaskedAutoencoderViT(**micro_config).eval()
    imgs = torch.randn(1, 3, 32, 32)
    noise = torch.rand(1, 64)
    latent, mask, _ = m.forward_encoder(imgs, 0.75, noise)
    removed = int(torch.nonzero(mask[0]).flatten()[0])
    r, c = divmod(removed, 8)
    imgs2 = imgs.clone()
    imgs2[..., r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 10
    latent2, _, _ = m.forward_encoder(imgs2, 0.75, noise)
    torch.testing.assert_close(latent, latent2)


def test_forward_features(micro_config):
    m = MaskedAutoencoderViT(**micro_config).eval()
    imgs = torch.randn(2, 3, 32, 32)
    tokens = m.forward_features(imgs, pool="none")
    assert tokens.shape == (2, 65, 48)
    torch.testing.assert_close(m.forward_features(imgs, "cls"), tokens[:, 0])
    torch.testing.assert_close(m.forward_features(imgs, "mean"), tokens[:, 1:].mean(1))
    # With mask ratio 0 and the identity shuffle, forward_encoder computes the same thing.
    latent, _, _ = m.forward_encoder(imgs, 0.0, noise=torch.arange(64.0).expand(2, 64))
    torch.testing.assert_close(latent, tokens)
    with pytest.raises(ValueError, match="pool must be"):
        m.forward_features(imgs, pool="max")


@pytest.mark.parametrize(
    "shape,match",
    [
        ((3, 32, 32), "4-D"),
        ((1, 1, 32, 32), "expects 3 channels"),
        ((1, 3, 32, 28), "must be square"),
        ((1, 3, 30, 30), "not divisible by the patch size"),
        ((1, 3, 64, 64), "built for 32x32"),
    ],
)
def test_bad_images(micro_config, shape, match):
    m = MaskedAutoencoderViT(**micro_config)
    with pytest.raises(ValueError, match=match):
        m(torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        m.forward_features(torch.zeros(shape))


@pytest.mark.parametrize(
    "ratio,match",
    [(-0.5, "mask_ratio must be in"), (1.0, "mask_ratio must be in"), (0.999, "keeps no patch"),
     (0.0, "removes no patch")],
)
def test_bad_mask_ratio(micro_config, ratio, match):
    m = MaskedAutoencoderViT(**micro_config)
    with pytest.raises(ValueError, match=match):
        m(torch.zeros(1, 3, 32, 32), mask_ratio=ratio)


def test_bad_noise(micro_config):
    m = MaskedAutoencoderViT(**micro_config)
    with pytest.raises(ValueError, match="noise must have shape"):
        m(torch.zeros(2, 3, 32, 32), noise=torch.rand(2, 63))


def test_create_model():
    assert isinstance(mae.create_model("mae_vit_micro_patch4_32"), MaskedAutoencoderViT)
    with pytest.raises(ValueError, match="unknown model"):
        mae.create_model("mae_vit_gigantic")


def test_smallest_useful_mask_ratio(micro_config):
    m = MaskedAutoencoderViT(**micro_config)
    loss, _, mask = m(torch.randn(1, 3, 32, 32), mask_ratio=0.01)  # int(64 * 0.99) = 63 kept
    assert mask.sum() == 1 and torch.isfinite(loss)
