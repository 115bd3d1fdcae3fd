"""Reconstruction snapshots: a fixed set of held-out images, reconstructed as training goes.

``pretrain --recon_every K`` writes ``OUTPUT_DIR/recon/epoch-NNNN.png`` before the
first step and every ``K`` epochs after it, always of the *same* test images under
the *same* mask, so the pictures show the model learning and nothing else changing.
Each picture has four rows, one column per image:

1. the original;
2. the masked input (removed patches grey);
3. the reconstruction: the decoder's output for every patch;
4. the reconstruction with the visible patches pasted back.

A model trained with ``norm_pix_loss`` predicts each patch's *normalized* pixels,
so its prediction has no colour or brightness of its own.  The pictures give each
removed patch the mean and standard deviation of the image's *visible* patches
(``stats='visible'``), never those of the hidden patch itself: nothing the model
was not shown reaches the picture.

This module computes pictures as tensors and saves them as PNG files (with
torchvision, no matplotlib): :func:`masked_image`, :func:`reconstruct` and the rows
above.  :mod:`~mae_from_scratch.pictures` draws them with matplotlib; it imports from
here, never the other way round, so a training run that saves snapshots (or none)
does not load matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from . import data as D
from .image_check import image_files
from .loss import unnormalize_patches
from .patching import patchify, unpatchify
from .photos import denormalize

ROW_TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
RECON_DIR = "recon"


def masked_image(img: torch.Tensor, mask: torch.Tensor, p: int, fill: float = 0.5) -> torch.Tensor:
    """``img (3, H, W)`` with the removed patches (``mask (L,)`` == 1) painted grey."""
    x = patchify(img[None], p)[0]
    x = torch.where(mask.bool()[:, None], torch.full_like(x, fill), x)
    return unpatchify(x[None], p, img.shape[0])[0]


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float = 0.75, noise=None, stats: str = "true"):
    """Run ``model`` on normalized ``imgs`` and return pixel-space pictures, all ``(N, 3, H, W)``.

    Returns a dict with ``pred`` (the model's prediction for every patch), ``pasted``
    (prediction on removed patches, real pixels on visible ones), both still normalized
    like ``imgs``, and ``mask`` ``(N, L)``.  For a ``norm_pix_loss`` model the prediction is mapped back to pixels with
    :func:`~mae_from_scratch.loss.unnormalize_patches` using ``stats``.
    """
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


def heldout_images(dataset: str, data_path, n: int, input_size: int, mean, std, seed: int = 0,
                   num_photos: int = 4096, classes=None):
    """``n`` fixed images of ``dataset``'s *test* split, normalized: ``(imgs (n, 3, s, s), labels, names)``.

    The same ``seed`` picks the same images.  They come from the test split, so the
    model never trains on them.  ``names`` are file names where the split has files.
    """
    ds = D.build_dataset(dataset, "test", data_path, transform=D.eval_transform(input_size, mean, std),
                         num_photos=num_photos, photo_size=max(64, input_size), classes=classes)
    if len(ds) < n:
        raise D.DataError(f"the test split of {dataset} has {len(ds)} images; {n} held-out images were asked for")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    items = [ds[i] for i in idx]
    files = image_files(ds)  # None for in-memory data sets: their index names the image
    names = [f"{Path(files[i]).parent.name}/{Path(files[i]).name}" if files else str(i) for i in idx]
    return torch.stack([im for im, _ in items]), [int(y) for _, y in items], names


def fixed_noise(n: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The mask noise of the snapshots: the same masks at every snapshot."""
    return torch.rand(n, num_patches, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruction_rows(model, imgs: torch.Tensor, mean, std, mask_ratio: float = 0.75, noise=None):
    """The four rows of a snapshot as pictures in ``[0, 1]``: ``(4, n, 3, s, s)``."""
    device = next(model.parameters()).device
    out = reconstruct(model, imgs.to(device), mask_ratio, None if noise is None else noise.to(device),
                      stats="visible")
    p = model.patch_size
    orig = torch.stack([denormalize(im, mean, std) for im in imgs.cpu()])
    masked = torch.stack([masked_image(o, m, p) for o, m in zip(orig, out["mask"].cpu())])
    pred = torch.stack([denormalize(im, mean, std) for im in out["pred"].float().cpu()])
    pasted = torch.stack([denormalize(im, mean, std) for im in out["pasted"].float().cpu()])
    return torch.stack([orig, masked, pred, pasted]).clamp(0, 1)


def grid_image(rows: torch.Tensor) -> torch.Tensor:
    """``rows (R, n, 3, s, s)`` as one picture ``(3, H, W)``: ``R`` rows of ``n``, 1-pixel white gaps."""
    r, n = rows.shape[:2]
    return make_grid(rows.reshape(r * n, *rows.shape[2:]), nrow=n, padding=1, pad_value=1.0)


def save_grid(rows: torch.Tensor, path: Path | str) -> Path:
    """Save :func:`grid_image` of ``rows`` as a PNG (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    save_image(grid_image(rows), tmp)
    tmp.replace(path)
    return path


def snapshot_path(folder: Path | str, epochs_done: int) -> Path:
    return Path(folder) / RECON_DIR / f"epoch-{epochs_done:04d}.png"


def mask_ratio_rows(model, imgs: torch.Tensor, mean, std, ratios=(0.5, 0.6, 0.7, 0.8, 0.9), seed: int = 0):
    """For each ratio, the masked input and the reconstruction + visible: ``(2 * len(ratios), n, 3, s, s)``.

    One noise tensor serves every ratio, so a patch hidden at 50% stays hidden at 90%.
    """
    noise = fixed_noise(imgs.shape[0], model.patch_embed.num_patches, seed)
    rows = []
    for r in ratios:
        grid = reconstruction_rows(model, imgs, mean, std, r, noise)
        rows += [grid[1], grid[3]]
    return torch.stack(rows)
