"""Images to learn from.

This module starts with what needs no download at all: real photographs that
ship inside packages the book already installs (scikit-image's sample images
and matplotlib's portrait of Grace Hopper).  The chapters use them to show
patches, masks and reconstructions, and the tests use them as a small batch
of real images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics: what the official models were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "grace_hopper")


def _photo_array(name: str) -> np.ndarray:
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    import skimage.data

    return getattr(skimage.data, name)()


def load_photo(name: str = "astronaut", size: int | None = 224) -> torch.Tensor:
    """A photograph as a float tensor ``(3, size, size)`` in ``[0, 1]``.

    The largest centred square is cut out and resized (bicubic, antialiased);
    ``size=None`` keeps the square at its full resolution.
    """
    img = torch.from_numpy(_photo_array(name).copy()).permute(2, 0, 1).float() / 255.0
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s]
    if size is not None and size != s:
        img = F.interpolate(img[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return img.clamp(0, 1)


def photo_crops(n: int, size: int = 32, seed: int = 0, min_scale: float = 0.1) -> torch.Tensor:
    """``n`` random square crops of the package photos, resized to ``(3, size, size)`` in ``[0, 1]``.

    Deterministic for a given ``seed``.  Each crop covers between ``min_scale`` and
    all of a photo's shorter side, so the batch holds both close-ups and whole scenes.
    """
    g = torch.Generator().manual_seed(seed)
    photos = [load_photo(name, size=None) for name in PHOTOS]
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        s_full = img.shape[-1]
        scale = min_scale + (1 - min_scale) * torch.rand(1, generator=g).item()
        s = max(size, int(s_full * scale))
        top = int(torch.randint(s_full - s + 1, (1,), generator=g))
        left = int(torch.randint(s_full - s + 1, (1,), generator=g))
        crop = img[None, :, top : top + s, left : left + s]
        out[i] = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return out.clamp(0, 1)


def normalize(imgs: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``[0, 1]`` images ``(..., 3, H, W)`` -> the standardized input the model expects."""
    m = torch.tensor(mean, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
    return (imgs - m) / s


def denormalize(imgs: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The inverse of :func:`normalize`, clipped to ``[0, 1]`` for display."""
    m = torch.tensor(mean, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
    return (imgs * s + m).clamp(0, 1)
