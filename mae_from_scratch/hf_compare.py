"""Is our model slower than a reference?  Hugging Face's ``ViTMAEForPreTraining``
with our configuration, timed against ours.

:func:`compare_with_hf` steps both alternately in one process with the
machinery of :mod:`mae_from_scratch.timing` and reports the ratio.
``transformers`` is only a development dependency: :func:`hf_model` imports it
when called, so this module imports without it.

From a notebook::

    from mae_from_scratch.hf_compare import compare_with_hf
    from mae_from_scratch.model import create_model
    compare_with_hf(create_model("mae_vit_tiny_patch4_32"), 256, "cuda")
"""

from __future__ import annotations

import torch

from .engine import compile_model
from .model import MaskedAutoencoderViT
from .timing import (
    _alternate,
    _as_precision,
    _make_step,
    _random_batch,
    _report,
    _unwrap,
    gpu_peak_tflops,
    training_flops,
)

__all__ = ["compare_with_hf", "hf_model"]


def hf_model(config, norm_pix_loss: bool | None = None, mask_ratio: float = 0.75):
    """``transformers.ViTMAEForPreTraining`` with the architecture of our ``config``
    (a :class:`~mae_from_scratch.model.MAEConfig`), SDPA attention, no dropout.

    ``transformers`` is only a development dependency; without it this raises
    an ImportError that says how to install it.
    """
    try:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining
    except ImportError as e:
        raise ImportError("timing Hugging Face's ViTMAE needs the transformers package: "
                          "pip install transformers") from e
    if norm_pix_loss is None:
        norm_pix_loss = config.norm_pix_loss
    hf = ViTMAEConfig(
        image_size=config.img_size, patch_size=config.patch_size, num_channels=config.in_chans,
        hidden_size=config.embed_dim, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=int(config.embed_dim * config.mlp_ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=config.norm_eps,
        qkv_bias=True, decoder_hidden_size=config.decoder_embed_dim,
        decoder_num_hidden_layers=config.decoder_depth, decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=int(config.decoder_embed_dim * config.mlp_ratio),
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
    )
    return ViTMAEForPreTraining._from_config(hf, attn_implementation="sdpa")


def _trainable(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def compare_with_hf(
    model: MaskedAutoencoderViT,
    batch_size: int,
    device="cpu",
    precision="auto",
    steps: int = 10,
    warmup: int = 3,
    mask_ratio: float = 0.75,
    compile: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    """Time training steps of ``model`` and of :func:`hf_model` with its configuration.

    Same inputs and mask noise, same precision, same optimizer, same thread
    count, SDPA attention on both sides, both compiled or neither.  The two
    are stepped alternately in one process (the order swapped every round), so
    a slow spell of the machine hits both.  ``model`` is trained in place.

    Returns ``{"ours": ..., "hf": ..., "speed_ratio": ..., "params": ...}``:
    the first two are :func:`train_step_images_per_s`'s dicts (the FLOP count
    is the same for both: the architecture is), ``speed_ratio`` is HF's median
    step time over ours (above 1: ours is faster) and ``params`` the
    trainable parameter count, checked equal.
    """
    device = torch.device(device)
    prec = _as_precision(device, precision)
    ours = _unwrap(model).to(device)
    theirs = hf_model(ours.config, mask_ratio=mask_ratio).to(device)
    if _trainable(ours) != _trainable(theirs):
        raise RuntimeError(f"parameter counts differ: ours {_trainable(ours)}, HF {_trainable(theirs)}")
    run_ours, run_theirs = compile_model(ours, compile), compile_model(theirs, compile)
    step_ours = _make_step(ours, lambda x, n: run_ours(x, mask_ratio, n)[0], device, prec)
    step_theirs = _make_step(theirs, lambda x, n: run_theirs(pixel_values=x, noise=n).loss, device, prec)
    imgs, noise = _random_batch(ours, batch_size, device)
    t_ours, t_theirs = _alternate([step_ours, step_theirs], imgs, noise, steps, warmup)
    peak = peak_tflops if peak_tflops is not None else gpu_peak_tflops(device)
    flops = training_flops(ours, batch_size, mask_ratio)
    r_ours = _report(t_ours, batch_size, flops, peak, prec, compile)
    r_theirs = _report(t_theirs, batch_size, flops, peak, prec, compile)
    return {"ours": r_ours, "hf": r_theirs, "speed_ratio": r_theirs["ms_per_step"] / r_ours["ms_per_step"],
            "params": _trainable(ours)}
