"""MAE pretraining: ``python -m mae_from_scratch.pretrain`` and :func:`pretrain`.

The flags are the official ones (``--model --input_size --batch_size --accum_iter
--epochs --mask_ratio --norm_pix_loss --weight_decay --blr --lr --min_lr
--warmup_epochs --data_path --output_dir --resume --seed --device --num_workers``)
plus ``--preset``, ``--dataset``, ``--precision``, ``--save_every_steps``,
``--auto_resume``, ``--overwrite``, ``--max_images``, ``--max_steps`` and ``--mount_drive``.

Every flag, the output folder and the checkpoint to resume from are checked
before any data is loaded or anything is written; a bad one stops the run with
one line naming the cause (:class:`~mae_from_scratch.cli_checks.InputError`).  An output folder that
holds a run is continued (``--auto_resume``) or replaced (``--overwrite``), never
silently mixed with a new run, and a lock file (``.lock``, the owner's pid and
host) keeps a second run out of it while the first is running.

Examples::

    python -m mae_from_scratch.pretrain --preset cpu_smoke --output_dir runs/smoke
    python -m mae_from_scratch.pretrain --preset colab_t4_cifar10 --output_dir runs/t4
    torchrun --nproc_per_node 8 -m mae_from_scratch.pretrain --preset gpu_imagenet_base \
        --data_path /data/imagenet --output_dir runs/base

From Python (a notebook)::

    from mae_from_scratch.pretrain import pretrain
    result = pretrain(preset="cpu_smoke", output_dir="runs/smoke")
    result.model, result.log_path

Exact resume: all randomness is a function of ``(seed, epoch, sample index)``
(augmentation and mask noise are drawn per sample, see
:class:`~mae_from_scratch.data.MAEPretrainDataset`; the shuffle is a function of
``(seed, epoch)``), and a checkpoint stores the position inside the epoch.  So
on a CPU a run that is killed and resumed ends with exactly the weights of a
run that was not, whatever the number of data-loader workers.  A resume keeps
the ``--seed``, ``--loader`` and ``--max_images`` of the run it continues: left
out, they come from the checkpoint; given with another value, they are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import data as D
from .cli_checks import (
    InputError, OneLineParser, check_device, check_number, check_whole, one_line, refuse,
)
from .checkpoint import (
    CheckpointMismatchError, load_training_checkpoint, process_alive, remove_stale_temporaries, save_atomic,
    training_checkpoint,
)
from .device_data import DeviceBatchLoader, NotUniformError, decode_images, first_image_nbytes, fits_on_device
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from .engine import EpochMeter, StepInfo, compile_model, train_one_epoch
from .train_step import NonFiniteLossError
from .masking import num_kept
from .metrics import EPOCH_LOG, STEP_LOG, MetricsWriter
from .model import MODELS, create_model
from .optim import build_optimizer, effective_lr, lr_at
from .precision import PRECISIONS, choose_precision
from .presets import PRESETS, describe, get_preset
from .run_record import RUN_RECORD, RunRecord, data_record
from .snapshots import RECON_DIR, fixed_noise, heldout_images, reconstruction_rows, save_grid, snapshot_path

LAST_CHECKPOINT = "checkpoint-last.pth"
LOADERS = ("auto", "device", "pil")
LOCK_FILE = ".lock"


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser("MAE pre-training", add_help=True,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      epilog="presets:\n" + describe())
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="start from a named recipe; flags given here override it")
    p.add_argument("--batch_size", default=64, type=int, help="images per process per iteration")
    p.add_argument("--epochs", default=400, type=int)
    p.add_argument("--accum_iter", default=1, type=int,
                   help="accumulate gradients over this many iterations (larger effective batch)")

    # Model
    p.add_argument("--model", default="mae_vit_tiny_patch4_32", choices=sorted(MODELS))
    p.add_argument("--input_size", default=None, type=int, help="image size (default: the model's)")
    p.add_argument("--mask_ratio", default=0.75, type=float, help="share of patches removed")
    p.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalized pixels as targets")
    p.add_argument("--no_norm_pix_loss", action="store_false", dest="norm_pix_loss")

    # Optimizer
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=None, help="absolute lr (default: blr * effective batch / 256)")
    p.add_argument("--blr", type=float, default=1e-3, help="base lr: lr = blr * effective batch / 256")
    p.add_argument("--min_lr", type=float, default=0.0, help="lower bound of the cosine schedule")
    p.add_argument("--warmup_epochs", type=float, default=40)
    p.add_argument("--clip_grad", type=float, default=None, help="clip the gradient norm (off by default)")

    # Data
    p.add_argument("--dataset", default="auto", choices=("auto",) + D.DATASETS,
                   help="auto: imagefolder when --data_path is given, else the offline photos")
    p.add_argument("--data_path", default=None,
                   help="ImageFolder ROOT (reads ROOT/train), a .tar/.tar.gz of one, or a torchvision root")
    p.add_argument("--max_images", default=None, type=int, help="train on a fixed random subset of this size")
    p.add_argument("--num_photos", default=4096, type=int, help="size of the offline photo-crop set")
    p.add_argument("--num_workers", default=2, type=int)
    p.add_argument("--loader", default="auto", choices=LOADERS,
                   help="device: decode the images once, hold them on the training device and augment "
                        "whole batches there (bilinear crops); pil: decode and crop every image with PIL "
                        "in loader workers (bicubic, the official path); auto: device when the images all "
                        "have one size and fit in a quarter of the device's memory, else pil")
    p.add_argument("--pin_mem", action="store_true", default=None, help="pin loader memory (default: on CUDA)")
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")

    # Run
    p.add_argument("--output_dir", default="./output_dir", help="checkpoints and logs ('' to save nothing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true",
                   help="compile the model with torch.compile (GPU presets; the first steps wait for it)")
    p.add_argument("--no_compile", action="store_false", dest="compile")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 on compute capability >= 8, fp16 + GradScaler on older GPUs, fp32 on CPU")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--resume", default="", help="checkpoint file to continue from")
    p.add_argument("--auto_resume", action="store_true",
                   help=f"continue from OUTPUT_DIR/{LAST_CHECKPOINT} if it exists")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUTPUT_DIR that holds a run (its checkpoints and logs are replaced)")
    p.add_argument("--save_every_steps", default=0, type=int,
                   help=f"also write {LAST_CHECKPOINT} every N optimizer steps (0: only at epoch ends)")
    p.add_argument("--save_freq", default=20, type=int, help="keep checkpoint-EPOCH.pth every N epochs")
    p.add_argument("--max_steps", default=None, type=int,
                   help="stop after this many optimizer steps in all (the schedule is unchanged)")
    p.add_argument("--mount_drive", action="store_true",
                   help="Colab only: mount Google Drive at /content/drive first (put --output_dir there)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--recon_every", default=0, type=int,
                   help="every N epochs (and before the first) save OUTPUT_DIR/recon/epoch-NNNN.png: the same "
                        "held-out test images reconstructed under the same mask (0: never)")
    p.add_argument("--recon_images", default=8, type=int, help="how many held-out images those pictures show")
    return p


def _parse(argv=None, **overrides) -> argparse.Namespace:
    """Parse ``argv`` on top of the preset's values; ``overrides`` win over both."""
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv if argv is not None else [])
    preset = overrides.get("preset", pre.preset)
    if preset:
        parser.set_defaults(**get_preset(preset).args)
    args = parser.parse_args(argv if argv is not None else [])
    unknown = [k for k in overrides if not hasattr(args, k)]
    if unknown:
        raise TypeError(f"unknown pretraining option(s) {unknown}; see get_args_parser()")
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


