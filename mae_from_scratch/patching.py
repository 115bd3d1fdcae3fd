"""Images as patches (chapter 1).

A ViT does not look at pixels one by one: it cuts an image into a grid of
non-overlapping ``p x p`` patches and treats every patch as one token.

Shapes used throughout the book:

* ``imgs``    ``(N, C, H, W)``     a batch of images
* ``x``       ``(N, L, p*p*C)``    the same pixels as ``L = (H/p) * (W/p)`` flat patches
* tokens      ``(N, L, D)``        patches after the linear patch embedding

The patch order is row-major (left to right, then top to bottom) and the
pixels inside one patch are flattened with the channel last,
``(p1 p2 c)``, exactly as the official MAE code does.  Keeping this order is
what makes official checkpoints (whose decoder predicts pixels in this
order) usable here.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


def _check_images(imgs: torch.Tensor, p: int) -> None:
    if not isinstance(imgs, torch.Tensor):
        raise TypeError(f"imgs must be a torch.Tensor, got {type(imgs).__name__}")
    if imgs.ndim != 4:
        raise ValueError(
            f"imgs must be a 4-D batch (N, C, H, W); got a {imgs.ndim}-D tensor of shape "
            f"{tuple(imgs.shape)}"
        )
    if p <= 0:
        raise ValueError(f"patch size must be positive, got {p}")
    h, w = imgs.shape[-2:]
    if h % p or w % p:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {p}"
        )


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Cut images into flat patches.

    Args:
        imgs: ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``p``.
        p: the patch size in pixels.

    Returns:
        ``(N, L, p*p*C)`` with ``L = (H/p) * (W/p)``; patch ``i`` is the one in
        row ``i // (W/p)`` and column ``i % (W/p)``.
    """
    _check_images(imgs, p)
    return rearrange(imgs, "n c (h p1) (w p2) -> n (h w) (p1 p2 c)", p1=p, p2=p)


def unpatchify(x: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Put flat patches back together into square images (the inverse of :func:`patchify`).

    Args:
        x: ``(N, L, p*p*C)`` where ``L`` is a perfect square.
        p: the patch size in pixels.
        channels: ``C``, the number of image channels.

    Returns:
        ``(N, C, H, W)`` with ``H = W = sqrt(L) * p``.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (N, L, p*p*C); got shape {tuple(x.shape)}")
    n, L, d = x.shape
    h = math.isqrt(L)
    if h * h != L:
        raise ValueError(f"the number of patches L={L} is not a perfect square")
    if d != p * p * channels:
        raise ValueError(
            f"each patch has {d} values, but p*p*C = {p}*{p}*{channels} = {p * p * channels}"
        )
    return rearrange(x, "n (h w) (p1 p2 c) -> n c (h p1) (w p2)", h=h, p1=p, p2=p, c=channels)


class PatchEmbed(nn.Module):
    """Linear embedding of each ``p x p`` patch into a ``D``-dimensional token.

    A convolution with kernel = stride = ``p`` is exactly "patchify, then one
    shared ``nn.Linear(p*p*C, D)`` on every patch" -- only faster.  We keep
    the convolution because the official checkpoints store
    ``patch_embed.proj.weight`` with shape ``(D, C, p, p)``.

    ``(N, C, H, W) -> (N, L, D)``
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.proj(imgs)  # (N, D, H/p, W/p)
        return rearrange(x, "n d h w -> n (h w) d")
