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
    counter_uniform, crop_boxes, decode_images, mask_noise, resize_weights, resized_crops,
)
from mae_from_scratch.photos import PhotoCrops

# Resampling on the device goes through grid_sample's normalized coordinates or float32
# weight matrices; on 0-255 values that costs at most a few thousandths of a grey level.
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


@pytest.mark.parametrize("side, box, size", [(64, (3, 5, 17, 20), 32), (64, (0, 0, 32, 32), 32),
                                             (64, (5, 7, 50, 40), 32), (64, (10, 0, 6, 9), 24),
                                             (32, (3, 5, 17, 20), 32), (32, (0, 0, 32, 32), 32),
                                             (32, (10, 0, 6, 9), 32), (24, (1, 2, 23, 11), 24)])
def test_a_fixed_crop_equals_torchvisions_antialiased_bilinear_resized_crop(side, box, size):
    # side <= size: no crop can shrink, the grid_sample path; side > size: the antialiased one.
    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)
    top, left, h, w = box
    ref = TF.resized_crop(imgs[0].float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                          antialias=True)
    ours = resized_crops(imgs, torch.tensor([box]), size)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=PIXEL_ATOL)
    flipped = resized_crops(imgs, torch.tensor([box]), size, flip=torch.tensor([True]))[0]
    torch.testing.assert_close(flipped, TF.horizontal_flip(ref), rtol=0, atol=PIXEL_ATOL)


def _checkerboard(side, cell=1):
    """A black-and-white checkerboard of ``cell x cell`` squares, ``(3, side, side)`` uint8."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return (((yy // cell + xx // cell) % 2) * 255).to(torch.uint8).expand(3, side, side).contiguous()


# (box, output size, shrink factors along rows and columns)
SHRINKS = [((0, 0, 64, 64), 32, (2, 2)), ((8, 4, 48, 48), 24, (2, 2)), ((0, 0, 96, 96), 32, (3, 3)),
           ((0, 0, 96, 96), 64, (1.5, 1.5)), ((3, 5, 50, 41), 32, (1.5625, 1.28125)),
           ((1, 2, 90, 20), 32, (2.8125, 0.625))]


@pytest.mark.parametrize("box, size, factors", SHRINKS, ids=[f"{b}->{s}" for b, s, _ in SHRINKS])
def test_a_shrunk_checkerboard_is_antialiased_as_torchvision_does(box, size, factors):
    top, left, h, w = box
    assert (h / size, w / size) == factors
    for cell in (1, 2):
        board = _checkerboard(96, cell)
        ref = TF.resized_crop(board.float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                              antialias=True)
        # Other crops in the same batch (a shrink and an enlargement, flipped or not) must not change this one.
        boxes = torch.tensor([box, (0, 0, 96, 96), (3, 5, 17, 20)])
        ours = resized_crops(board.expand(3, 3, 96, 96), boxes, size, flip=torch.tensor([False, True, False]))[0]
        torch.testing.assert_close(ours, ref, rtol=0, atol=PIXEL_ATOL)
        if cell == 1:
            # 1-px squares are finer than any shrunk output's pixels: close to flat grey
            # (without antialiasing the 96 -> 64 crop keeps a coarse pattern of std 32).
            assert ours.std() < 5 and abs(ours.mean() - 127.5) < 3
        else:
            # The comparison tells antialiasing from none: without it 2-px squares come out 50-125 grey levels off.
            aliased = TF.resized_crop(board.float(), top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                                      antialias=False)
            assert (aliased - ours).abs().max() > 40


def test_an_enlarged_crop_of_a_large_image_is_plain_bilinear():
    board = _checkerboard(96)[None]  # 96 px images take the antialiased path, even for this crop
    box = (3, 5, 17, 20)
    ref = TF.resized_crop(board[0].float(), *box, [32, 32], InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(resized_crops(board, torch.tensor([box]), 32)[0], ref, rtol=0, atol=PIXEL_ATOL)
    assert ref.std() > 40  # enlarged, the checkerboard keeps its contrast


def test_resize_weights_rows_sum_to_one_and_stay_inside_the_crop():
    start, length = torch.tensor([0, 7, 30]), torch.tensor([96, 41, 17])
    w = resize_weights(start, length, 32, 96)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(3, 32))
    inside = (torch.arange(96) >= start[:, None]) & (torch.arange(96) < (start + length)[:, None])
    assert (w[~inside[:, None, :].expand_as(w)] == 0).all()
    # A shrink by 3: output pixel 10 is centred on input pixel 31, the triangle 3 pixels wide each side.
    torch.testing.assert_close(w[0, 10, 28:35], torch.tensor([0, 1, 2, 3, 2, 1, 0]) / 9.0)
    # A shrink by 2: output pixel 5 is centred between input pixels 10 and 11.
    torch.testing.assert_close(resize_weights(start[:1], torch.tensor([64]), 32, 64)[0, 5, 8:14],
                               torch.tensor([0, 1, 3, 3, 1, 0]) / 8.0)


def test_resampling_stays_float32_inside_autocast():
    imgs = _checkerboard(64)[None]
    box = torch.tensor([(3, 5, 50, 41)])
    plain = resized_crops(imgs, box, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = resized_crops(imgs, box, 32)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)


def _photo_images(n=64, size=32):
    return decode_images(PhotoCrops(num_images=n, size=size, seed=0))


def test_decode_images_once_and_refuse_mixed_sizes():
    data = _photo_images(16)
    assert data.images.shape == (16, 3, 32, 32) and data.images.dtype == torch.uint8
    crops = PhotoCrops(num_images=2, size=32, seed=0)
    crops.images[1] = crops.images[1].resize((40, 32))
    with pytest.raises(NotUniformError, match="image 1"):
        decode_images(crops)


def test_loader_normalizes_each_channel_with_its_own_statistics():
    # A constant colour survives any crop and flip, so every pixel of channel c must be
    # (v_c / 255 - mean_c) / std_c with ImageNet's statistics in R, G, B order.
    colour = torch.tensor([200, 100, 30], dtype=torch.uint8)
    for side in (32, 64):  # the grid_sample path and the antialiased one
        data = DeviceImages(colour.view(1, 3, 1, 1).expand(8, 3, side, side).contiguous())
        loader = DeviceBatchLoader(data, D.ResumableSampler(data, seed=0), batch_size=8, input_size=32,
                                   mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD, num_patches=64, seed=0)
        imgs, _ = loader.batch(0, torch.arange(8))
        expected = torch.tensor([(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224,
                                 (30 / 255 - 0.406) / 0.225])
        torch.testing.assert_close(imgs, expected.view(1, 3, 1, 1).expand_as(imgs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", [32, 64])
def test_loader_batches_resume_inside_an_epoch(side):
    data = _photo_images(64, side)
    sampler = D.ResumableSampler(data, seed=0)
    loader = DeviceBatchLoader(data, sampler, batch_size=16, input_size=32, mean=D.IMAGENET_MEAN,
                               std=D.IMAGENET_STD, num_patches=64, seed=0)
    sampler.set_position(3, 0)
    full = list(loader)
    assert len(full) == len(loader) == 4
    imgs, noise = full[0]
    assert imgs.shape == (16, 3, 32, 32) and imgs.dtype == torch.float32 and noise.shape == (16, 64)
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
