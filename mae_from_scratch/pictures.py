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


def masked_image(img: torch.Tensor, mask: torch.Tensor, p: int, fill: float = 0.5) -> torch.Tensor:
    """``img (3, H, W)`` with the removed patches (``mask (L,)`` == 1) painted grey."""
    from .patching import patchify, unpatchify

    x = patchify(img[None], p)[0]
    x = torch.where(mask.bool()[:, None], torch.full_like(x, fill), x)
    return unpatchify(x[None], p, img.shape[0])[0]


def show_mask(img: torch.Tensor, mask: torch.Tensor, p: int, ax=None, title: str | None = None):
    """Show ``img`` with the patches that the mask removes greyed out."""
    return show_image(masked_image(img, mask, p), ax, title)


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float = 0.75, noise=None, stats: str = "true"):
    """Run ``model`` on normalized ``imgs`` and return pixel-space pictures, all ``(N, 3, H, W)``.

    Returns a dict with ``pred`` (the model's prediction for every patch), ``pasted``
    (prediction on removed patches, real pixels on visible ones), both still normalized
    like ``imgs``, and ``mask`` ``(N, L)``.  For a ``norm_pix_loss`` model the prediction is mapped back to pixels with
    :func:`~mae_from_scratch.loss.unnormalize_patches` using ``stats``.
    """
    from .loss import unnormalize_patches

    was_training = model.training
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    model.train(was_training)
    patches = model.patchify(imgs)
    if getattr(model, "norm_pix_loss", False):
        pred = unnormalize_patches(pred, patches, mask, stats=stats)
    m = mask.unsqueeze(-1)
    return {
        "pred": model.unpatchify(pred),
        "pasted": model.unpatchify(pred * m + patches * (1 - m)),
        "mask": mask,
    }


def show_reconstructions(model, imgs: torch.Tensor, mean, std, mask_ratio: float = 0.75, noise=None,
                         stats: str = "true", titles=None):
    """A grid: one row per image -- original / masked / reconstruction / reconstruction + visible.

    ``imgs`` are normalized with ``mean``/``std`` (as the model sees them); the pictures are
    de-normalized and clipped to ``[0, 1]``.  For ``norm_pix_loss`` models the ``stats``
    choice is written in the column title (see :func:`reconstruct`).
    """
    from .photos import denormalize

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
    from pathlib import Path

    from .metrics import read_jsonl

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
