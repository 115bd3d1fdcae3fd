"""The pretraining data: the training images, their sampler and their loader.

Two loaders give the same batches ``(imgs, noise)``: the PIL loader (every image
decoded and cropped with PIL in loader workers, bicubic, the official path) and the
device loader (the images decoded once, held on the training device and augmented
a whole batch at a time, see :mod:`~mae_from_scratch.device_data`).  ``--loader
auto`` takes the device loader when the images all have one size and fit in a
quarter of the device's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from . import data as D
from .cli_checks import refuse
from .device_data import DeviceBatchLoader, NotUniformError, decode_images, first_image_nbytes, fits_on_device
from .distributed import DistInfo
from .image_check import verify_images
from .run_config import resolve_dataset


@dataclass
class PretrainData:
    """The training images, their sampler and loader (batches ``(imgs, noise)``)."""

    dataset: object  # a MAEPretrainDataset (PIL loader) or DeviceImages (device loader)
    sampler: D.ResumableSampler
    loader: object
    info: D.DatasetInfo  # name, normalization statistics, classes
    loader_name: str  # "device" or "pil"
    steps_per_epoch: int = 0


def _images_on_device(base, args, device, dist_info: DistInfo, required: bool, resumed_from: str | None = None):
    """``base`` decoded once and moved to ``device``, or ``None`` when its images cannot be
    held there (they differ in size, or would take more than a quarter of the device's
    memory).  With ``required`` (``--loader device``) that is an error instead."""

    def decline(why: str):
        if required and resumed_from:  # the pil loader would change the run's augmentation
            refuse(f"--loader device: {why}; {resumed_from} was trained with the device loader, so continue it "
                   "where its images fit, or start a new run")
        if required:
            refuse(f"--loader device: {why}; use --loader pil")
        return None

    estimate = first_image_nbytes(base) * len(base)  # before decoding everything
    if not fits_on_device(estimate, device):
        return decline(f"the {len(base)} images would take about {estimate / 2**30:.1f} GiB, "
                      f"more than a quarter of the memory of {device}")
    try:
        images = decode_images(base, num_workers=args.num_workers,
                               progress=dist_info.is_main and not args.no_progress)
    except NotUniformError as e:
        return decline(str(e))
    return images.to(device)



def build_pretrain_data(config, num_patches: int, dist_info: DistInfo, device: torch.device | str = "cpu",
                        resumed_from: str | None = None) -> PretrainData:
    """The pretraining data set, its sampler and loader, as ``config`` asks.

    With the device loader the data set is a :class:`~mae_from_scratch.device_data.DeviceImages`
    and the loader a :class:`~mae_from_scratch.device_data.DeviceBatchLoader`; with the PIL
    loader, a :class:`~mae_from_scratch.data.MAEPretrainDataset` and a ``DataLoader``.
    ``config`` needs the data settings (a :class:`RunConfig` or a namespace with the
    flags).  ``resumed_from``: the checkpoint of a run trained with the device loader,
    which this one continues.
    """
    name = resolve_dataset(config)
    info = D.dataset_info(name)
    base = D.build_dataset(name, "train", config.data_path, transform=None, num_photos=config.num_photos,
                           photo_size=max(64, config.input_size))
    base = D.subset(base, config.max_images, seed=config.seed)
    if config.loader != "pil":
        images = _images_on_device(base, config, device, dist_info, required=config.loader == "device",
                                   resumed_from=resumed_from)
        if images is not None:
            sampler = D.ResumableSampler(images, dist_info.world_size, dist_info.rank, seed=config.seed)
            loader = DeviceBatchLoader(images, sampler, config.batch_size, config.input_size, info.mean, info.std,
                                       num_patches, seed=config.seed)
            return PretrainData(images, sampler, loader, info, "device")
    # Every image file decoded once now, so a broken one stops the run before its first step.
    # One process checks for all: under torchrun, its error ends the other ranks too.
    if dist_info.is_main:
        verify_images(base, num_workers=config.num_workers, progress=not config.no_progress)
    dataset = D.MAEPretrainDataset(base, D.pretrain_transform(config.input_size, info.mean, info.std),
                                   num_patches, seed=config.seed)
    sampler = D.ResumableSampler(dataset, dist_info.world_size, dist_info.rank, seed=config.seed)
    pin = config.pin_mem if config.pin_mem is not None else torch.device(device).type == "cuda"
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
        num_workers=config.num_workers, pin_memory=pin, persistent_workers=config.num_workers > 0,
        # The loader's own generator only seeds worker processes; our randomness is per sample.
        generator=torch.Generator().manual_seed(config.seed),
    )
    return PretrainData(dataset, sampler, loader, info, "pil")
