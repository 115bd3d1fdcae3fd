"""Images per second out of the pretraining data loaders, onto the training device.

Two paths are timed on the same data set, batch size and input size:

* ``pil``: a ``DataLoader`` over :class:`mae_from_scratch.data.MAEPretrainDataset`
  (PIL decode, torchvision's RandomResizedCrop and flip in ``--num_workers``
  worker processes);
* ``device``: :class:`mae_from_scratch.device_data.DeviceBatchLoader` (images
  decoded once into one uint8 tensor on the device, each batch cropped there);
  skipped with a message when it is not available or the data set cannot be
  held on the device.

Both are built by ``mae_from_scratch.pretrain_data.build_pretrain_data`` with
``--loader pil`` or ``--loader device``, exactly as training builds them.

Only the loader runs (batches are moved to the device and dropped), so each
figure is the most that training can consume.  The timing code is
:func:`mae_from_scratch.timing.loader_images_per_s`.

    python benchmarks/bench_loader.py                                  # offline photos, CPU
    python benchmarks/bench_loader.py --dataset cifar10 --data_path ../shared/data/cifar10-jpeg.tar.gz
    python benchmarks/bench_loader.py --device cuda --batch_size 1024 --num_workers 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mae_from_scratch import data as D
from mae_from_scratch.distributed import DistInfo
from mae_from_scratch.model import MODELS, create_model
from mae_from_scratch.pretrain_data import build_pretrain_data
from mae_from_scratch.timing import loader_images_per_s


def build_loader(args, kind: str, num_patches: int, device: torch.device):
    """The loader ``mae_from_scratch.pretrain`` builds with ``--loader kind``, the kind it
    really built, and the seconds building took (the device path decodes every image then)."""
    a = argparse.Namespace(**{"pin_mem": None, "no_progress": False, **vars(args), "loader": kind})
    t = time.perf_counter()
    data = build_pretrain_data(a, num_patches, DistInfo(), device)
    return data.loader, data.loader_name, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="photos", choices=D.DATASETS)
    p.add_argument("--data_path", default=None, help="ImageFolder root or a .tar/.tar.gz of one")
    p.add_argument("--model", default="mae_vit_tiny_patch4_32", choices=sorted(MODELS),
                   help="sets the input size and the number of patches")
    p.add_argument("--input_size", type=int, default=None, help="default: the model's")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, default=50, help="timed batches per path")
    p.add_argument("--warmup", type=int, default=4, help="untimed batches first (worker start-up, prefetch)")
    p.add_argument("--max_images", type=int, default=None, help="a random subset of this size")
    p.add_argument("--num_photos", type=int, default=4096, help="size of the offline photo-crop set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paths", nargs="+", default=["pil", "device"], choices=("pil", "device"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with torch.device("meta"):
        model = create_model(args.model, **({"img_size": args.input_size} if args.input_size else {}))
    args.input_size, num_patches = model.img_size, model.patch_embed.num_patches

    print(f"# torch {torch.__version__}, device {device}, dataset {args.dataset}, {args.input_size} px, "
          f"batch {args.batch_size}, {args.num_workers} workers, threads {torch.get_num_threads()}", flush=True)
    try:
        import mae_from_scratch.device_data  # noqa: F401
    except ImportError as e:
        if "device" in args.paths:
            print(f"# device: skipped, mae_from_scratch.device_data is not available ({e})", flush=True)
        args.paths = [k for k in args.paths if k != "device"]
    rows = {}
    # The batched path first: the PIL path's persistent workers would otherwise
    # still hold the cores while it is timed.
    for kind in sorted(args.paths):  # 'device' before 'pil'
        loader, built, build_s = build_loader(args, kind, num_patches, device)
        if built != kind:
            print(f"# {kind}: skipped, pretrain built the {built} loader instead", flush=True)
            continue
        rows[kind] = {"images_per_s": loader_images_per_s(loader, device, args.batches, args.warmup),
                      "build_s": round(build_s, 2)}
        del loader
    rows = {k: rows[k] for k in ("pil", "device") if k in rows}
    print(f"{'path':<8}{'img/s':>12}{'vs pil':>9}   note", flush=True)
    for name, r in rows.items():
        ratio = f"{r['images_per_s'] / rows['pil']['images_per_s']:.2f}x" if "pil" in rows else "-"
        note = f"built in {r['build_s']:.1f} s" + (" (every image decoded once)" if name == "device" else "")
        print(f"{name:<8}{r['images_per_s']:>12.1f}{ratio:>9}   {note}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
