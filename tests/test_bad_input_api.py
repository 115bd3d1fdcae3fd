"""Bad input to the Python API fails early, with one message naming the argument."""

import math

import pytest
import torch

import mae_from_scratch as mae
from mae_from_scratch import MaskedAutoencoderViT
from mae_from_scratch.masking import num_kept, random_masking

TINY = dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
L = (16 // 4) ** 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**TINY).eval()


def imgs(n=2, dtype=torch.float32):
    return torch.randn(n, 3, 16, 16).to(dtype)


def tokens(n=2):
    return torch.randn(n, L, 8)


CASES = [
    # images of the wrong kind
    ("uint8 forward", lambda m: m(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)),
     TypeError, r"floating-point.*uint8.*imgs\.float\(\) / 255.*normalize"),
    ("uint8 forward_encoder", lambda m: m.forward_encoder(imgs().to(torch.uint8), 0.75),
     TypeError, r"imgs must be a floating-point"),
    ("int64 forward_features", lambda m: m.forward_features(imgs().long()),
     TypeError, r"imgs must be a floating-point.*int64"),
    ("bool forward", lambda m: m(imgs() > 0), TypeError, r"imgs must be a floating-point.*bool"),
    ("empty batch forward", lambda m: m(imgs(0)), ValueError, r"empty batch.*at least one image"),
    ("empty batch features", lambda m: m.forward_features(imgs(0)), ValueError, r"empty batch"),
    # noise
    ("NaN noise", lambda m: m(imgs(), noise=torch.full((2, L), math.nan)),
     ValueError, r"noise must be finite"),
    ("inf noise", lambda m: m(imgs(), noise=torch.rand(2, L).index_fill(1, torch.tensor([0]), math.inf)),
     ValueError, r"noise must be finite"),
    ("list noise", lambda m: m(imgs(), noise=torch.rand(2, L).tolist()),
     TypeError, r"noise must be a torch\.Tensor of shape \(N, L\).*list"),
    ("bool noise", lambda m: random_masking(tokens(), 0.75, torch.rand(2, L) > 0.5),
     TypeError, r"noise must hold real scores"),
    ("wrong noise shape", lambda m: random_masking(tokens(), 0.75, torch.rand(2, L + 1)),
     ValueError, r"noise must have shape \(N, L\)"),
    ("NaN noise random_masking", lambda m: random_masking(tokens(), 0.75, torch.full((2, L), math.nan)),
     ValueError, r"noise must be finite"),
    # mask_ratio
    ("str mask_ratio forward", lambda m: m(imgs(), "0.75"),
     TypeError, r"mask_ratio must be a number.*str"),
    ("str mask_ratio num_kept", lambda m: num_kept(L, "0.5"), TypeError, r"mask_ratio must be a number"),
    ("bool mask_ratio", lambda m: random_masking(tokens(), True),
     TypeError, r"mask_ratio must be a number.*bool"),
    ("NaN mask_ratio", lambda m: random_masking(tokens(), math.nan),
     ValueError, r"mask_ratio must be in \[0, 1\)"),
    ("negative mask_ratio", lambda m: num_kept(L, -0.1), ValueError, r"mask_ratio must be in \[0, 1\)"),
    ("mask_ratio 1", lambda m: m(imgs(), 1.0), ValueError, r"mask_ratio must be in \[0, 1\)"),
    ("mask_ratio 0 in forward", lambda m: m(imgs(), 0.0), ValueError, r"mask_ratio=0.0 removes no patch"),
    # architecture
    ("img_size=0", lambda m: MaskedAutoencoderViT(img_size=0),
     ValueError, r"img_size must be at least 1, got 0"),
    ("img_size=0 base", lambda m: mae.mae_vit_base_patch16(img_size=0),
     ValueError, r"img_size must be at least 1"),
    ("img_size=0 config", lambda m: mae.MAEConfig(img_size=0), ValueError, r"img_size must be at least 1"),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused(model, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast(model, dtype):
    x = imgs(dtype=torch.float64)
    noise = torch.rand(2, L)
    ref_loss, ref_pred, ref_mask = model(x.float(), 0.75, noise=noise)
    loss, pred, mask = model(x.to(dtype), 0.75, noise=noise)
    assert pred.dtype == loss.dtype == torch.float32
    assert torch.equal(mask, ref_mask)
    tol = 1e-6 if dtype == torch.float64 else 0.05
    torch.testing.assert_close(loss, ref_loss, atol=tol, rtol=tol)
    latent, mask_e, _ = model.forward_encoder(x.to(dtype), 0.75, noise=noise)
    assert latent.dtype == torch.float32 and torch.equal(mask_e, ref_mask)
    assert model.forward_features(x.to(dtype)).dtype == torch.float32


def test_float32_under_autocast_still_works(model):
    noise = torch.rand(2, L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = model(imgs(), 0.75, noise=noise)
    assert torch.isfinite(loss)
    assert mask.dtype == torch.float32 and mask.sum() == 2 * (L - num_kept(L, 0.75))


def test_integer_noise_is_still_accepted():
    x = tokens()
    noise = torch.stack([torch.randperm(L) for _ in range(2)])
    _, mask, _ = random_masking(x, 0.75, noise)
    _, mask_f, _ = random_masking(x, 0.75, noise.float())
    assert torch.equal(mask, mask_f)
