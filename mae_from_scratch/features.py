"""What a frozen encoder gives: the encoder itself, its features and its attention maps.

:func:`load_encoder` reads the encoder to evaluate (from our checkpoints, the
official ones, or a random one: the baseline); :func:`extract_features` runs it
over a data loader on all patches, no masking, and keeps the cls token or the
mean of the patch tokens; :func:`encoder_attention` gives every block's
attention weights.  The kNN (:mod:`~mae_from_scratch.knn`) and the linear probe
(:mod:`~mae_from_scratch.linear_probe`) are scored on these features.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from . import data as D
from .checkpoint import Encoder, load_encoder_checkpoint
from .model import MaskedAutoencoderViT, create_model
from .precision import choose_precision

POOLS = ("cls", "mean")  # what a feature is: the cls token, or the mean of the patch tokens


# ----------------------------------------------------------------------------------
# The encoder to evaluate
def load_encoder(checkpoint: str | None, model: str | None = None, input_size: int | None = None,
                 dataset: str | None = None, seed: int = 0) -> Encoder:
    """The encoder from a checkpoint path (ours or official, see
    :func:`~mae_from_scratch.checkpoint.load_encoder_checkpoint`), or with
    ``'random'`` (or no checkpoint) a randomly initialized ``model``: the baseline.

    ``input_size`` other than the pretraining one regenerates the sin-cos positions.  Our
    checkpoints carry their architecture: a ``model`` of another one is refused, not ignored.
    """
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if checkpoint in (None, "", "random"):
        name = model or "mae_vit_tiny_patch4_32"
        with torch.device("meta"):  # only the configuration is needed
            patch = create_model(name).patch_size
        if input_size is not None and input_size % patch:
            raise ValueError(f"input_size {input_size} is not divisible by the patch size {patch} of {name}; "
                             f"use a multiple of {patch}")
        torch.manual_seed(seed)
        m = create_model(name, **({"img_size": input_size} if input_size is not None else {}))
        info = D.dataset_info(dataset or "photos")
        return Encoder(m, info.mean, info.std, dataset, None, "random")
    enc = load_encoder_checkpoint(checkpoint, model, input_size)
    if model is not None and enc.source == "ours":
        held = enc.model.config
        with torch.device("meta"):  # only the configuration; the loss target plays no part in the features
            asked = create_model(model, img_size=held.img_size, norm_pix_loss=held.norm_pix_loss).config
        if asked != held:
            raise ValueError(f"--model {model} does not match {checkpoint}, which holds a model of width "
                             f"{held.embed_dim}, depth {held.depth} and patch {held.patch_size} (width "
                             f"{asked.embed_dim}, depth {asked.depth} and patch {asked.patch_size} were asked for); "
                             "our checkpoints carry their architecture, so leave --model out")
    return enc


# ----------------------------------------------------------------------------------
# Features
@torch.no_grad()
def extract_features(model: MaskedAutoencoderViT, loader, pool: str = "cls", device="cpu", precision=None,
                     progress: bool = False, desc: str = "features"):
    """Encoder features of every image in ``loader``: ``(N, D)`` float32 and labels ``(N,)``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    precision = precision or choose_precision(device, "fp32")
    model.eval()
    feats, labels = [], []
    for imgs, y in tqdm(loader, desc=desc, disable=not progress, mininterval=2.0):
        with precision.autocast(device):
            f = model.forward_features(imgs.to(device, non_blocking=True), pool=pool)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def encoder_attention(model: MaskedAutoencoderViT, imgs: torch.Tensor) -> torch.Tensor:
    """The attention weights of every encoder block on all patches (no masking):
    ``(N, depth, heads, 1 + L, 1 + L)``, token 0 the cls token.

    Each block's attention input (the output of its ``norm1``) is caught with a
    forward hook and the weights ``softmax(q k^T / sqrt(d))`` recomputed from its
    ``attn.qkv``, the same numbers the fused kernel uses without storing them.
    """
    from einops import rearrange

    model.eval()
    inputs = []
    hooks = [blk.norm1.register_forward_hook(lambda _m, _i, out: inputs.append(out)) for blk in model.blocks]
    try:
        model.forward_features(imgs.to(next(model.parameters()).device), pool="none")
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for blk, x in zip(model.blocks, inputs):
        q, k, _ = rearrange(blk.attn.qkv(x), "n t (three h d) -> three n h t d", three=3, h=blk.attn.num_heads)
        maps.append((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1))
    return torch.stack(maps, dim=1).float().cpu()



@torch.no_grad()
def block_features(model: MaskedAutoencoderViT, imgs: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """The pooled output of every encoder block on all patches: ``(depth, N, D)``.

    Block ``k``'s tokens as they leave it, before the final LayerNorm (which was
    trained for the last block's output only), pooled like
    :meth:`~mae_from_scratch.model.MaskedAutoencoderViT.forward_features`.  A linear
    probe reads them through its own BatchNorm, so their scale does not matter.
    """
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    model.eval()
    outputs = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for blk in model.blocks]
    try:
        model.forward_features(imgs.to(next(model.parameters()).device), pool="none")
    finally:
        for h in hooks:
            h.remove()
    pooled = [t[:, 0] if pool == "cls" else t[:, 1:].mean(dim=1) for t in outputs]
    return torch.stack(pooled).float().cpu()
