"""Data held on the device: decoded once, augmented a whole batch at a time.

The PIL path (:class:`~mae_from_scratch.data.MAEPretrainDataset` in loader
workers) decodes and crops every image on the CPU, every epoch.  With the two
CPU cores of a Colab T4 that is slower than the model, and on a CPU the
workers take the cores the model needs.  A small data set does not need it:
CIFAR-10 is 150 MB as uint8, STL-10's labelled splits about 360 MB.  Here the
images are decoded once into one ``uint8`` tensor on the training device (the
GPU, or the CPU for CPU runs), and each batch is augmented there, in a few
tensor operations:

1. the recipe's random resized crop (scale 0.2-1, aspect ratio 3/4-4/3), its
   parameters drawn exactly as torchvision's ``RandomResizedCrop`` draws them
   (ten tries, then a central crop), for all samples at once;
2. a horizontal flip with probability 1/2;
3. the resampling to the input size, equal to torchvision's bilinear
   ``resized_crop`` with ``antialias=True`` (see :func:`resized_crops`): a crop
   larger than the input (the offline photos at 64 px, STL-10 at 96 px) is
   low-pass filtered as it shrinks, so fine detail does not alias into
   spurious patterns; CIFAR-10 crops at 32 px are only ever enlarged;
4. normalization, and the mask noise for :func:`~mae_from_scratch.masking.random_masking`.

**Bilinear, not bicubic.**  The recipe's PIL path resizes crops with bicubic
interpolation; this path is bilinear.  Bilinear is slightly softer when a crop
is enlarged.

**Randomness without a generator.**  Every random number is a hash of
``(seed, epoch, sample index, stream, draw)``: a counter-based generator
computed on the device for the whole batch, with no per-sample Python loop and
no generator state.  A sample gets the same crop, flip and mask whatever batch,
rank or resumed run it lands in, so a killed run resumes bit-exactly, as on the
PIL path (which draws from ``(seed, epoch, index)`` too, with other numbers).
(Shrunk crops are resampled by batched matrix products, whose last bits may
depend on the batch's size, so bit-exact pixels need the same batch size.)
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .data_error import DataError
from .image_check import bad_images_error, collate_as_list

__all__ = [
    "DeviceBatchLoader",
    "DeviceImages",
    "counter_uniform",
    "crop_boxes",
    "decode_images",
    "first_image_nbytes",
    "fits_on_device",
    "mask_noise",
    "resize_weights",
    "resized_crops",
]

# ----------------------------------------------------------------------------------
# A counter-based random number generator: uniform numbers as hashes of counters.
_M32 = 0xFFFFFFFF
# Streams keep the draws of different purposes independent.
CROP_AREA, CROP_RATIO, CROP_TOP, CROP_LEFT, FLIP, NOISE = range(6)


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32``, exact in int64 (no overflow):
    the constant is split into 16-bit halves so no product exceeds 2**48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """A 32-bit integer hash (the "lowbias32" constants of C. Wellons' hash
    prospector): every input bit flips each output bit with probability close to
    1/2.  Works on Python ints and on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_hash(seed: int, epoch: int, index: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """``(B, count)`` int64 hashes in ``[0, 2**32)`` of ``(seed, epoch, index[b], stream, k)``."""
    key = _mix32(_mix32(_mix32((seed & _M32) ^ _mix32(stream + 1)) ^ (epoch & _M32)))
    per_sample = _mix32((index.long() & _M32) ^ key)  # (B,)
    draws = torch.arange(count, device=index.device, dtype=torch.long)
    return _mix32(_mix32(per_sample[:, None] ^ _mix32(draws + key)[None, :]) ^ draws[None, :])


def counter_uniform(seed: int, epoch: int, index: torch.Tensor, stream: int, count: int = 1) -> torch.Tensor:
    """``(B, count)`` float64 uniform numbers in ``[0, 1)``, a function of the counters only."""
    return counter_hash(seed, epoch, index, stream, count).double() / 2.0**32


def mask_noise(seed: int, epoch: int, index: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``(B, L)`` mask noise in ``[0, 1)`` with no ties, so ``argsort`` is the same on
    every device: the hash orders the patches, the patch number breaks ties."""
    h = counter_hash(seed, epoch, index, NOISE, num_patches)
    j = torch.arange(num_patches, device=index.device)
    return (h * num_patches + j).double() / (2.0**32 * num_patches)


# ----------------------------------------------------------------------------------
# The random resized crop, for a whole batch
def crop_boxes(u_area, u_ratio, u_top, u_left, height: int, width: int,
               scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """``RandomResizedCrop``'s parameters ``(top, left, h, w)`` for every sample, as int64 ``(B, 4)``.

    The same procedure as torchvision's ``RandomResizedCrop.get_params``, from
    uniform numbers given as ``(B, tries)`` tensors instead of a generator: each
    try draws an area share in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; the first try whose box fits the image is taken, with a uniform
    position; a sample with no fitting try gets torchvision's central fallback.
    """
    area = height * width
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    # torch.round and Python's round both round halves to even.
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits (0 if none)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = (u_top.gather(1, first)[:, 0] * (height - h + 1)).floor().long()
    left = (u_left.gather(1, first)[:, 0] * (width - w + 1)).floor().long()

    # No try fitted: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], device=w.device)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(ok[:, None], boxes, fallback)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int,
                  flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``boxes`` ``(B, 4)`` = ``(top, left, h, w)`` out of ``images`` ``(B, C, H, W)``
    and resize each to ``size x size``, flipping where ``flip`` is true.

    The result is that of ``torchvision.transforms.v2.functional.resized_crop`` with
    bilinear interpolation and ``antialias=True``.  Along an axis where the crop is
    enlarged that is plain bilinear interpolation: output pixel ``r`` reads the crop at
    ``(r + 0.5) * h / size - 0.5``, held inside the crop.  Where the crop is shrunk by
    a factor ``f > 1``, the triangle filter is widened ``f`` times, so every input
    pixel counts and detail finer than the output's pixels averages out instead of
    aliasing (a 1-pixel checkerboard becomes flat grey, not a coarse pattern).

    When no crop can shrink (images no larger than ``size``: CIFAR-10 at 32 px),
    ``F.grid_sample`` does the bilinear interpolation; otherwise each axis's filter
    is a ``(size, H)`` or ``(size, W)`` weight matrix per sample and the resampling
    two batched matrix products, which cost about the same for any shrink factor.
    Returns float32 in the input's value range.
    """
    n, _, height, width = images.shape
    # Resampling is part of the data, not of the model: full float32 even inside an autocast region.
    with torch.autocast(images.device.type, enabled=False):
        if max(height, width) > size:
            return _antialiased_crops(images, boxes, size, flip)
        top, left, h, w = (boxes[:, k, None].to(torch.float32) for k in range(4))  # (B, 1) each
        steps = torch.arange(size, device=images.device, dtype=torch.float32)[None, :] + 0.5  # (1, S)
        ys = (top + (steps * h / size - 0.5).clamp(min=0).minimum(h - 1))  # (B, S) rows in the image
        xs = (left + (steps * w / size - 0.5).clamp(min=0).minimum(w - 1))  # (B, S) columns
        if flip is not None:
            xs = torch.where(flip[:, None], xs.flip(1), xs)
        # grid_sample's coordinates: -1 and 1 are the centres of the first and last pixel.
        gy = ys * (2 / max(height - 1, 1)) - 1
        gx = xs * (2 / max(width - 1, 1)) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, S, S, 2)
        return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize_weights(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """``(B, size, extent)`` float32: row ``i`` of sample ``b`` holds the weight of each of the
    ``extent`` image pixels in output pixel ``i`` when the crop ``[start[b], start[b] + length[b])``
    of one axis is resized to ``size`` pixels by antialiased bilinear interpolation.

    The filter of ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``,
    which torchvision's ``resize`` calls: with ``scale = length / size`` and
    ``support = max(scale, 1)``, output pixel ``i`` is centred at ``c = scale * (i + 0.5)``
    in the crop, and crop pixel ``j`` weighs ``max(0, support - |j + 0.5 - c|)``, the
    triangle of half-width ``support``; pixels outside the crop weigh nothing, and each
    row is normalized to sum to 1.  Enlarging (``support = 1``) that is plain bilinear
    interpolation, held inside the crop.
    """
    device = start.device
    start = start.to(torch.float32)[:, None]  # (B, 1)
    length = length.to(torch.float32)[:, None]
    scale = length / size
    support = scale.clamp(min=1.0)[:, :, None]  # (B, 1, 1)
    centre = scale * (torch.arange(size, device=device, dtype=torch.float32) + 0.5)  # (B, S), in the crop
    pixel = torch.arange(extent, device=device, dtype=torch.float32)  # (E,), in the image
    # In place on the one (B, S, E) tensor: these few passes over it are most of the work.
    weight = (pixel - (start + centre - 0.5)[:, :, None]).abs_()  # |j + 0.5 - c|
    weight = weight.sub_(support).clamp_(max=0)  # -max(0, support - |j + 0.5 - c|): the sign cancels below
    weight = weight.mul_(((pixel >= start) & (pixel < start + length)).to(torch.float32)[:, None, :])
    return weight.div_(weight.sum(dim=2, keepdim=True))


def _antialiased_crops(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None):
    """:func:`resized_crops` by one weight matrix per axis and sample: ``Wy @ image @ Wx^T``."""
    n, c, height, width = images.shape
    wy = resize_weights(boxes[:, 0], boxes[:, 2], size, height)  # (B, S, H)
    wx = resize_weights(boxes[:, 1], boxes[:, 3], size, width)  # (B, S, W)
    if flip is not None:  # a mirrored output is the columns' weights in reverse order
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
    # Columns first with the channels and rows folded into one matrix per sample, then the rows.  (Where
    # TF32 matrix products are switched on, these round to about a tenth of a grey level.)
    cols = torch.bmm(images.float().reshape(n, c * height, width), wx.transpose(1, 2))  # (B, C*H, S)
    return wy[:, None] @ cols.view(n, c, height, size)  # (B, C, S, S)


# ----------------------------------------------------------------------------------
# The images, decoded once
class DeviceImages:
    """A data set's images as one ``uint8`` tensor ``(N, C, H, W)`` on a device."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def to(self, device) -> "DeviceImages":
        targets = None if self.targets is None else self.targets.to(device)
        return DeviceImages(self.images.to(device), targets)


class NotUniformError(ValueError):
    """The images do not all have the same size, so they cannot be held as one tensor."""


def _to_uint8_chw(item):
    """``(PIL image or array, label)`` -> ``(uint8 (C, H, W) tensor, label)``; picklable for workers."""
    from torchvision.transforms.functional import pil_to_tensor

    img, label = item
    return pil_to_tensor(img.convert("RGB")), int(label)


def _raw_source(ds):
    """torchvision's CIFAR-10 and STL-10 hold their images as one uint8 array already:
    ``(array, labels, indices or None)`` for those (also inside a ``Subset``), else ``None``."""
    indices = None
    if isinstance(ds, torch.utils.data.Subset):
        ds, indices = ds.dataset, list(ds.indices)
    data = getattr(ds, "data", None)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or labels is None:
        return None
    return data, labels, indices


def _raw_arrays(ds):
    """The images and labels of a data set :func:`_raw_source` recognises, as tensors."""
    source = _raw_source(ds)
    if source is None:
        return None
    data, labels, indices = source
    images = torch.from_numpy(data)
    if images.shape[-1] == 3:  # CIFAR-10 stores (N, H, W, C)
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return images.contiguous(), labels


def decode_images(ds, num_workers: int = 0, progress: bool = False) -> DeviceImages:
    """Decode every image of ``ds`` (items ``(PIL image, label)``) once, on the CPU.

    Raises :class:`NotUniformError` naming the first image whose size differs, and
    :class:`~mae_from_scratch.data_error.DataError` naming every image that cannot be read
    (all of them, after trying every image).
    """
    raw = _raw_arrays(ds)
    if raw is not None:
        return DeviceImages(*raw)
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        _Decoded(ds), batch_size=256, num_workers=num_workers, collate_fn=collate_as_list)
    images, labels, shape = None, [], None
    done = 0
    bad = []
    for batch in tqdm(loader, desc="decoding images once", disable=not progress, ascii=True):
        for img, label in batch:
            if isinstance(img, _Unreadable):
                bad.append((img.path, img.why))
                continue
            if bad:
                continue  # only the unreadable files are still of interest
            if shape is None:
                shape = tuple(img.shape)
                images = torch.empty((len(ds), *shape), dtype=torch.uint8)
            elif tuple(img.shape) != shape:
                raise NotUniformError(
                    f"image {done} is {tuple(img.shape)} but image 0 is {shape}: images of different "
                    "sizes cannot be held as one tensor")
            images[done] = img
            labels.append(label)
            done += 1
    if bad:
        raise bad_images_error(bad)
    if images is None:
        raise ValueError("the data set is empty")
    return DeviceImages(images, torch.tensor(labels, dtype=torch.long))


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return _to_uint8_chw(self.ds[i])
        except DataError as e:  # collected, so that every unreadable file is reported at once
            path = getattr(e, "path", None) or str(e)
            return _Unreadable(path, str(e) if getattr(e, "path", None) is None else e.why), -1


class _Unreadable:
    """An image that could not be decoded: its path and why (picklable for workers)."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why


def first_image_nbytes(ds) -> int:
    """The bytes of one image of ``ds`` as uint8, from its first item: with ``len(ds)``, an
    estimate of the whole data set's size before anything else is decoded."""
    source = _raw_source(ds)
    if source is not None:  # no copy: one image's size is enough
        return source[0][0].size
    for i in range(min(len(ds), 64)):  # the first readable one; decode_images names the others
        try:
            return _to_uint8_chw(ds[i])[0].numel()
        except DataError:
            continue
    return 0


def fits_on_device(nbytes: int, device) -> bool:
    """Whether ``nbytes`` of images may be held on ``device``: at most a quarter of a
    GPU's memory, or of the machine's RAM for the CPU (the model needs the rest)."""
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 8 * 2**30
    return nbytes <= total // 4


# ----------------------------------------------------------------------------------
# The loader
class DeviceBatchLoader:
    """Batches ``(imgs (B, C, s, s) float32, noise (B, L) float64)`` made on the device.

    A drop-in for the PIL path's ``DataLoader`` in the training loop: it follows
    the same :class:`~mae_from_scratch.data.ResumableSampler` (so a resumed run
    continues inside its epoch), and each sample's crop, flip and mask noise are
    functions of ``(seed, epoch, index)``.
    """

    def __init__(self, images: DeviceImages, sampler, batch_size: int, input_size: int, mean, std,
                 num_patches: int, seed: int = 0, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10):
        self.data = images
        self.sampler = sampler
        self.batch_size = batch_size
        self.input_size = input_size
        self.num_patches = num_patches
        self.seed = seed
        self.scale, self.ratio, self.tries = tuple(scale), tuple(ratio), tries
        device = images.images.device
        # x / 255 then (x - mean) / std, folded into one multiply-add.
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._gain, self._bias = 1 / (255 * std_t), -mean_t / std_t

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # whole batches only, as drop_last

    def batch(self, epoch: int, index: torch.Tensor):
        """The augmented images and mask noise of the samples ``index`` in ``epoch``."""
        index = index.to(self.data.images.device)
        _, _, height, width = self.data.images.shape
        u = {s: counter_uniform(self.seed, epoch, index, s, self.tries)
             for s in (CROP_AREA, CROP_RATIO, CROP_TOP, CROP_LEFT)}
        boxes = crop_boxes(u[CROP_AREA], u[CROP_RATIO], u[CROP_TOP], u[CROP_LEFT], height, width,
                           self.scale, self.ratio)
        flip = counter_uniform(self.seed, epoch, index, FLIP)[:, 0] < 0.5
        imgs = resized_crops(self.data.images[index], boxes, self.input_size, flip)
        imgs = imgs * self._gain + self._bias
        return imgs, mask_noise(self.seed, epoch, index, self.num_patches)

    def __iter__(self):
        keys = list(self.sampler)  # (epoch, index) pairs, from the sampler's position on
        for b in range(len(keys) // self.batch_size):
            part = keys[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.batch(part[0][0], torch.tensor([i for _, i in part]))