# ----------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: torch.nn.Module  # the trained MaskedAutoencoderViT (unwrapped, on its device)
    log_path: Path | None  # log.txt (per epoch); log_steps.jsonl sits beside it
    checkpoint: Path | None  # the last checkpoint written
    epoch_log: list  # the per-epoch metrics of this process's run


def _mount_drive_if_asked(args) -> None:
    if args.mount_drive:
        try:
            from google.colab import drive  # type: ignore[import-not-found]
        except ImportError:
            refuse("--mount_drive only works inside Google Colab; leave it out elsewhere")
        drive.mount("/content/drive")
    if args.output_dir and str(args.output_dir).startswith("/content/drive") and not os.path.isdir("/content/drive"):
        refuse(f"--output_dir {args.output_dir} is on Google Drive, which is not mounted; "
               "add --mount_drive (or run `from google.colab import drive; drive.mount('/content/drive')`)")


def resolve_dataset(args) -> str:
    return args.dataset if args.dataset != "auto" else ("imagefolder" if args.data_path else "photos")


# ----------------------------------------------------------------------------------
# Checks made before anything is loaded or written
def check_args(args) -> None:
    """Refuse every flag value that is out of range, before anything is loaded or written.

    An explicit value is never replaced by a default: ``--epochs 0`` or
    ``--input_size 0`` are errors, not "use the default".
    """
    if args.model not in MODELS:
        refuse(f"--model {args.model!r} is not a model; choose one of {sorted(MODELS)}")
    check_whole("epochs", args.epochs, 1)
    check_whole("batch_size", args.batch_size, 1)
    check_whole("accum_iter", args.accum_iter, 1)
    check_whole("num_workers", args.num_workers, 0)
    check_whole("num_photos", args.num_photos, 1)
    check_whole("save_freq", args.save_freq, 1, hint="checkpoint-EPOCH.pth is kept every SAVE_FREQ epochs")
    check_whole("save_every_steps", args.save_every_steps, 0, hint=f"0 writes {LAST_CHECKPOINT} only at epoch ends")
    check_whole("max_images", args.max_images, 1, optional=True, hint="leave it out to train on every image")
    check_whole("max_steps", args.max_steps, 1, optional=True, hint="leave it out to train every epoch")
    check_whole("seed", args.seed, 0)
    check_whole("recon_every", getattr(args, "recon_every", 0), 0, hint="0 saves no reconstruction pictures")
    check_whole("recon_images", getattr(args, "recon_images", 8), 1)
    with torch.device("meta"):  # the configuration only
        cfg = create_model(args.model).config
    if args.input_size is not None:
        if isinstance(args.input_size, bool) or not isinstance(args.input_size, int) or args.input_size < 1:
            refuse(f"--input_size must be a positive number of pixels, got {args.input_size!r}; "
                   f"{args.model} is built for {cfg.img_size} (leave it out for that)")
        if args.input_size % cfg.patch_size:
            refuse(f"--input_size {args.input_size} is not divisible by the patch size {cfg.patch_size} of "
                   f"{args.model}; use a multiple of {cfg.patch_size}, e.g. {cfg.img_size}")
    size = args.input_size if args.input_size is not None else cfg.img_size
    num_patches = (size // cfg.patch_size) ** 2
    try:
        keep = num_kept(num_patches, args.mask_ratio)
    except (ValueError, TypeError) as e:
        refuse(f"--mask_ratio: {e}")
    if keep >= num_patches:
        refuse(f"--mask_ratio {args.mask_ratio} removes no patch out of {num_patches}; MAE needs removed "
               f"patches to learn from (the recipe uses 0.75)")
    check_number("blr", args.blr, example="1e-3")
    if args.lr is not None:
        check_number("lr", args.lr, example="1.5e-4")
    check_number("min_lr", args.min_lr)
    check_number("warmup_epochs", args.warmup_epochs)
    check_number("weight_decay", args.weight_decay, example="0.05")
    if args.clip_grad is not None:
        check_number("clip_grad", args.clip_grad, strict=True, example="1.0")
    if args.data_path is not None and not str(args.data_path).strip():
        refuse("--data_path is empty; give an ImageFolder ROOT or a .tar/.tar.gz of one, "
               "or leave --data_path out to train on the offline photos")
    if getattr(args, "loader", "auto") not in LOADERS:
        refuse(f"--loader must be one of {LOADERS}, got {args.loader!r}")
    if args.resume and args.overwrite:
        refuse("--resume and --overwrite contradict each other; give one of them")


def check_output_dir(out: Path | None) -> None:
    """Refuse an output folder that is a file, sits under a file or cannot be written."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        refuse(f"--output_dir {out} is a file, not a folder; choose another --output_dir")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent != out and parent.exists() and not parent.is_dir():
        refuse(f"--output_dir {out} cannot be made: {parent} is a file; choose another --output_dir")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        refuse(f"--output_dir {out} cannot be written ({parent} is not writable); choose another --output_dir")


def _holds_run(out: Path | None) -> bool:
    return out is not None and out.is_dir() and any((out / n).is_file() for n in (LAST_CHECKPOINT, EPOCH_LOG))


def check_not_overwriting(args, out: Path | None) -> None:
    """A folder that holds a run is continued (--auto_resume, --resume) or explicitly replaced (--overwrite)."""
    if not _holds_run(out) or args.auto_resume or args.resume or args.overwrite:
        return
    what = f"{LAST_CHECKPOINT}" if (out / LAST_CHECKPOINT).is_file() else EPOCH_LOG
    refuse(f"--output_dir {out} already holds a run ({what}); continue it with --auto_resume, "
           "start over with --overwrite, or choose another --output_dir")


class OutputLock:
    """An exclusive lock on an output folder: the file ``.lock`` (created with O_EXCL)
    holding the owner's pid and host.  A lock left by a dead process on this host is
    taken over; a live one makes the second run refuse, naming the first."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        host, me = socket.gethostname(), {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:  # removed in between
                    continue
                if owner is None:  # unreadable: a lock being written, or cut short by a kill
                    try:
                        age = time.time() - self.path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age < 10:
                        refuse(f"--output_dir {self.folder} is locked by another run ({self.path} is being "
                               "written); wait for it, or choose another --output_dir")
                elif owner.get("host") != host or process_alive(int(owner.get("pid", -1))):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
                    refuse(f"--output_dir {self.folder} is in use by another run (pid {owner.get('pid')} on host "
                           f"{owner.get('host')}, since {since}); wait for it to finish or choose another "
                           f"--output_dir (if that run is gone, delete {self.path})")
                try:  # stale: its process is gone
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        refuse(f"could not lock --output_dir {self.folder}: {self.path} keeps reappearing")

    def release(self) -> None:
        if self.held:
            self.held = False
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass


def _clear_old_run(out: Path, checkpoints: bool) -> None:
    """Starting over: the old run's logs go (and with ``checkpoints``, for --overwrite, its
    checkpoints), so nothing of it mixes with the new run."""
    for p in sorted((out / RECON_DIR).glob("epoch-*.png")) if (out / RECON_DIR).is_dir() else []:
        p.unlink()
    for p in out.iterdir():
        if p.name in (EPOCH_LOG, STEP_LOG, RUN_RECORD) or (checkpoints and re.fullmatch(r"checkpoint-(last|\d+)\.pth", p.name)):
            p.unlink()


def _model_of(ckpt: dict) -> str:
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    name = saved.get("model")
    cfg = ckpt.get("model_config")
    if isinstance(cfg, dict):
        size = ", ".join(f"{k}={cfg[k]}" for k in ("img_size", "patch_size", "embed_dim", "depth") if k in cfg)
        return f"{name or 'a model'} ({size})"
    return str(name) if name else "weights of another model"


# What a resumed run takes from its checkpoint unless asked otherwise: the seed and the loader fix
# the shuffle, the augmentation and the masks, and max_images the training images.
KEPT_ON_RESUME = {"seed": "shuffle, augmentation and masks", "loader": "augmentation",
                  "max_images": "training images"}


def _given(args, argv, kwargs) -> set:
    """Which of :data:`KEPT_ON_RESUME` this call asked for explicitly: with ``argv`` or
    keywords, the flags and keywords given; with a namespace parsed elsewhere, the values
    that differ from the defaults (of its preset)."""
    if args is None:
        unset = object()  # argparse keeps an attribute the namespace already has unless its flag is given
        asked = argparse.Namespace(**{name: unset for name in KEPT_ON_RESUME})
        get_args_parser().parse_args(argv or [], namespace=asked)
        return {name for name in KEPT_ON_RESUME if name in kwargs or getattr(asked, name) is not unset}
    defaults = _parse([], preset=getattr(args, "preset", None))
    return {name for name in KEPT_ON_RESUME if name in kwargs or getattr(args, name, None) != getattr(defaults, name)}


def _show(name: str, value) -> str:
    return "every image (no --max_images)" if name == "max_images" and value is None else f"--{name} {value}"


def _keep_the_run(path: str, args, saved: dict, given: set, auto: bool) -> None:
    """A resume continues the run it resumes: the checkpoint's seed, loader and image subset
    replace those not asked for, and one asked for that differs is refused.  ``--loader
    auto`` asks for no loader in particular; the checkpoint holds the one auto chose."""
    for name, what in KEPT_ON_RESUME.items():
        if name not in saved or (name == "loader" and saved[name] not in LOADERS[1:]):
            continue  # written before it was saved (or before the loader was resolved)
        mine, theirs = getattr(args, name, None), saved[name]
        if mine == theirs:
            continue
        if name in given and not (name == "loader" and mine == "auto"):
            keep = f"leave --{name} out" + (f" (or give {_show(name, theirs)})" if theirs is not None else "")
            new = "choose another --output_dir for a new run" if auto else "drop --resume to start a new run"
            refuse(f"{path} was trained with {_show(name, theirs)}, but {_show(name, mine)} was asked for, which "
                   f"would change the run's {what}; {keep} to continue it, or {new}")
        setattr(args, name, theirs)


def read_resume_checkpoint(path: str, args, auto: bool, given: set | None = None) -> dict:
    """The checkpoint to continue from, checked to be a training checkpoint of the model asked for.

    The run's seed, loader and ``max_images`` come from it unless ``given`` names them
    (``None``: all were given), see :func:`_keep_the_run`.
    """
    ckpt = load_training_checkpoint(path)  # refuses unreadable and weights-only files
    for key in ("optimizer", "epoch", "args", "rng"):
        if key not in ckpt:
            refuse(f"{path} is not a checkpoint of this pretraining code (no {key!r} entry), so it cannot be "
                   "resumed; load its weights with mae_from_scratch.load_official_checkpoint instead")
    saved = ckpt["args"] if isinstance(ckpt["args"], dict) else {}
    if saved.get("model") not in (None, args.model):
        flag = "" if auto else " (or drop --resume to start a new run)"
        refuse(f"{path} holds {_model_of(ckpt)} but --model {args.model} was asked for; resume with --model "
               f"{saved.get('model')}{flag}")
    _keep_the_run(path, args, saved, set(KEPT_ON_RESUME) if given is None else given, auto)
    return ckpt


def _data_path_from_checkpoint(args, ckpt: dict) -> bool:
    """A resumed run without --data_path reads the data its checkpoint was trained on
    (whether it did is returned)."""
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    if args.data_path is None and args.dataset == "auto" and saved.get("data_path"):
        args.data_path = saved["data_path"]
        args.dataset = saved.get("dataset", "auto") if saved.get("dataset") in D.DATASETS else "auto"
        return True
    return False


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
                               progress=dist_info.is_main and not getattr(args, "no_progress", False))
    except NotUniformError as e:
        return decline(str(e))
    return images.to(device)


