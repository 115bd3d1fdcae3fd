"""The book's photographs: real images that need no download.

They ship inside packages the book already installs (scikit-image's sample
images and matplotlib's portrait of Grace Hopper).  The chapters use them to
show patches, masks and reconstructions; the tests use them as a small batch of
real images; and random crops of them are the offline training set
(``--dataset photos``).

Held out means held out.  Every photograph is split once, by columns: crops
for training come from its left three quarters, crops for testing
(``split="test"``) from its right quarter.  A bicubic resize reads past the box
it resizes (up to 1.5 times the shrink factor: 12 pixels for a crop shrunk 8
times), so each side of the cut is shrunk and cropped from its own pixels only:
every value of a training crop is computed from pixels left of the cut, every
value of a test crop from pixels right of it, whatever the seeds.  A
reconstruction or a kNN accuracy measured on test crops is measured on pixels
the model never saw.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics: what the official models were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The chapters' photographs ...
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "grace_hopper")
# ... and, for the offline training set, the other colour photos that scikit-image
# installs with itself (its other samples are fetched on demand).
OFFLINE_PHOTOS = PHOTOS + ("hubble_deep_field", "immunohistochemistry", "retina", "motorcycle")

SPLITS = ("train", "test")
# The share of each photograph's width, on the right, that only test crops come from.
HELD_OUT_FRACTION = 0.25


def offline_photo(name: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 photograph that ships inside an installed package."""
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    if name not in OFFLINE_PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {OFFLINE_PHOTOS}")
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def load_photo(name: str = "astronaut", size: int | None = 224) -> torch.Tensor:
    """A photograph as a float tensor ``(3, size, size)`` in ``[0, 1]``.

    The largest centred square is cut out and resized (bicubic, antialiased);
    ``size=None`` keeps the square at its full resolution.  For pictures of
    patches and masks; a model's held-out images are ``photo_crops(..., split="test")``.
    """
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    img = torch.from_numpy(offline_photo(name).copy()).permute(2, 0, 1).float() / 255.0
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s]
    if size is not None and size != s:
        img = F.interpolate(img[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return img.clamp(0, 1)


def held_out_start(width: int) -> int:
    """The first column of a photograph ``width`` pixels wide that belongs to the test split."""
    return width - int(round(width * HELD_OUT_FRACTION))


def split_columns(width: int, split: str) -> tuple[int, int]:
    """The columns ``[start, stop)`` of a photograph that crops of ``split`` come from."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    edge = held_out_start(width)
    return (0, edge) if split == "train" else (edge, width)


def _shrink(photo, size: int):
    """``photo`` (PIL) shrunk in place so that its shorter side is at most ``8 * size``."""
    from PIL import Image

    short = min(photo.size)
    photo.thumbnail((8 * size * photo.width // short, 8 * size * photo.height // short), Image.BICUBIC)
    return photo


def _cut(width: int, shrunk_width: int) -> int:
    """The column of the original photograph, ``width`` pixels wide, where the split falls
    in its shrunk version (at :func:`held_out_start` of ``shrunk_width``)."""
    return round(held_out_start(shrunk_width) * width / shrunk_width)


@functools.lru_cache(maxsize=4)
def _shrunk_photos(size: int) -> dict:
    """For each split, the offline photos shrunk once (:func:`_shrink`: crops are then cheap
    to resize), each as ``(region, start)``: the split's columns of the shrunk photo
    (:func:`split_columns`) as a PIL image, and the first of them.  Cached: decoding the
    photos takes a second.

    A split's region holds nothing of the other side of the cut (:func:`_cut`).  Shrinking
    blends neighbouring pixels, so before it the other side is replaced by copies of the
    column next to the cut.  The photo keeps its size, so the shrunk grid is the whole
    photo's, and away from the cut the pixels are those of the whole photo shrunk."""
    from PIL import Image

    regions = {split: [] for split in SPLITS}
    for n in OFFLINE_PHOTOS:
        photo = np.asarray(Image.fromarray(offline_photo(n)).convert("RGB"))
        h, w = photo.shape[:2]
        shrunk_width = _shrink(Image.new("L", (w, h)), size).width
        cut = _cut(w, shrunk_width)
        for split in SPLITS:
            side = photo.copy()
            if split == "train":
                side[:, cut:] = side[:, cut - 1 : cut]
            else:
                side[:, :cut] = side[:, cut : cut + 1]
            shrunk = _shrink(Image.fromarray(side), size)
            start, stop = split_columns(shrunk.width, split)
            regions[split].append((shrunk.crop((start, 0, stop, shrunk.height)), start))
    return regions


class PhotoCrops(torch.utils.data.Dataset):
    """``num_images`` random square crops of the packaged photographs, as PIL images.

    Item ``i`` -> ``(PIL image size x size, label)`` where the label is the index of
    the photograph the crop came from (in :data:`OFFLINE_PHOTOS`), which makes a small
    nine-way "which photo is this?" task for kNN and linear probes.

    ``split="train"`` crops come from the left three quarters of each photograph,
    ``split="test"`` crops from its right quarter (:func:`split_columns`), each made
    from the pixels of its own side of the cut only, so the two splits never share a
    pixel.  A crop's side covers ``min_scale`` to all of its region's shorter side;
    ``seed`` fixes the crops.  ``boxes[i]`` is crop ``i``'s ``(left, top, right, bottom)``
    in the (shrunk) photograph ``targets[i]``.
    """

    def __init__(self, num_images: int = 4096, size: int = 64, seed: int = 0, min_scale: float = 0.1,
                 split: str = "train"):
        from PIL import Image

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.classes = list(OFFLINE_PHOTOS)
        self.split = split
        regions = _shrunk_photos(size)[split]
        g = torch.Generator().manual_seed(seed)
        self.images, self.targets, self.boxes = [], [], []
        for _ in range(num_images):
            label = int(torch.randint(len(regions), (1,), generator=g))
            region, start = regions[label]
            w, h = region.size
            short = min(w, h)
            scale = min_scale + (1 - min_scale) * torch.rand(1, generator=g).item()
            # At least `size` pixels (no upsampling) where the region allows it.
            s = min(short, max(size, int(short * scale)))
            left = int(torch.randint(w - s + 1, (1,), generator=g))
            top = int(torch.randint(h - s + 1, (1,), generator=g))
            # Resized from the region, not the photo: the filter's reach ends at the cut.
            # reducing_gap: shrink by an integer factor first (box filter), then bicubic: 20x faster.
            crop = region.resize((size, size), Image.BICUBIC, box=(left, top, left + s, top + s), reducing_gap=3.0)
            self.images.append(crop)
            self.targets.append(label)
            self.boxes.append((start + left, top, start + left + s, top + s))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def photo_crops(n: int, size: int = 32, seed: int = 0, min_scale: float = 0.1, split: str = "train") -> torch.Tensor:
    """``n`` random square crops of the packaged photographs as a ``(n, 3, size, size)`` tensor in ``[0, 1]``.

    The tensor form of :class:`PhotoCrops` (the same crops for the same arguments):
    deterministic for a given ``seed``, each crop covering between ``min_scale`` and
    all of its region's shorter side, so the batch holds both close-ups and whole
    scenes.  ``split="test"`` gives held-out crops, disjoint from every training crop.
    """
    from torchvision.transforms.functional import pil_to_tensor

    crops = PhotoCrops(num_images=n, size=size, seed=seed, min_scale=min_scale, split=split)
    return torch.stack([pil_to_tensor(img) for img in crops.images]).float() / 255.0


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
