import pytest
import torch

from mae_from_scratch import get_2d_sincos_pos_embed


def test_layout_column_then_row():
    D, g = 16, 5
    emb = get_2d_sincos_pos_embed(D, g, cls_token=True)
    assert emb.shape == (1 + g * g, D) and emb.dtype == torch.float32
    assert torch.all(emb[0] == 0)  # the cls row
    r, c = 3, 1
    row = emb[1 + r * g + c]
    # The first D/2 channels encode the column: [sin(c*w) | cos(c*w)], w_k = 10000^(-k/(D/4)).
    w = torch.tensor([1 / 10000 ** (k / (D // 4)) for k in range(D // 4)])
    torch.testing.assert_close(row[: D // 4], torch.sin(c * w))
    torch.testing.assert_close(row[D // 4 : D // 2], torch.cos(c * w))
    torch.testing.assert_close(row[D // 2 : 3 * D // 4], torch.sin(r * w))
    torch.testing.assert_close(row[3 * D // 4 :], torch.cos(r * w))


def _hf_reference(D, g):
    """The table Hugging Face's ViTMAE builds, whichever version is installed."""
    import transformers.models.vit_mae.modeling_vit_mae as hf

    if hasattr(hf, "get_2d_sincos_pos_embed"):  # transformers 4.x
        return torch.from_numpy(hf.get_2d_sincos_pos_embed(D, g, add_cls_token=True)).float()
    # transformers 5.x builds [row | column] and swaps the halves to the checkpoints' layout.
    emb = hf.build_2d_sinusoidal_position_embedding(g, g, embed_dim=D, cls_token=True)
    half = D // 2
    return torch.cat([emb[..., half:], emb[..., :half]], dim=-1)


@pytest.mark.parametrize("D,g", [(768, 14), (1024, 14), (1280, 16), (512, 14), (192, 8), (64, 4)])
def test_matches_hugging_face(D, g):
    ours = get_2d_sincos_pos_embed(D, g, cls_token=True)
    ref = _hf_reference(D, g)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-6


def test_values_bounded_and_positions_distinct():
    emb = get_2d_sincos_pos_embed(64, 6)
    assert emb.abs().max() <= 1.0
    # Every position has its own code.
    d = torch.cdist(emb, emb) + torch.eye(36) * 1e9
    assert d.min() > 1e-3


def test_bad_dim():
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(30, 4)
