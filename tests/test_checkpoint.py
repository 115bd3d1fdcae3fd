import numpy as np
import pytest
import torch

from mae_from_scratch import CheckpointMismatchError, MaskedAutoencoderViT, load_official_checkpoint


def closed_form_table(dim, grid, column_first=True):
    """The 2-D sin-cos table written out from its definition, independently of pos_embed.py.

    Row ``1 + r * grid + c`` belongs to the patch in row ``r``, column ``c`` (row 0: the
    cls token, all zeros).  Its first ``dim/2`` channels encode the column ``c`` and the
    last ``dim/2`` the row ``r`` (the official checkpoints' layout), each as
    ``[sin(pos * w_k) | cos(pos * w_k)]`` with ``w_k = 1 / 10000**(k / (dim/4))``.
    ``column_first=False`` swaps the two halves, to show the comparison can tell.
    """
    quarter = dim // 4
    w = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
    table = np.zeros((1 + grid * grid, dim))
    for r in range(grid):
        for c in range(grid):
            first, second = (c, r) if column_first else (r, c)
            table[1 + r * grid + c] = np.concatenate(
                [np.sin(first * w), np.cos(first * w), np.sin(second * w), np.cos(second * w)])
    return torch.from_numpy(table).float()


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


def test_checkpoint_tables_are_the_closed_form(micro_config, full_ckpt):
    src, path = full_ckpt
    sd = torch.load(path, weights_only=True)["model"]
    grid = micro_config["img_size"] // micro_config["patch_size"]
    for key, dim in (("pos_embed", 48), ("decoder_pos_embed", 32)):
        torch.testing.assert_close(sd[key][0], closed_form_table(dim, grid), atol=1e-6, rtol=0)
        # Not vacuous: the [row | column] layout would be far off.
        assert (sd[key][0] - closed_form_table(dim, grid, column_first=False)).abs().max() > 0.5


def test_closed_form_known_values():
    """A few entries worked out by hand: D = 8, so w = (1, 1/100)."""
    t = closed_form_table(8, 3)
    assert torch.all(t[0] == 0)
    # Patch (row 0, column 0): sin 0 = 0, cos 0 = 1 in both halves.
    torch.testing.assert_close(t[1], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # Patch (row 2, column 1) = row 1 + 2*3 + 1 = 8: column 1 first, row 2 second.
    expect = [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01), np.sin(2), np.sin(0.02), np.cos(2), np.cos(0.02)]
    torch.testing.assert_close(t[8], torch.tensor(expect, dtype=torch.float32))


def test_load_at_another_image_size_regenerates_tables(micro_config, full_ckpt):
    src, path = full_ckpt
    dst = MaskedAutoencoderViT(**{**micro_config, "img_size": 48})  # 12x12 grid instead of 8x8
    report = load_official_checkpoint(dst, path)
    assert sorted(report.regenerated) == ["decoder_pos_embed", "pos_embed"]
    torch.testing.assert_close(dst.pos_embed[0], closed_form_table(48, 12), atol=1e-6, rtol=0)
    torch.testing.assert_close(dst.decoder_pos_embed[0], closed_form_table(32, 12), atol=1e-6, rtol=0)
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
