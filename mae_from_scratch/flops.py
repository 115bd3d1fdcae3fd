"""Counting FLOPs (chapters 2, 4 and 5).

MAE's speed comes from *where* the compute goes: the encoder runs on the
visible 25% of the tokens, the light decoder on all of them.  These helpers
measure it with :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts the floating-point operations of matrix products and convolutions
(a multiply-add is 2 FLOPs; element-wise work such as softmax, LayerNorm and
GELU is not counted -- it is a small share in a Transformer).

The counter only needs shapes, so a model built on the ``meta`` device
(parameters without storage) is counted in milliseconds, even ViT-Huge::

    with torch.device("meta"):
        model = mae_vit_huge_patch14()
    encoder_decoder_flops(model, mask_ratio=0.75)

The paper's saving (He et al., Table 1c: 3.3x fewer training FLOPs for ViT-L)
is measured against the same model whose encoder processes mask tokens in
place of the removed patches -- all ``L`` tokens -- followed by the same
decoder: :func:`mask_token_baseline_flops` counts it and
:func:`flops_saving` gives the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "EncoderDecoderFlops",
    "count_flops",
    "encoder_decoder_flops",
    "flops_saving",
    "mask_token_baseline_flops",
]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``softmax(q k^T / sqrt(d)) v``: two batched matrix products."""
    n, h, t_q, d = query_shape
    t_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * n * h * t_q * t_k * d + 2 * n * h * t_q * t_k * d_v


# On the CPU, scaled_dot_product_attention runs an operator that the
# counter's own table does not list (it would count 0 FLOPs for attention).
_CUSTOM = {}
_cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _cpu_sdpa is not None:
    _CUSTOM[_cpu_sdpa] = _sdpa_flops


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """The FLOPs of one call ``fn(*args, **kwargs)`` (run under ``torch.no_grad()``).

    Counts matrix products, convolutions and attention; works on any device,
    including ``meta``.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


@dataclass
class EncoderDecoderFlops:
    """FLOPs of one forward pass of an MAE, split between encoder and decoder.

    ``encoder`` counts ``forward_encoder`` (patch embedding of all patches,
    then the blocks on ``1 + L_keep`` tokens); ``decoder`` counts
    ``forward_decoder`` (``decoder_embed``, the blocks on ``1 + L`` tokens,
    ``decoder_pred``).  Token counts are per image; FLOPs are for the batch.
    """

    encoder: int
    decoder: int
    encoder_tokens: int
    decoder_tokens: int

    @property
    def total(self) -> int:
        """The whole forward pass: ``encoder + decoder``."""
        return self.encoder + self.decoder

    @property
    def per_token_ratio(self) -> float:
        """Decoder FLOPs per token it processes / encoder FLOPs per token it processes."""
        return (self.decoder / self.decoder_tokens) / (self.encoder / self.encoder_tokens)

    @property
    def decoder_share(self) -> float:
        """The decoder's share of the forward pass: ``decoder / (encoder + decoder)``."""
        return self.decoder / (self.encoder + self.decoder)


def encoder_decoder_flops(model, mask_ratio: float = 0.75, batch_size: int = 1) -> EncoderDecoderFlops:
    """Count the encoder's and the decoder's FLOPs of ``model`` at ``mask_ratio``.

    ``model`` is a :class:`~mae_from_scratch.model.MaskedAutoencoderViT`; it may
    live on the ``meta`` device.  The inputs are zeros of the right shape (the
    count depends on shapes only).
    """
    param = next(model.parameters())
    size, L = model.img_size, model.patch_embed.num_patches
    imgs = torch.zeros(batch_size, model.in_chans, size, size, device=param.device, dtype=param.dtype)
    noise = torch.arange(L, dtype=torch.float32).expand(batch_size, L)  # any fixed order will do
    with torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    encoder = count_flops(model.forward_encoder, imgs, mask_ratio, noise)
    decoder = count_flops(model.forward_decoder, latent, ids_restore)
    return EncoderDecoderFlops(encoder, decoder, encoder_tokens=latent.shape[1], decoder_tokens=L + 1)


def mask_token_baseline_flops(model, batch_size: int = 1) -> EncoderDecoderFlops:
    """FLOPs of the baseline that MAE's saving is measured against.

    In the paper's comparison (He et al., Table 1c and Table 2, "encoder w/ [M]")
    the encoder replaces every removed patch with a mask token, so it
    processes all ``1 + L`` tokens, and the decoder is the same.  Putting a
    mask token in place of a patch costs no FLOPs, so the count is that of
    ``model`` at mask ratio 0: the encoder on ``1 + L`` tokens, then the
    decoder (``decoder_embed`` on ``1 + L`` tokens, nothing left to fill in).
    The model runs this baseline with ``model(imgs, mask_ratio, noise,
    encoder_mask_tokens=True)``, and the FLOPs counted on that run equal this
    count at any mask ratio.
    """
    return encoder_decoder_flops(model, mask_ratio=0.0, batch_size=batch_size)


def flops_saving(model, mask_ratio: float = 0.75) -> float:
    """How many times fewer FLOPs an MAE forward pass needs than the mask-token baseline.

    ``mask_token_baseline_flops(model).total / encoder_decoder_flops(model, mask_ratio).total``;
    the backward pass costs about twice the forward pass layer by layer, so a
    training step saves about the same factor.
    """
    return mask_token_baseline_flops(model).total / encoder_decoder_flops(model, mask_ratio).total