def build_pretrain_data(args, num_patches: int, dist_info: DistInfo, pin_memory: bool,
                        device: torch.device | str = "cpu", resumed_from: str | None = None):
    """The pretraining data set, its sampler and loader (batches ``(imgs, noise)``).

    With the device loader the data set is a :class:`~mae_from_scratch.device_data.DeviceImages`
    and the loader a :class:`~mae_from_scratch.device_data.DeviceBatchLoader`; with the PIL
    loader, a :class:`~mae_from_scratch.data.MAEPretrainDataset` and a ``DataLoader``.
    ``args.loader`` is set to the loader used.  ``resumed_from``: the checkpoint of a run
    trained with the device loader, which this one continues.
    """
    name = resolve_dataset(args)
    info = D.dataset_info(name)
    base = D.build_dataset(name, "train", args.data_path, transform=None, num_photos=args.num_photos,
                           photo_size=max(64, args.input_size))
    base = D.subset(base, args.max_images, seed=args.seed)
    requested = getattr(args, "loader", "auto")  # checked by check_args
    if requested != "pil":
        images = _images_on_device(base, args, device, dist_info, required=requested == "device",
                                   resumed_from=resumed_from)
        if images is not None:
            sampler = D.ResumableSampler(images, dist_info.world_size, dist_info.rank, seed=args.seed)
            loader = DeviceBatchLoader(images, sampler, args.batch_size, args.input_size, info.mean, info.std,
                                       num_patches, seed=args.seed)
            args.loader = "device"
            return images, sampler, loader, info
    args.loader = "pil"
    # Every image file decoded once now, so a broken one stops the run before its first step.
    # One process checks for all: under torchrun, its error ends the other ranks too.
    if dist_info.is_main:
        D.verify_images(base, num_workers=args.num_workers, progress=not getattr(args, "no_progress", False))
    dataset = D.MAEPretrainDataset(base, D.pretrain_transform(args.input_size, info.mean, info.std),
                                   num_patches, seed=args.seed)
    sampler = D.ResumableSampler(dataset, dist_info.world_size, dist_info.rank, seed=args.seed)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
        num_workers=args.num_workers, pin_memory=pin_memory, persistent_workers=args.num_workers > 0,
        # The loader's own generator only seeds worker processes; our randomness is per sample.
        generator=torch.Generator().manual_seed(args.seed),
    )
    return dataset, sampler, loader, info


