"""Small real data sets for the engine tests, made in a temporary folder from the packaged photos."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mae_from_scratch.data import CIFAR10_CLASSES
from mae_from_scratch.photos import PhotoCrops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for a test module that imports this fixture: the runs compared
    bit for bit use the same kernels."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cifar_tar_path() -> Path:
    """The shared CIFAR-10 archive: $MAE_CIFAR10_TAR, else ../shared/data/cifar10-jpeg.tar.gz."""
    return Path(os.environ.get("MAE_CIFAR10_TAR", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def make_image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 4, size: int = 32,
                      splits=("train", "test"), seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: crops of the packaged photos, class ``c`` from photo ``c``.

    The photo-crop labels (which photo a crop came from) become the folder's
    classes, so a good encoder can tell them apart.
    """
    crops = PhotoCrops(num_images=400, size=size, seed=seed)
    by_label: dict[int, list] = {}
    for img, label in zip(crops.images, crops.targets):
        by_label.setdefault(label, []).append(img)
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            imgs = by_label[c % len(by_label)]
            for i in range(per_class):
                imgs[(s * per_class + i) % len(imgs)].save(d / f"{i:04d}.png")
    return root


def make_cifar_like_folder(root: Path, per_class: int = 2, size: int = 32) -> Path:
    """An ImageFolder tree with CIFAR-10's class folder names."""
    return make_image_folder(root, classes=CIFAR10_CLASSES, per_class=per_class, size=size)


def make_tar(tree: Path, out: Path, top: str) -> Path:
    """Pack ``tree`` into ``out`` (.tar.gz) under a single top folder ``top``."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname=top)
    return out


def write_unreadable_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a JPEG file")
    return path


__all__ = ["Image", "cifar_tar_path", "make_cifar_like_folder", "make_image_folder", "make_tar",
           "write_unreadable_image"]


def poison_loss_at_call(monkeypatch, pretrain_module, call: int = 5) -> None:
    """Make the model that ``pretrain`` builds return a NaN loss on its ``call``-th forward pass."""
    real_create = pretrain_module.create_model

    def create_poisoned(*a, **k):
        model = real_create(*a, **k)
        forward, calls = model.forward, [0]

        def poisoned(imgs, *fa, **fk):
            calls[0] += 1
            loss, pred, mask = forward(imgs, *fa, **fk)
            return (loss * float("nan") if calls[0] == call else loss), pred, mask

        model.forward = poisoned
        return model

    monkeypatch.setattr(pretrain_module, "create_model", create_poisoned)


def run_two_ranks(script_text: str, tmp_path: Path, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """``script_text`` as two gloo ranks under torchrun, its first argument ``tmp_path``, then ``args``;
    one thread per rank, so the two share the machine's cores.  Asserts that both ranks ended well."""
    script = tmp_path / "rank.py"
    script.write_text(script_text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r
