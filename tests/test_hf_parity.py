"""Parity with an implementation nobody here wrote: Hugging Face's ViTMAEForPreTraining."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_convert import to_hf_state_dict  # noqa: E402

from mae_from_scratch import MaskedAutoencoderViT  # noqa: E402
from mae_from_scratch.photos import normalize, photo_crops  # noqa: E402


def _pair(norm_pix_loss, cfg):
    ours = MaskedAutoencoderViT(**cfg, norm_pix_loss=norm_pix_loss).eval()
    hf_cfg = transformers.ViTMAEConfig(
        image_size=cfg["img_size"], patch_size=cfg["patch_size"], num_channels=3,
        hidden_size=cfg["embed_dim"], num_hidden_layers=cfg["depth"], num_attention_heads=cfg["num_heads"],
        intermediate_size=4 * cfg["embed_dim"], decoder_hidden_size=cfg["decoder_embed_dim"],
        decoder_num_hidden_layers=cfg["decoder_depth"], decoder_num_attention_heads=cfg["decoder_num_heads"],
        decoder_intermediate_size=4 * cfg["decoder_embed_dim"], layer_norm_eps=1e-6, hidden_act="gelu",
        qkv_bias=True, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, attn_implementation="sdpa",
    )
    hf = transformers.ViTMAEForPreTraining(hf_cfg).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), hf.state_dict().keys()), strict=True)
    return ours, hf


CONFIGS = {
    "tiny32": dict(img_size=32, patch_size=4, embed_dim=96, depth=3, num_heads=3,
                   decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    "vit16_64": dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                     decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_same_mask_pred_and_loss_as_hugging_face(name, norm_pix_loss):
    cfg = CONFIGS[name]
    ours, hf = _pair(norm_pix_loss, cfg)
    imgs = normalize(photo_crops(4, cfg["img_size"], seed=1))
    L = (cfg["img_size"] // cfg["patch_size"]) ** 2
    noise = torch.rand(4, L, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss, pred, mask = ours(imgs, mask_ratio=0.75, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    torch.testing.assert_close(pred, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)
    # Not vacuous: the model's predictions are far from trivial and the loss is not 0.
    assert loss.item() > 0.1 and pred.abs().mean() > 0.1


def test_parity_detects_a_wrong_mask():
    """The comparison above would notice a different masking of the same images."""
    cfg = CONFIGS["tiny32"]
    ours, hf = _pair(False, cfg)
    imgs = normalize(photo_crops(2, 32, seed=1))
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss, _, _ = ours(imgs, noise=noise)
        out = hf(pixel_values=imgs, noise=noise.flip(1))
    assert (loss - out.loss).abs() > 1e-4
