from dataclasses import asdict, fields

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


# --- the config is the one source of the architecture ------------------------------------

# Every integer field gets a value no other field has, so a value that lands on the
# wrong field (say, a reordered dataclass rebuilt positionally) shows up as a wrong size.
DISTINCT = dict(img_size=36, patch_size=6, in_chans=2, embed_dim=40, depth=3, num_heads=5,
                decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=4,
                mlp_ratio=2.5, norm_eps=1e-5, norm_pix_loss=True)

# A "model_config" entry exactly as training checkpoints have stored it (asdict of the config).
OLD_MODEL_CONFIG = {
    "img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 192, "depth": 12, "num_heads": 3,
    "decoder_embed_dim": 128, "decoder_depth": 4, "decoder_num_heads": 4, "mlp_ratio": 4.0,
    "norm_eps": 1e-06, "norm_pix_loss": True,
}


def _assert_built_from(m, c):
    """Each field of ``c`` is read off the module it should size, not off the config."""
    grid = c["img_size"] // c["patch_size"]
    assert m.patch_embed.proj.weight.shape == (c["embed_dim"], c["in_chans"], c["patch_size"], c["patch_size"])
    assert m.patch_embed.num_patches == grid * grid
    assert m.pos_embed.shape == (1, 1 + grid * grid, c["embed_dim"])
    assert len(m.blocks) == c["depth"]
    assert all(b.attn.num_heads == c["num_heads"] for b in m.blocks)
    assert m.blocks[0].mlp.fc1.out_features == int(c["embed_dim"] * c["mlp_ratio"])
    assert m.blocks[0].norm1.eps == m.norm.eps == c["norm_eps"]
    assert m.decoder_embed.weight.shape == (c["decoder_embed_dim"], c["embed_dim"])
    assert m.decoder_pos_embed.shape == (1, 1 + grid * grid, c["decoder_embed_dim"])
    assert len(m.decoder_blocks) == c["decoder_depth"]
    assert all(b.attn.num_heads == c["decoder_num_heads"] for b in m.decoder_blocks)
    assert m.decoder_blocks[0].mlp.fc1.out_features == int(c["decoder_embed_dim"] * c["mlp_ratio"])
    assert m.decoder_norm.eps == c["norm_eps"]
    assert m.decoder_pred.out_features == c["patch_size"] ** 2 * c["in_chans"]
    assert (m.img_size, m.patch_size, m.in_chans, m.norm_pix_loss) == (
        c["img_size"], c["patch_size"], c["in_chans"], c["norm_pix_loss"])


def test_every_field_lands_on_its_own_module():
    int_values = [v for v in DISTINCT.values() if type(v) is int]
    assert len(set(int_values)) == len(int_values)  # the test's premise
    for m in (MaskedAutoencoderViT(**DISTINCT),
              MaskedAutoencoderViT(**dict(reversed(list(DISTINCT.items())))),  # keyword order is irrelevant
              MaskedAutoencoderViT(mae.MAEConfig(**DISTINCT))):
        _assert_built_from(m, DISTINCT)
        assert asdict(m.config) == DISTINCT
    loss, pred, _ = MaskedAutoencoderViT(**DISTINCT)(torch.randn(2, 2, 36, 36))
    assert pred.shape == (2, 36, 6 * 6 * 2) and torch.isfinite(loss)


def test_config_round_trips_through_asdict():
    m = mae.mae_vit_tiny_patch8_64(norm_pix_loss=True)
    rebuilt = MaskedAutoencoderViT(mae.MAEConfig(**asdict(m.config)))
    assert rebuilt.config == m.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_old_checkpoint_model_config_builds_the_model(tmp_path):
    assert [f.name for f in fields(mae.MAEConfig)] == list(OLD_MODEL_CONFIG)  # names never change
    trained = mae.mae_vit_tiny_patch4_32(norm_pix_loss=True)
    torch.save({"model": trained.state_dict(), "model_config": OLD_MODEL_CONFIG}, tmp_path / "ckpt.pth")
    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    for m in (MaskedAutoencoderViT(mae.MAEConfig(**ckpt["model_config"])),
              MaskedAutoencoderViT(**ckpt["model_config"])):
        _assert_built_from(m, OLD_MODEL_CONFIG)
        m.load_state_dict(ckpt["model"], strict=True)
        assert torch.equal(m.decoder_pred.weight, trained.decoder_pred.weight)


def test_keywords_override_a_config_without_changing_it():
    base = mae.MAEConfig(**DISTINCT)
    m = MaskedAutoencoderViT(base, img_size=48, norm_pix_loss=False)
    assert (m.img_size, m.norm_pix_loss, m.patch_embed.num_patches) == (48, False, 64)
    assert base == mae.MAEConfig(**DISTINCT) and m.config is not base
    base.depth = 1  # the model holds its own copy
    assert len(m.blocks) == m.config.depth == 3


def test_factories_take_overrides():
    m = mae.mae_vit_tiny_patch4_32(norm_pix_loss=True, img_size=64)
    assert (m.config.img_size, m.config.embed_dim, m.norm_pix_loss) == (64, 192, True)
    assert m.pos_embed.shape == (1, 1 + 16 * 16, 192)
    m = mae.create_model("mae_vit_micro_patch4_32", decoder_depth=1)
    assert len(m.decoder_blocks) == 1 and m.config.decoder_depth == 1
    with torch.device("meta"):
        huge = mae.mae_vit_huge_patch14()
    assert (huge.config.img_size, huge.config.patch_size, huge.patch_embed.num_patches) == (224, 14, 256)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(img_size=30), ValueError, "img_size 30 is not divisible by patch_size 4"),
        (dict(num_heads=5), ValueError, "embed_dim 48 is not divisible by num_heads 5"),
        (dict(decoder_num_heads=3), ValueError, "decoder_embed_dim 32 is not divisible by decoder_num_heads 3"),
        (dict(embed_dim=42, num_heads=3), ValueError, "embed_dim must be divisible by 4"),
        (dict(decoder_embed_dim=30, decoder_num_heads=5), ValueError, "decoder_embed_dim must be divisible by 4"),
        (dict(patch_size=0), ValueError, "patch_size must be at least 1"),
        (dict(depth=-1), ValueError, "depth must be at least 0"),
        (dict(mlp_ratio=0.0), ValueError, "mlp_ratio must be positive"),
        (dict(img_size=32.0), TypeError, "img_size must be an integer"),
        (dict(norm_pix_loss="yes"), TypeError, "norm_pix_loss must be True or False"),
        (dict(embed_dims=64), TypeError, "unknown MAEConfig field.*embed_dims"),
    ],
)
def test_bad_configs_name_the_problem(micro_config, change, error, match):
    with pytest.raises(error, match=match):
        MaskedAutoencoderViT(**{**micro_config, **change})
    with pytest.raises(error, match=match):  # an override is checked like a field
        MaskedAutoencoderViT(mae.MAEConfig(**micro_config), **change)
    if "embed_dims" not in change:
        with pytest.raises(error, match=match):
            mae.MAEConfig(**{**micro_config, **change})


def test_positional_sizes_are_refused():
    with pytest.raises(TypeError, match="config must be an MAEConfig"):
        MaskedAutoencoderViT(32)
    with pytest.raises(TypeError):
        MaskedAutoencoderViT(32, 4)
    assert not hasattr(MaskedAutoencoderViT, "from_config")