def _command_line(argv, kwargs) -> str:
    """How this run was asked for, as a user would type it (for run.json)."""
    if argv is not None:
        return shlex.join(["python", "-m", "mae_from_scratch.pretrain", *map(str, argv)])
    return "pretrain(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def pretrain(args: argparse.Namespace | None = None, argv: list[str] | None = None, *,
             command: str | None = None, **kwargs) -> PretrainResult:
    """Pretrain an MAE; returns the model, the output folder and the metrics log path.

    Give either a parsed ``args`` namespace (from :func:`get_args_parser`), or
    command-line style ``argv``, or keywords named like the flags, e.g.
    ``pretrain(preset="cpu_smoke", output_dir="runs/smoke", epochs=3)``.
    """
    if command is None:
        command = _command_line(argv, kwargs) if args is None else "pretrain(args)"
    given = _given(args, argv, kwargs)
    if args is None:
        args = _parse(argv, **kwargs)
    elif kwargs:
        args = argparse.Namespace(**{**vars(args), **kwargs})
    for name, default in (("overwrite", False), ("loader", "auto"), ("recon_every", 0), ("recon_images", 8)):
        if not hasattr(args, name):
            setattr(args, name, default)
    # Every check that can refuse the run comes first: nothing is loaded or written before it.
    check_args(args)
    _mount_drive_if_asked(args)
    check_device(args.device, purpose="pretraining")
    out = Path(args.output_dir) if args.output_dir else None
    check_output_dir(out)
    check_not_overwriting(args, out)
    resume = args.resume
    if not resume and args.auto_resume and out is not None and (out / LAST_CHECKPOINT).is_file():
        resume = str(out / LAST_CHECKPOINT)
    ckpt = read_resume_checkpoint(resume, args, auto=not args.resume, given=given) if resume else None

    lock, made = None, False
    if out is not None and os.environ.get("RANK", "0") == "0":  # only the main process locks
        made = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(out)
    try:
        if lock is not None:
            lock.acquire()
            remove_stale_temporaries(out)
        dist_info, device = init_distributed(args.device)
        try:
            return _pretrain(args, dist_info, device, ckpt, resume, command)
        finally:
            cleanup_distributed()
    finally:
        if lock is not None:
            lock.release()
            if made and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a refused run leaves no empty folder behind


