"""Data for pretraining and evaluation: data sets by name, transforms, and the
resumable sampler.

Everything here feeds :mod:`mae_from_scratch.pretrain` and
:mod:`mae_from_scratch.evaluate`.  The book's photographs (and the offline
``photos`` data set made of their crops) live in :mod:`mae_from_scratch.photos`,
the extraction of ``.tar``/``.tar.gz`` data in :mod:`mae_from_scratch.archives`,
the check of every image file before training in
:mod:`mae_from_scratch.image_check`, and :class:`DataError` in
:mod:`mae_from_scratch.data_error`.

Every data set and transform is a module-level class, with no lambdas or
closures inside, so that data-loader workers started by ``spawn`` (the default
on macOS and Windows) can receive them by pickling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from .archives import archive_root, data_cache_dir, is_archive
from .data_error import DataError
from .photos import IMAGENET_MEAN, IMAGENET_STD, PhotoCrops

# ==================================================================================
# Data sets for pretraining and evaluation
#
# Everything below feeds :mod:`mae_from_scratch.pretrain` and
# :mod:`mae_from_scratch.evaluate`.  A data set is chosen by name:
#
# ``photos``       offline default: random crops of the photographs shipped in
#                  installed packages (no download, no data directory)
# ``cifar10``      torchvision download, a local torchvision root, an ImageFolder
#                  tree or a .tar/.tar.gz of one (e.g. cifar10-jpeg.tar.gz)
# ``stl10``        torchvision download or a local torchvision root / ImageFolder
# ``imagefolder``  any ImageFolder tree ROOT/{train,val|test}/<class>/<image>,
#                  or a .tar/.tar.gz of one
#
# Normalization statistics belong to the data set; pretraining stores the ones
# it used in the checkpoint so that evaluation and pictures reuse them.
# ==================================================================================

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)

# torchvision's CIFAR-10 label order, which every way of reading CIFAR-10 here keeps.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)

DATASETS = ("photos", "cifar10", "stl10", "imagefolder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetInfo:
    """What belongs to a data set rather than to a run: statistics and class names."""

    name: str
    mean: tuple
    std: tuple
    classes: tuple | None = None


def dataset_info(name: str) -> DatasetInfo:
    """Normalization statistics (and fixed class order, if any) of a named data set."""
    if name == "cifar10":
        return DatasetInfo(name, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES)
    if name == "stl10":
        return DatasetInfo(name, STL10_MEAN, STL10_STD, STL10_CLASSES)
    if name in ("imagefolder", "photos"):
        # ImageNet's statistics: the usual choice for photographs, and what the
        # official checkpoints expect.
        return DatasetInfo(name, IMAGENET_MEAN, IMAGENET_STD, None)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


# ----------------------------------------------------------------------------------
# Transforms
def pretrain_transform(input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The official pretraining augmentation: a random resized crop covering 20-100%
    of the image (bicubic), a horizontal flip, then normalization.  PIL -> ``(3, s, s)``."""
    return T.Compose([
        T.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 1.0):
    """No augmentation: resize the shorter side to ``input_size / crop_pct`` (bicubic),
    centre crop ``input_size``, normalize.  ``crop_pct=0.875`` is ImageNet's 256 -> 224;
    small data sets (CIFAR-10 at 32 px) use the whole image (``crop_pct=1``)."""
    return T.Compose([
        T.Resize(int(round(input_size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(input_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# ----------------------------------------------------------------------------------
# Randomness as a function of (seed, epoch, sample index)
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, index)``.

    Augmentation and mask noise are drawn from it, so a sample looks the same
    whichever worker process, rank or batch it lands in, and a resumed run
    replays exactly what an uninterrupted run would have seen.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class MAEPretrainDataset(torch.utils.data.Dataset):
    """Wraps an image data set for pretraining: item ``(epoch, index)`` ->
    ``(image (3, s, s), noise (L,))``.

    The augmentation runs under a torch seed made from ``(seed, epoch, index)``
    (the global generator is saved and restored around it) and the mask noise
    comes from its own generator with the same seed.  Labels are dropped: MAE
    never sees them.  A plain integer key means epoch 0.
    """

    def __init__(self, base, transform, num_patches: int, seed: int = 0):
        self.base = base
        self.transform = transform
        self.num_patches = num_patches
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        img = self.base[index][0]
        s = sample_seed(self.seed, epoch, index)
        # torchvision's random transforms draw from torch's default CPU generator:
        # reseed it for this sample, then put its state back (cheaper than fork_rng).
        g = torch.default_generator
        state = g.get_state()
        g.manual_seed(s)
        try:
            img = self.transform(img)
        finally:
            g.set_state(state)
        noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(s))
        return img, noise


class ResumableSampler(DistributedSampler):
    """The sampler of :class:`MAEPretrainDataset`: its items are the ``(epoch, index)``
    keys that data set reads, and it can start part-way into an epoch.

    The order is DistributedSampler's (a permutation seeded by ``seed + epoch``,
    rank ``r`` taking every ``world_size``-th index from ``r``).  Handing the epoch
    to the data set with each index keeps per-sample randomness right in
    persistent loader workers, which never see ``set_epoch``.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Next iteration yields ``epoch``'s indices from the ``start``-th on (for this rank)."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


# ----------------------------------------------------------------------------------
# ImageFolder with clear errors and, optionally, a fixed class order
def _pil_loader(path: str):
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types; the file name is what matters
        err = DataError(f"cannot read image {path}: {type(e).__name__}: {e}")
        err.path, err.why = path, f"{type(e).__name__}: {e}"
        raise err from e


class ClassFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` on ``root/<class>/<image>`` that names the
    file it cannot read and, given ``classes``, uses that label order.

    With ``classes`` every listed class must have a folder (other folders are
    ignored).  With ``classes`` and ``partial=True`` (a test split labelled with its
    train split's classes) a class may have no folder (``missing_classes`` lists
    them), and a folder the list lacks is refused: its images would have no label.
    Build it through :func:`image_folder`, which checks the folder first.
    """

    def __init__(self, root, classes=None, partial: bool = False):
        # Set before ImageFolder's constructor, which calls find_classes.
        self.fixed_classes = None if classes is None else tuple(classes)
        self.partial = partial
        self.missing_classes: list[str] = []
        super().__init__(str(root), loader=_pil_loader, allow_empty=partial)

    def find_classes(self, directory):
        if self.fixed_classes is None:
            return super().find_classes(directory)
        present = {p.name for p in Path(directory).iterdir() if p.is_dir() and not p.name.startswith(".")}
        missing = [c for c in self.fixed_classes if c not in present]
        if self.partial:
            extra = sorted(present - set(self.fixed_classes))
            if extra:
                raise DataError(f"{directory} has class folders the train split lacks: {extra}; labels follow "
                                f"the train split's classes {list(self.fixed_classes)}, so remove or rename "
                                "these folders")
            self.missing_classes = missing
        elif missing:
            raise DataError(f"{directory} lacks the class folders {missing} (expected {list(self.fixed_classes)})")
        return list(self.fixed_classes), {c: i for i, c in enumerate(self.fixed_classes)}


def image_folder(root, classes=None, partial: bool = False) -> ClassFolder:
    """A :class:`ClassFolder` on ``root/<class>/<image>``.

    ``classes`` fixes the label order (e.g. CIFAR-10's, or a test split's train
    classes with ``partial=True``).  Raises :class:`DataError` naming the path for a
    missing or empty folder or a missing (or, with ``partial``, an extra) class
    folder; an unreadable image raises when it is loaded, naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        raise DataError(
            f"{root} has no class folders; ImageFolder expects {root}/<class>/<image>"
            " (put images in at least one subfolder)"
        )
    try:
        folder = ClassFolder(root, classes, partial)
    except FileNotFoundError as e:
        raise DataError(
            f"no images in {root}: its class folders hold no files with an image extension {IMAGE_EXTENSIONS} ({e})"
        ) from e
    if not folder.samples:
        raise DataError(f"no images in {root}: its class folders hold no files with an image extension "
                        f"{IMAGE_EXTENSIONS}")
    return folder


def _split_dir(root: Path, split: str, source=None) -> Path:
    """ROOT/train for training; ROOT/val, else ROOT/test, for evaluation (as the official code).

    ``source`` names where ``root`` came from (an archive) in the error message."""
    if split == "train":
        names = ["train"]
    else:
        names = ["val", "test"]
    for n in names:
        if (root / n).is_dir():
            return root / n
    where = f"the archive {source} (extracted to {root})" if source is not None else str(root)
    has = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    role = "training" if split == "train" else "evaluation"
    raise DataError(
        f"{where} has no {' or '.join(names)} folder for the {role} split "
        f"(it holds {', '.join(has) if has else 'no folders'}); expected the layout "
        f"ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or test/)"
    )


def _resolve_root(data_path) -> Path:
    path = Path(data_path).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file():
        if not is_archive(path):
            raise DataError(f"{path} is a file but not a .tar/.tar.gz archive of an ImageFolder tree")
        return archive_root(path)
    return path


def _download_error(name: str, e: Exception) -> DataError:
    return DataError(
        f"could not download {name} ({type(e).__name__}: {e}). Downloading needs internet; "
        f"without it, point --data_path at a local copy: a torchvision root that holds the "
        f"extracted {name} files, an ImageFolder tree ROOT/train/<class>/..., or a .tar/.tar.gz of one"
    )


def build_dataset(name: str, split: str, data_path=None, transform=None, num_photos: int = 4096,
                  photo_size: int = 64, classes=None, labelled: bool = False):
    """The raw data set (items ``(PIL image or transformed tensor, label)``).

    Args:
        name: one of :data:`DATASETS`.
        split: ``'train'`` or ``'test'`` (``'test'`` reads ROOT/val or ROOT/test).
        data_path: a directory or an archive; ``None`` downloads (cifar10, stl10)
            or generates (photos).
        transform: applied to the PIL image; ``None`` returns the PIL image.
        num_photos, photo_size: the number and side of the training crops of
            ``photos`` (its test split has a quarter as many).
        classes: the train split's classes, to label a test split read from an
            ImageFolder tree with the same class -> index map (a class may lack a
            test folder; a test folder of another class is refused).
        labelled: labelled images only (evaluation): STL-10's ``train`` split, not the
            ``train+unlabeled`` that pretraining reads, whose 100,000 extra images have label -1.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    info = dataset_info(name)
    if name == "photos":
        # Test crops come from a held-out strip of each photo, disjoint from every training crop.
        ds = PhotoCrops(num_photos if split == "train" else max(num_photos // 4, 1), size=photo_size,
                        seed=0 if split == "train" else 1, split=split)
        return _Transformed(ds, transform)

    if name in ("cifar10", "stl10"):
        from torchvision import datasets as tvd

        root = None if data_path is None else _resolve_root(data_path)
        if root is not None and (root / "train").is_dir():
            source = data_path if is_archive(data_path) and Path(data_path).is_file() else None
            folder = image_folder(_split_dir(root, split, source), classes or info.classes,
                                  partial=classes is not None)
            return _Transformed(folder, transform)
        download_root = root if root is not None else data_cache_dir() / name
        try:
            if name == "cifar10":
                ds = tvd.CIFAR10(str(download_root), train=split == "train", transform=transform,
                                 download=root is None)
            else:
                stl_split = "test" if split == "test" else "train" if labelled else "train+unlabeled"
                ds = tvd.STL10(str(download_root), split=stl_split, transform=transform, download=root is None)
        except RuntimeError as e:
            if root is not None:  # torchvision: "Dataset not found or corrupted"
                raise DataError(
                    f"{root} is neither a torchvision {name} root nor an ImageFolder tree with a train/ folder ({e})"
                ) from e
            raise _download_error(name, e) from e
        except OSError as e:  # URLError, connection errors
            raise _download_error(name, e) from e
        return ds

    if name == "imagefolder":
        if data_path is None:
            raise DataError("--dataset imagefolder needs --data_path ROOT (with ROOT/train/<class>/<image>)")
        root = _resolve_root(data_path)
        source = data_path if is_archive(data_path) and Path(data_path).is_file() else None
        folder = image_folder(_split_dir(root, split, source), classes, partial=classes is not None)
        return _Transformed(folder, transform)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


@dataclass(frozen=True)
class DataChoice:
    """Which data a notebook's live cells read, and a sentence saying so."""

    dataset: str
    data_path: str | None
    source: str


SHARED_CIFAR10 = Path("shared") / "data" / "cifar10-jpeg.tar.gz"


def locate_cifar10(download: bool = True, search_from=None, timeout_s: float = 30.0) -> DataChoice:
    """CIFAR-10 for the live cells, from the first of these that works:

    1. the archive named by ``$MAE_CIFAR10_TAR`` (an ImageFolder ``.tar.gz``);
    2. ``shared/data/cifar10-jpeg.tar.gz`` beside this folder or one of its parents
       (where the book is built);
    3. torchvision's download (``download=True`` and a network);
    4. else the offline photo crops (:mod:`~mae_from_scratch.photos`), held-out strip as test split.
    """
    env = os.environ.get("MAE_CIFAR10_TAR")
    if env and Path(env).is_file():
        return DataChoice("cifar10", env, f"CIFAR-10 from the archive named by MAE_CIFAR10_TAR ({env})")
    here = Path(search_from or Path.cwd()).resolve()
    for folder in [here, *here.parents][:5]:
        candidate = folder / SHARED_CIFAR10
        if candidate.is_file():
            return DataChoice("cifar10", str(candidate), f"CIFAR-10 from the local archive {candidate}")
    if download:
        import socket

        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)  # no network: fail in seconds, not hang
        try:
            for split in ("train", "test"):
                build_dataset("cifar10", split)
            return DataChoice("cifar10", None, f"CIFAR-10 from torchvision's download (in {data_cache_dir()})")
        except DataError:
            pass
        finally:
            socket.setdefaulttimeout(old)
    return DataChoice("photos", None, "no CIFAR-10 here (no archive, no network): crops of the package's "
                                      "photographs, tested on the held-out strip of each photo")


class _Transformed(torch.utils.data.Dataset):
    """Apply ``transform`` to the image of ``(image, label)`` items (or pass through)."""

    def __init__(self, base, transform=None):
        self.base = base
        self.transform = transform
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        return (img if self.transform is None else self.transform(img)), label


def subset(ds, n: int | None, seed: int = 0):
    """The first ``n`` items of a seeded permutation of ``ds`` (all of it when ``n`` is None)."""
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.utils.data.Subset(ds, idx)
