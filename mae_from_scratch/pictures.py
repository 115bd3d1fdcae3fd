"""Pictures: patch grids, masks and reconstructions, drawn with matplotlib."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def to_numpy_image(img: torch.Tensor):
    """``(3, H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` numpy array for ``imshow``."""
    return img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def show_image(img: torch.Tensor, ax=None, title: str | None = None):
    """Show one ``(3, H, W)`` image in ``[0, 1]``."""
    ax = ax or plt.gca()
    ax.imshow(to_numpy_image(img))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_patch_grid(img: torch.Tensor, p: int, ax=None, title: str | None = None, color: str = "white"):
    """Draw ``img`` with the lines of its ``p x p`` patch grid and the patch index in each cell."""
    ax = show_image(img, ax, title)
    h, w = img.shape[-2:]
    for y in range(0, h + 1, p):
        ax.axhline(y - 0.5, color=color, lw=0.8)
    for x in range(0, w + 1, p):
        ax.axvline(x - 0.5, color=color, lw=0.8)
    gw = w // p
    if gw <= 16:
        for i in range((h // p) * gw):
            r, c = divmod(i, gw)
            ax.text(c * p + p / 2 - 0.5, r * p + p / 2 - 0.5, str(i), color=color,
                    ha="center", va="center", fontsize=7)
    return ax


def show_patches(patches: torch.Tensor, p: int, channels: int = 3, ncols: int | None = None, fig=None):
    """Show each flat patch ``(L, p*p*C)`` as a small image, in token order."""
    L = patches.shape[0]
    ncols = ncols or int(round(L**0.5))
    nrows = -(-L // ncols)
    fig = fig or plt.figure(figsize=(ncols * 0.45, nrows * 0.45))
    for i in range(L):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        patch = patches[i].reshape(p, p, channels).permute(2, 0, 1)
        show_image(patch, ax)
    return fig
