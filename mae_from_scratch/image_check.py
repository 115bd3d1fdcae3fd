"""Every image file of a data set decoded once before training, so that a broken
file stops the run before its first step, named together with every other one.

:func:`verify_images` checks the files behind a data set of
:mod:`~mae_from_scratch.data`; :func:`bad_images_error` and
:func:`collate_as_list` also serve the on-device loader's own check
(:mod:`~mae_from_scratch.device_data`).
"""

from __future__ import annotations

import torch
from torchvision.datasets import ImageFolder

from .data import _Transformed
from .data_error import DataError


def image_files(ds) -> list[str] | None:
    """The file paths behind the items of ``ds`` (a :class:`~mae_from_scratch.data.ClassFolder`,
    possibly inside :class:`_Transformed` and ``Subset``), in item order; ``None`` for in-memory
    data sets."""
    indices = None
    while True:
        if isinstance(ds, torch.utils.data.Subset):
            idx = list(ds.indices)
            indices = idx if indices is None else [idx[i] for i in indices]
            ds = ds.dataset
        elif isinstance(ds, _Transformed):
            ds = ds.base
        else:
            break
    samples = getattr(ds, "samples", None)
    if not isinstance(ds, ImageFolder) or samples is None:
        return None
    paths = [p for p, _ in samples]
    return paths if indices is None else [paths[i] for i in indices]


def check_image(path: str) -> str | None:
    """Why the image file ``path`` cannot be read, or ``None`` if it decodes.  JPEGs are
    decoded at a reduced scale (every byte is still read), which is several times faster."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(img.width // 8, 1), max(img.height // 8, 1)))
            img.load()
    except Exception as e:  # PIL raises several types; the file name is what matters
        return f"{type(e).__name__}: {e}"
    return None


class _ImageCheck(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.paths[i], check_image(self.paths[i])


def collate_as_list(items):
    """A ``collate_fn`` that keeps a batch as the list of its items (picklable for workers)."""
    return items


def bad_images_error(bad: list[tuple[str, str]]) -> DataError:
    """One error naming every unreadable image file (``(path, why)`` pairs)."""
    listed = "; ".join(f"{p} ({why})" for p, why in bad)
    return DataError(f"{len(bad)} image file{'s' if len(bad) > 1 else ''} cannot be read: {listed}. "
                     "Remove or replace them, then run again")


def verify_images(ds, num_workers: int = 0, progress: bool = False) -> None:
    """Decode every image file of ``ds`` once and raise :class:`DataError` naming all the
    unreadable ones together, so a broken file stops the run before its first step
    rather than when its batch comes up.  In-memory data sets need no check."""
    paths = image_files(ds)
    if not paths:
        return
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(_ImageCheck(paths), batch_size=64, num_workers=num_workers,
                                         collate_fn=collate_as_list)
    bad = []
    for batch in tqdm(loader, desc="checking images", disable=not progress, ascii=True):
        bad.extend((p, why) for p, why in batch if why is not None)
    if bad:
        raise bad_images_error(bad)