def _pretrain(args, dist_info: DistInfo, device: torch.device, ckpt: dict | None, resume: str,
              command: str) -> PretrainResult:
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = create_model(args.model, norm_pix_loss=args.norm_pix_loss,
                         **({"img_size": args.input_size} if args.input_size is not None else {}))
    args.input_size = model.img_size
    if args.lr is None:
        args.lr = effective_lr(args.blr, args.batch_size, args.accum_iter, dist_info.world_size)
    precision = choose_precision(device, args.precision)
    scaler = precision.grad_scaler(device)
    data_from_ckpt = False
    if ckpt is not None:  # the weights are checked against the model before any data is read
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
            refuse(f"{resume} holds {_model_of(ckpt)}, which does not fit --model {args.model} at --input_size "
                   f"{args.input_size} ({lines[0] if lines else e}); resume with the checkpoint's --model and "
                   "--input_size")
    # On its device before the optimizer state is loaded: loading places each state tensor on its
    # parameter's device (and dtype), and a later move of the model would leave that state behind.
    model.to(device)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            refuse(f"the optimizer state in {resume} does not fit --model {args.model} ({e})")
        data_from_ckpt = _data_path_from_checkpoint(args, ckpt)
    num_patches = model.patch_embed.num_patches

    pin = args.pin_mem if args.pin_mem is not None else device.type == "cuda"
    device_run = ckpt is not None and isinstance(ckpt["args"], dict) and ckpt["args"].get("loader") == "device"
    try:
        dataset, sampler, loader, info = build_pretrain_data(args, num_patches, dist_info, pin, device,
                                                             resumed_from=resume if device_run else None)
    except D.DataError as e:
        if data_from_ckpt:
            raise D.DataError(f"{e} (the data path {args.data_path!r} comes from the checkpoint {resume}, and a "
                              "relative one is read from the current folder; give --data_path)") from e
        raise
    args.dataset = info.name
    args.mean, args.std = list(info.mean), list(info.std)

    steps_per_epoch = len(loader) // args.accum_iter
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(dataset)} images) is too small for one optimizer step of "
            f"{args.batch_size} x {args.accum_iter} x {dist_info.world_size} images; lower --batch_size"
        )
    eff_batch = args.batch_size * args.accum_iter * dist_info.world_size

    out = Path(args.output_dir) if args.output_dir else None
    is_main = dist_info.is_main
    if out is not None and is_main and ckpt is None and (args.overwrite or args.auto_resume):
        # Starting over: the old run's logs are replaced, not appended to.
        _clear_old_run(out, checkpoints=args.overwrite)
    writer = MetricsWriter(out, enabled=is_main)

    # ---------------------------------------------------------------- resume
    start_epoch, start_step, meter = 0, 0, EpochMeter()
    last_written = None  # (path, step, loss) of the last checkpoint written or resumed from
    if ckpt is not None:
        saved = ckpt.get("args", {})
        epoch, epoch_step = int(ckpt["epoch"]), int(ckpt.get("epoch_step", steps_per_epoch))
        if epoch_step >= int(ckpt.get("steps_per_epoch", steps_per_epoch)):
            start_epoch, start_step = epoch + 1, 0  # the checkpoint closed its epoch
        else:
            saved_eff = saved.get("batch_size", 0) * saved.get("accum_iter", 1) * saved.get("world_size", 1)
            if saved_eff != eff_batch or ckpt.get("steps_per_epoch") != steps_per_epoch:
                raise ValueError(
                    f"{resume} stopped inside epoch {epoch} with an effective batch of {saved_eff} and "
                    f"{ckpt.get('steps_per_epoch')} steps per epoch; resuming inside an epoch needs the same "
                    f"(now {eff_batch} and {steps_per_epoch})"
                )
            start_epoch, start_step = epoch, epoch_step
            meter.load_state_dict(ckpt["epoch_meter"])
        # The CPU generator only; nothing in pretraining draws from a CUDA generator.
        torch.set_rng_state(ckpt["rng"]["torch"])
        writer.truncate(start_epoch * steps_per_epoch + start_step, start_epoch)
        if is_main:
            print(f"resumed from {resume}: epoch {start_epoch}, step {start_step} of {steps_per_epoch}", flush=True)
        em = ckpt.get("epoch_meter") or {}
        last_written = (resume, ckpt.get("step"), em["loss_sum"] / em["steps"] if em.get("steps") else None)
        del ckpt
    args.world_size = dist_info.world_size

    ddp_model = model
    if dist_info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # Compiled after the DDP wrap; checkpoints keep saving `model`, which shares the parameters.
    ddp_model = compile_model(ddp_model, args.compile)

    if is_main:
        # Short lines: they are printed in notebooks, whose pages fit 88 characters.
        print(f"model {args.model} ({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M "
              "trainable)", flush=True)
        print(f"data {info.name}: {len(dataset)} images at {args.input_size} px ({args.loader} loader), "
              f"{steps_per_epoch} steps/epoch", flush=True)
        print(f"effective batch {eff_batch} ({args.batch_size} x {args.accum_iter} accum x "
              f"{dist_info.world_size} processes), lr {args.lr:.3g}, precision {precision.name} on {device}",
              flush=True)

    # Reconstruction pictures of fixed held-out images (main process only).
    snap = None
    if args.recon_every and out is not None and is_main:
        imgs, _, names = heldout_images(info.name, args.data_path, args.recon_images, args.input_size, info.mean,
                                        info.std, seed=args.seed, num_photos=args.num_photos)
        snap = (imgs, fixed_noise(imgs.shape[0], num_patches, args.seed))

    def save_snapshot(epochs_done: int) -> None:
        if snap is not None:
            rows = reconstruction_rows(model, snap[0], info.mean, info.std, args.mask_ratio, snap[1])
            save_grid(rows, snapshot_path(out, epochs_done))

    record = RunRecord(out, enabled=is_main)
    record.start(args=dict(vars(args)), device=device,
                 data=data_record(info.name, args.data_path, len(dataset)), epochs_scheduled=args.epochs,
                 resumed=start_epoch > 0 or start_step > 0, command=command)
    images_seen = [0]
    if start_step == 0 and start_epoch % max(args.recon_every, 1) == 0:
        save_snapshot(start_epoch)

    last_ckpt: Path | None = None
    last_loss = [None]

    def save(epoch: int, epoch_step: int, name: str = LAST_CHECKPOINT) -> None:
        nonlocal last_ckpt, last_written
        if out is None or not is_main:
            return
        state = training_checkpoint(model, optimizer, scaler, args, epoch=epoch, epoch_step=epoch_step,
                                    steps_per_epoch=steps_per_epoch, epoch_meter=meter, dataset=info)
        save_atomic(state, out / name)
        last_ckpt = out / LAST_CHECKPOINT if name == LAST_CHECKPOINT else out / name
        last_written = (last_ckpt, epoch * steps_per_epoch + epoch_step, last_loss[0])

    def lr_fn(epoch_float: float) -> float:
        return lr_at(epoch_float, args.lr, args.min_lr, args.warmup_epochs, args.epochs)

    class _StopRun(Exception):
        pass

    def after_step(s: StepInfo) -> None:
        last_loss[0] = s.loss
        images_seen[0] += eff_batch
        if is_main:
            writer.log_step({"step": s.global_step, "epoch": s.epoch, "epoch_step": s.epoch_step,
                             "loss": s.loss, "lr": s.lr, "images_per_s": s.images_per_s})
        # An epoch's last step is saved when the epoch closes; a --max_steps stop there waits for that.
        inside = s.epoch_step < steps_per_epoch
        done = inside and args.max_steps is not None and s.global_step >= args.max_steps
        if inside and (done or (args.save_every_steps and s.global_step % args.save_every_steps == 0)):
            save(s.epoch, s.epoch_step)
        if done:
            raise _StopRun

    epoch_log = []
    t_start = time.perf_counter()
    stopped = False
    try:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_position(epoch, start_step * args.accum_iter * args.batch_size)
            t0 = time.perf_counter()
            n0 = meter.steps
            try:
                meter = train_one_epoch(
                    ddp_model, loader, optimizer, device, epoch, lr_fn, steps_per_epoch,
                    mask_ratio=args.mask_ratio, accum_iter=args.accum_iter, start_step=start_step,
                    precision=precision, scaler=scaler, clip_grad=args.clip_grad, meter=meter,
                    world_size=dist_info.world_size, after_step=after_step,
                    progress=is_main and not args.no_progress,
                )
            except _StopRun:
                stopped = True
                break
            secs = time.perf_counter() - t0
            row = {"train_lr": optimizer.param_groups[0]["lr"], "train_loss": meter.loss, "epoch": epoch,
                   "images_per_s": (meter.steps - n0) * eff_batch / max(secs, 1e-9)}
            epoch_log.append(row)
            writer.log_epoch(row)
            save(epoch, steps_per_epoch)
            if args.recon_every and ((epoch + 1) % args.recon_every == 0 or epoch + 1 == args.epochs):
                save_snapshot(epoch + 1)
            record.update(epochs_run=epoch + 1, images=images_seen[0], last_train_loss=meter.loss)
            if is_main and (epoch % args.save_freq == 0 or epoch + 1 == args.epochs):
                save(epoch, steps_per_epoch, name=f"checkpoint-{epoch}.pth")
            start_step, meter = 0, EpochMeter()
            if args.max_steps is not None and (epoch + 1) * steps_per_epoch >= args.max_steps \
                    and epoch + 1 < args.epochs:
                stopped = True  # --max_steps reached at this epoch's end, which is saved above
                break
    except NonFiniteLossError as e:
        where = ""
        if last_written is not None:
            path, step, loss = last_written
            where = f"; the last checkpoint written is {path} (step {step}" + (
                f", loss {loss:.4g})" if loss is not None else ")")
        raise NonFiniteLossError(f"{e}{where}. Try a lower --blr, --clip_grad 1.0 or --precision fp32.") from e
    barrier()
    record.update(epochs_run=(epoch_log[-1]["epoch"] + 1) if epoch_log else start_epoch, images=images_seen[0],
                  finished=not stopped)
    if is_main:
        msg = "stopped at --max_steps" if stopped else "done"
        print(f"{msg} in {time.perf_counter() - t_start:.1f} s", flush=True)
    return PretrainResult(model=model, log_path=writer.epoch_log, checkpoint=last_ckpt,
                          epoch_log=epoch_log)


def main(argv=None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        result = pretrain(argv=argv, command=_command_line(argv, {}))  # argv: which flags were given
    except (InputError, NonFiniteLossError, D.DataError, CheckpointMismatchError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    if result.epoch_log and int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result.epoch_log[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
