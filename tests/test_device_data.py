"""Data held on the device: the batched crop follows torchvision, and randomness is a function of counters."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from mae_from_scratch import data as D
from mae_from_scratch.device_data import (
    CROP_AREA, CROP_LEFT, CROP_RATIO, CROP_TOP, DeviceBatchLoader, DeviceImages, NotUniformError, _mix32,
    counter_uniform, crop_boxes, decode_images, mask_noise, resized_crops,
)
from mae_from_scratch.photos import PhotoCrops

# Resampling on the device goes through grid_sample's normalized coordinates; on
# 0-255 values the round trip costs at most a few thousandths of a grey level.
PIXEL_ATOL = 2e-3


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b]).unique()
    fa = torch.searchsorted(a, grid, right=True) / len(a)
    fb = torch.searchsorted(b, grid, right=True) / len(b)
    return (fa - fb).abs().max().item()


def _ours(n, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), seed=0):
    idx = torch.arange(n)
    u = {s: counter_uniform(seed, 0, idx, s, 10) for s in (CROP_AREA, CROP_RATIO, CROP_TOP, CROP_LEFT)}
    return crop_boxes(u[CROP_AREA], u[CROP_RATIO], u[CROP_TOP], u[CROP_LEFT], height, width, scale, ratio)


def test_hash_matches_on_ints_and_tensors_and_looks_uniform():
    x = torch.tensor([0, 1, 2**31, 2**32 - 1, 123456789])
    assert _mix32(x).tolist() == [_mix32(int(v)) for v in x]
    u = counter_uniform(0, 0, torch.arange(200_000), stream=0)[:, 0]
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.003 and abs(u.var().item() - 1 / 12) < 0.002
    # neighbouring counters are not correlated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.01


def test_draws_depend_on_every_counter_and_only_on_them():
    idx = torch.tensor([5, 9, 5])
    a = counter_uniform(3, 2, idx, stream=1, count=4)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])  # the index, not the batch position
    for other in (counter_uniform(4, 2, idx, 1, 4), counter_uniform(3, 1, idx, 1, 4), counter_uniform(3, 2, idx, 2, 4)):
        assert not torch.equal(a, other)
    assert torch.equal(a[:1], counter_uniform(3, 2, torch.tensor([5]), 1, 4))


def test_mask_noise_has_no_ties():
    noise = mask_noise(0, 0, torch.arange(512), 64)
    assert noise.shape == (512, 64)
    assert all(len(row.unique()) == 64 for row in noise)


@pytest.mark.parametrize("height, width", [(32, 32), (32, 40), (96, 64)])
def test_crop_parameters_follow_torchvisions_distribution(height, width):
    n = 20_000
    torch.manual_seed(0)
    img = torch.zeros(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    ours = _ours(n, height, width)
    # Critical value of the two-sample test at the 0.1% level: 1.95 * sqrt(2 / n) = 0.0195.
    limit = 1.95 * (2 / n) ** 0.5
    for k, name in enumerate(("top", "left", "height", "width")):
        assert _ks(ref[:, k], ours[:, k]) < limit, name
    assert _ks(ref[:, 2] * ref[:, 3], ours[:, 2] * ours[:, 3]) < limit
    # The test notices a different recipe: scale (0.3, 1) instead of (0.2, 1).
    other = _ours(n, height, width, scale=(0.3, 1.0))
    assert _ks(ref[:, 2] * ref[:, 3], other[:, 2] * other[:, 3]) > 3 * limit


def test_crop_falls_back_to_torchvisions_central_crop():
    img = torch.zeros(3, 100, 10)  # no box of 90% or more of the area fits 3/4..4/3
    ref = T.RandomResizedCrop.get_params(img, [0.9, 1.0], [3 / 4, 4 / 3])
    assert _ours(50, 100, 10, scale=(0.9, 1.0)).tolist() == [list(ref)] * 50


@pytest.mark.parametrize("box, size", [((3, 5, 17, 20), 32), ((0, 0, 32, 32), 32), ((5, 7, 50, 40), 32),
                                       ((10, 0, 6, 9), 24)])
def test_a_fixed_crop_equals_torchvisions_bilinear_resized_crop(box, size):
    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    top, left, h, w = box
    ref = TF.resized_crop(imgs[0].float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                          antialias=False)
    ours = resized_crops(imgs, torch.tensor([box]), size)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=PIXEL_ATOL)
    flipped = resized_crops(imgs, torch.tensor([box]), size, flip=torch.tensor([True]))[0]
    torch.testing.assert_close(flipped, TF.horizontal_flip(ref), rtol=0, atol=PIXEL_ATOL)


def _photo_images(n=64, size=32):
    return decode_images(PhotoCrops(num_images=n, size=size, seed=0))


def test_decode_images_once_and_refuse_mixed_sizes():
    data = _photo_images(16)
    assert data.images.shape == (16, 3, 32, 32) and data.images.dtype == torch.uint8
    crops = PhotoCrops(num_images=2, size=32, seed=0)
    crops.images[1] = crops.images[1].resize((40, 32))
    with pytest.raises(NotUniformError, match="image 1"):
        decode_images(crops)


def test_loader_batches_are_normalized_and_resume_inside_an_epoch():
    data = _photo_images(64)
    sampler = D.ResumableSampler(data, seed=0)
    loader = DeviceBatchLoader(data, sampler, batch_size=16, input_size=32, mean=D.IMAGENET_MEAN,
                               std=D.IMAGENET_STD, num_patches=64, seed=0)
    sampler.set_position(3, 0)
    full = list(loader)
    assert len(full) == len(loader) == 4
    imgs, noise = full[0]
    assert imgs.shape == (16, 3, 32, 32) and imgs.dtype == torch.float32 and noise.shape == (16, 64)
    assert -2.2 < imgs.min() and imgs.max() < 2.7  # ImageNet-normalized [0, 1] pixels
    sampler.set_position(3, 32)  # a run stopped after two batches continues with the third
    rest = list(loader)
    assert len(rest) == 2
    for (a, na), (b, nb) in zip(full[2:], rest):
        assert torch.equal(a, b) and torch.equal(na, nb)
    sampler.set_position(4, 0)  # another epoch, other crops
    assert not torch.equal(next(iter(loader))[0], full[0][0])


def test_raw_cifar_arrays_are_used_as_they_are():
    class FakeCIFAR(torch.utils.data.Dataset):
        import numpy as np
        data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        targets = [3, 7]

        def __len__(self):
            return 2

    data = decode_images(FakeCIFAR())
    assert data.images.shape == (2, 3, 4, 4) and data.targets.tolist() == [3, 7]
    assert data.images[1, 2, 0, 1].item() == FakeCIFAR.data[1, 0, 1, 2]
    assert isinstance(data, DeviceImages)
