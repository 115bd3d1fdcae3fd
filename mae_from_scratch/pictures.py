"""Pictures: patch grids, masks and reconstructions, drawn with matplotlib.

What the pictures show is computed in :mod:`~mae_from_scratch.snapshots`, without
matplotlib (:func:`masked_image`, :func:`reconstruct`, :func:`grid_image`); they are
imported here from there, so ``from mae_from_scratch.pictures import reconstruct`` works
too.  This module draws; the training engine, which only saves pictures, never imports it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .metrics import read_jsonl
from .patching import patchify
from .photos import denormalize
from .snapshots import grid_image, masked_image, reconstruct


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


def show_mask(img: torch.Tensor, mask: torch.Tensor, p: int, ax=None, title: str | None = None):
    """Show ``img`` with the patches that the mask removes greyed out."""
    return show_image(masked_image(img, mask, p), ax, title)


def show_reconstructions(model, imgs: torch.Tensor, mean, std, mask_ratio: float = 0.75, noise=None,
                         stats: str = "true", titles=None):
    """A grid: one row per image -- original / masked / reconstruction / reconstruction + visible.

    ``imgs`` are normalized with ``mean``/``std`` (as the model sees them); the pictures are
    de-normalized and clipped to ``[0, 1]``.  For ``norm_pix_loss`` models the ``stats``
    choice is written in the column title (see :func:`reconstruct`).
    """
    out = reconstruct(model, imgs, mask_ratio, noise, stats)
    p = model.patch_size
    norm_pix = getattr(model, "norm_pix_loss", False)
    note = {"true": "\n(true patch stats)", "visible": "\n(visible-patch stats)"}[stats] if norm_pix else ""
    titles = titles or ["original", f"masked {mask_ratio:.0%}", "reconstruction" + note, "+ visible patches"]
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    for i in range(n):
        orig = denormalize(imgs[i].cpu(), mean, std)
        row = [orig, masked_image(orig, out["mask"][i].cpu(), p),
               denormalize(out["pred"][i].cpu(), mean, std), denormalize(out["pasted"][i].cpu(), mean, std)]
        for j, (ax, im) in enumerate(zip(axes[i], row)):
            show_image(im, ax, titles[j] if i == 0 else None)
    fig.tight_layout()
    return fig


def read_metrics(log):
    """A metrics log as a list of dicts: a list already, or a JSON-lines file such as ``log.txt``."""
    if isinstance(log, (str, Path)):
        if not Path(log).is_file():
            raise FileNotFoundError(f"metrics log not found: {log}")
        return read_jsonl(log)
    return list(log)


def plot_metrics(log, keys=("loss",), x: str = "step", ax=None, logy: bool = False, title: str | None = None):
    """Plot metric curves (e.g. ``loss``, ``loss_visible``, ``lr``) from a metrics log."""
    rows = read_metrics(log)
    ax = ax or plt.gca()
    for k in keys:
        pts = [(r[x], r[k]) for r in rows if k in r and x in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k)
    ax.set_xlabel(x)
    if logy:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def draw_architecture(img: torch.Tensor, mask: torch.Tensor, p: int, recon: torch.Tensor | None = None,
                      fig=None):
    """MAE's data flow on one real image, drawn left to right.

    ``img`` ``(3, H, W)`` in ``[0, 1]``; ``mask`` ``(L,)`` or ``(1, L)``, 1 for a removed
    patch (as :func:`~mae_from_scratch.masking.random_masking` returns it); ``p`` the patch
    size.  The picture: the input with the removed patches greyed out -> the visible
    patches, in token order -> the encoder -> one encoded token per visible patch -> the
    decoder's input, the encoded tokens and a shared mask token for every removed patch,
    unshuffled into their places on the patch grid -> the decoder -> the target (``img``)
    or, when given, a reconstruction ``recon`` ``(3, H, W)``.

    Returns the figure; its single axes holds every element, and its images are, in order:
    the masked input, the visible patches, the target or reconstruction.
    """
    from matplotlib.patches import FancyBboxPatch, Rectangle

    if img.ndim != 3:
        raise ValueError(f"img must be (3, H, W); got shape {tuple(img.shape)}")
    h, w = img.shape[-2:]
    if h != w or h % p:
        raise ValueError(f"img must be square with a side divisible by p = {p}; got {h} x {w}")
    g = h // p
    mask = mask.reshape(-1).detach().cpu()
    if mask.numel() != g * g:
        raise ValueError(f"mask must have L = {g * g} entries, one per patch; got {mask.numel()}")
    removed = mask.bool()
    kept = (~removed).nonzero().flatten().tolist()
    if not kept:
        raise ValueError("the mask removes every patch; the encoder needs at least one")
    img = img.detach().float().cpu()
    patches = patchify(img[None], p)[0]  # (L, p*p*3)

    enc_color, mask_color, box_color = "#4C72B0", "#C8C8C8", "#DCE6F2"
    fig = fig or plt.figure(figsize=(12, 3.4))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    side, mid = 3.0, 1.5  # the images are side x side; everything is centred on y = mid

    def arrow(x0, x1, label=None):
        ax.annotate("", xy=(x1, mid), xytext=(x0, mid),
                    arrowprops=dict(arrowstyle="-|>", color="black", lw=1.2))
        if label:
            ax.text((x0 + x1) / 2, mid + 0.12, label, ha="center", va="bottom", fontsize=8)

    def caption(x, text):
        ax.text(x, -0.35, text, ha="center", va="top", fontsize=9)

    def box(x, width, label):
        ax.add_patch(FancyBboxPatch((x, mid - 1.4), width, 2.8, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    facecolor=box_color, edgecolor="black", lw=1.2))
        ax.text(x + width / 2, mid, label, ha="center", va="center", rotation=90, fontsize=11)

    # 1. the input, removed patches greyed out, with its patch grid
    x = 0.0
    ax.imshow(to_numpy_image(masked_image(img, mask, p)), extent=(x, x + side, 0, side))
    for k in range(g + 1):
        ax.plot([x, x + side], [k * side / g] * 2, color="white", lw=0.6)
        ax.plot([x + k * side / g] * 2, [0, side], color="white", lw=0.6)
    caption(x + side / 2, f"input: {len(kept)} of {g * g} patches\nvisible ({removed.float().mean():.0%} removed)")

    # 2. the visible patches, in token order
    n = len(kept)
    tile = min(0.42, 3.3 / (1.15 * n))
    x_t = x + side + 0.8
    arrow(x + side + 0.1, x_t - 0.1)
    top = mid + 1.15 * tile * n / 2
    for j, i in enumerate(kept):
        y = top - 1.15 * tile * (j + 1)
        patch = patches[i].reshape(p, p, 3).numpy().clip(0, 1)
        ax.imshow(patch, extent=(x_t, x_t + tile, y, y + tile))
    caption(x_t + tile / 2, "visible\npatches")

    # 3. the encoder, on the visible patches only
    x_e = x_t + tile + 0.6
    arrow(x_t + tile + 0.05, x_e - 0.05)
    box(x_e, 0.8, "encoder")
    caption(x_e + 0.4, "encoder\n(visible only)")

    # 4. one encoded token per visible patch
    x_c = x_e + 0.8 + 0.6
    arrow(x_e + 0.85, x_c - 0.05)
    for j in range(n):
        y = top - 1.15 * tile * (j + 1)
        ax.add_patch(Rectangle((x_c, y), tile, tile, facecolor=enc_color, edgecolor="black", lw=0.5))
    caption(x_c + tile / 2, "encoded\ntokens")

    # 5. the decoder's input: encoded tokens and mask tokens, back in their places
    x_g = x_c + tile + 1.6
    arrow(x_c + tile + 0.05, x_g - 0.1, "+ mask tokens,\nunshuffle")
    cell = side / g
    for i in range(g * g):
        r, c = divmod(i, g)
        color = mask_color if removed[i] else enc_color
        ax.add_patch(Rectangle((x_g + c * cell, side - (r + 1) * cell), cell, cell,
                               facecolor=color, edgecolor="white", lw=1.0))
    caption(x_g + side / 2, "encoded tokens (blue) and\nmask tokens (grey), in place")

    # 6. the decoder, on all tokens
    x_d = x_g + side + 0.6
    arrow(x_g + side + 0.05, x_d - 0.05)
    box(x_d, 0.8, "decoder")
    caption(x_d + 0.4, "decoder\n(all tokens)")

    # 7. the target, or a reconstruction
    x_o = x_d + 0.8 + 0.6
    arrow(x_d + 0.85, x_o - 0.1)
    out = img if recon is None else recon.detach().float().cpu()
    ax.imshow(to_numpy_image(out), extent=(x_o, x_o + side, 0, side))
    caption(x_o + side / 2, "target: loss on the\nremoved patches" if recon is None else "reconstruction")

    ax.set_xlim(-0.1, x_o + side + 0.1)
    ax.set_ylim(-1.05, side + 0.1)
    ax.set_aspect("equal")
    return fig


def show_grid(img, row_titles=None, title: str | None = None, ax=None, scale: float = 0.9):
    """Show one picture grid ``img`` (``(H, W, 3)`` array) with its rows named on the left."""
    if ax is None:
        h, w = img.shape[:2]
        _, ax = plt.subplots(figsize=(w / 34 * scale + 1.6, h / 34 * scale + (0.4 if title else 0)))
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(i + 0.5) * img.shape[0] / len(row_titles) for i in range(len(row_titles))]
                  if row_titles else [])
    if row_titles:
        ax.set_yticklabels(row_titles, fontsize=9)
        ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def show_rows(rows: torch.Tensor, row_titles=None, title: str | None = None, ax=None):
    """Pictures in a table: ``rows (R, n, 3, s, s)`` in ``[0, 1]``, one row of ``n`` per kind
    (e.g. :func:`~mae_from_scratch.snapshots.reconstruction_rows`), laid out as
    :func:`~mae_from_scratch.snapshots.save_grid` saves them."""
    return show_grid(to_numpy_image(grid_image(rows)), row_titles, title, ax)


def show_saved_grid(path, row_titles=None, title: str | None = None, ax=None):
    """Show a grid PNG saved by :func:`~mae_from_scratch.snapshots.save_grid`, rows named on the left."""
    import numpy as np
    from PIL import Image

    return show_grid(np.asarray(Image.open(path).convert("RGB")), row_titles, title, ax)
