import pytest
import torch

from mae_from_scratch import CheckpointMismatchError, MaskedAutoencoderViT, load_official_checkpoint
from mae_from_scratch.pos_embed import get_2d_sincos_pos_embed


@pytest.fixture
def full_ckpt(micro_config, tmp_path):
    torch.manual_seed(1)
    src = MaskedAutoencoderViT(**micro_config)
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": src.state_dict()}, path)
    return src, path


def test_full_checkpoint_loads_strictly(micro_config, full_ckpt):
    src, path = full_ckpt
    dst = MaskedAutoencoderViT(**micro_config)
    report = load_official_checkpoint(dst, path)
    assert not report.missing_keys and not report.unexpected_keys and not report.encoder_only
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # Our own modules load it through PyTorch's strict loader too.
    dst.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)


def test_encoder_only_checkpoint_says_decoder_is_missing(micro_config, full_ckpt):
    src, _ = full_ckpt
    enc = {k: v for k, v in src.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    dst = MaskedAutoencoderViT(**micro_config)
    with pytest.warns(UserWarning, match="decoder is missing"):
        report = load_official_checkpoint(dst, {"model": enc})
    assert report.encoder_only
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)


def test_other_mismatches_raise_with_the_keys(micro_config, full_ckpt):
    src, _ = full_ckpt
    sd = dict(src.state_dict())
    del sd["blocks.0.norm1.weight"]
    sd["head.weight"] = torch.zeros(10, 48)
    sd["norm.bias"] = torch.zeros(49)
    with pytest.raises(CheckpointMismatchError) as e:
        load_official_checkpoint(MaskedAutoencoderViT(**micro_config), sd)
    msg = str(e.value)
    assert "blocks.0.norm1.weight" in msg and "head.weight" in msg and "norm.bias" in msg


def test_native_size_table_equals_checkpoint(micro_config, full_ckpt):
    src, path = full_ckpt
    sd = torch.load(path, weights_only=True)["model"]
    grid = micro_config["img_size"] // micro_config["patch_size"]
    assert torch.equal(sd["pos_embed"][0], get_2d_sincos_pos_embed(48, grid, cls_token=True))
    assert torch.equal(sd["decoder_pos_embed"][0], get_2d_sincos_pos_embed(32, grid, cls_token=True))


def test_load_at_another_image_size_regenerates_tables(micro_config, full_ckpt):
    src, path = full_ckpt
    dst = MaskedAutoencoderViT(**{**micro_config, "img_size": 48})  # 12x12 grid instead of 8x8
    report = load_official_checkpoint(dst, path)
    assert sorted(report.regenerated) == ["decoder_pos_embed", "pos_embed"]
    assert torch.equal(dst.pos_embed[0], get_2d_sincos_pos_embed(48, 12, cls_token=True))
    assert torch.equal(dst.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)


def test_learned_table_is_not_silently_replaced(micro_config, full_ckpt):
    src, _ = full_ckpt
    sd = dict(src.state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    with pytest.raises(CheckpointMismatchError, match="not the fixed 2-D sin-cos table"):
        load_official_checkpoint(MaskedAutoencoderViT(**{**micro_config, "img_size": 48}), sd)


def test_missing_file_and_garbage(micro_config, tmp_path):
    m = MaskedAutoencoderViT(**micro_config)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official_checkpoint(m, tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no state dict"):
        load_official_checkpoint(m, {"model": {"a": 1}})
