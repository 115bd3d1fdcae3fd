"""The pretraining run's configuration: its flags, their checks, and one frozen record of them.

:func:`get_args_parser` holds the official flags and ours.  :func:`check_args`
refuses every out-of-range value before anything is loaded or written.
:func:`configure` resolves them once into a :class:`RunConfig`: every setting of
the run, and where each came from:

``asked``       given on the command line, or as a keyword to ``pretrain``;
``preset``      set by ``--preset`` and not asked for;
``default``     the flag's default;
``checkpoint``  taken from the checkpoint a resumed run continues (what defines the run,
                :data:`KEPT_ON_RESUME`, its data, epochs and batch), where not given;
``derived``     computed from the others: the absolute data path, the data set
                behind ``--dataset auto``, the image size (the model's, unless
                given: a preset's goes with the preset's model), the learning rate from
                ``--blr``, the effective batch, the precision, the loader chosen by
                ``--loader auto``, the normalization statistics.

The configuration never changes in place: a stage that learns more (the data stage
learns the loader and the statistics) makes a new one with :meth:`RunConfig.derive`.
``run.json`` and every checkpoint record it, with each setting's source.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

from . import data as D
from .cli_checks import OneLineParser, check_number, check_whole, refuse
from .masking import num_kept
from .model import MODELS, create_model
from .precision import PRECISIONS
from .presets import PRESETS, describe, get_preset
from .training_checkpoint import load_training_checkpoint

LOADERS = ("auto", "device", "pil")
SOURCES = ("asked", "preset", "default", "checkpoint", "derived")


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
                   help="continue from OUTPUT_DIR/checkpoint-last.pth if it exists")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUTPUT_DIR that holds a run (its checkpoints and logs are replaced)")
    p.add_argument("--save_every_steps", default=0, type=int,
                   help="also write checkpoint-last.pth every N optimizer steps (0: only at epoch ends)")
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


def parse_args(argv=None, **overrides) -> argparse.Namespace:
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
    check_whole("save_every_steps", args.save_every_steps, 0, hint="0 writes checkpoint-last.pth only at epoch ends")
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


# ----------------------------------------------------------------------------------
# The frozen configuration
@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run (``config.batch_size``, ...) and where each came from.

    ``asked`` keeps what was asked for where a later source replaced it (an
    absolute data path for a relative one, the loader ``auto`` chose), so a reader
    of ``run.json`` can tell what was asked from what was derived.
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    asked: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("values", "sources", "asked"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def __getattr__(self, name: str):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"the run configuration has no setting {name!r}") from None

    def _with(self, source: str, changes: dict) -> RunConfig:
        values, sources, asked = dict(self.values), dict(self.sources), dict(self.asked)
        for name, value in changes.items():
            if name in values and values[name] == value:
                continue  # the same value keeps its source (asked for, and confirmed)
            if sources.get(name) == "asked" and name not in asked:
                asked[name] = values[name]
            values[name], sources[name] = value, source
        return RunConfig(values, sources, asked)

    def derive(self, **changes) -> RunConfig:
        """A new configuration with ``changes`` as derived settings."""
        return self._with("derived", changes)

    def from_checkpoint(self, **changes) -> RunConfig:
        """A new configuration with ``changes`` taken from the checkpoint being resumed."""
        return self._with("checkpoint", changes)

    def as_args(self) -> dict:
        """The settings as a plain dict (a checkpoint's ``args``, as in the official layout)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values.items()}

    def as_record(self) -> dict:
        """Each setting with its source, grouped by source, for ``run.json`` and checkpoints."""
        record = {source: {} for source in SOURCES}
        for name, value in self.as_args().items():
            record[self.sources[name]][name] = value
        record["asked_before_derived"] = dict(self.asked)
        return record


def _asked_names(args, argv, kwargs) -> set:
    """Which settings this call asked for: with ``argv`` or keywords, the flags and keywords
    given; with a namespace parsed elsewhere, the values that differ from the defaults (of
    its preset)."""
    parser = get_args_parser()
    names = {a.dest for a in parser._actions if a.dest != "help"}
    if args is None:
        unset = object()  # argparse keeps an attribute the namespace already has unless its flag is given
        seen = argparse.Namespace(**{name: unset for name in names})
        parser.parse_args(argv or [], namespace=seen)
        return {n for n in names if getattr(seen, n) is not unset} | set(kwargs)
    defaults = parse_args([], preset=getattr(args, "preset", None))
    return {n for n in names if getattr(args, n, None) != getattr(defaults, n, None)} | set(kwargs)


def initial_config(args: argparse.Namespace | None, argv, kwargs) -> RunConfig:
    """The settings as asked for, before any check, resume or derivation.

    Give a parsed ``args`` namespace, or command-line ``argv``, or keywords named like
    the flags (keywords win over both).
    """
    asked = _asked_names(args, argv, kwargs)
    if args is None:
        args = parse_args(argv, **kwargs)
    elif kwargs:
        args = argparse.Namespace(**{**vars(args), **kwargs})
    values = dict(vars(args))
    for name, default in (("overwrite", False), ("loader", "auto"), ("recon_every", 0), ("recon_images", 8)):
        values.setdefault(name, default)  # namespaces made by older code lack these
    preset = get_preset(values["preset"]).args if values.get("preset") else {}
    sources = {n: "asked" if n in asked else "preset" if n in preset else "default" for n in values}
    if sources["model"] == "asked" and sources["input_size"] == "preset" and values["model"] != preset["model"]:
        # The preset's image size is its model's: another model takes its own (ViT-B/16 at the
        # CIFAR presets' 32 px would see 2 x 2 patches).
        values["input_size"], sources["input_size"] = None, "default"
    return RunConfig(values, sources)


def derive_settings(config: RunConfig, world_size: int, device: torch.device, precision: str) -> RunConfig:
    """What the flags imply once the processes and the device are known."""
    with torch.device("meta"):  # the configuration only
        img_size = create_model(config.model).config.img_size
    derived = {"input_size": config.input_size if config.input_size is not None else img_size,
               "world_size": world_size,
               "effective_batch": config.batch_size * config.accum_iter * world_size,
               "device": str(device), "precision": precision,
               "dataset": resolve_dataset(config),
               "pin_mem": config.pin_mem if config.pin_mem is not None else device.type == "cuda"}
    if config.lr is None:
        derived["lr"] = config.blr * derived["effective_batch"] / 256
    if config.data_path is not None:
        derived["data_path"] = os.path.abspath(os.path.expanduser(config.data_path))  # found from any folder
    return config.derive(**derived)


# ----------------------------------------------------------------------------------
# The checkpoint a resumed run continues, and what the run takes from it
def model_of(ckpt: dict) -> str:
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    name = saved.get("model")
    cfg = ckpt.get("model_config")
    if isinstance(cfg, dict):
        size = ", ".join(f"{k}={cfg[k]}" for k in ("img_size", "patch_size", "embed_dim", "depth") if k in cfg)
        return f"{name or 'a model'} ({size})"
    return str(name) if name else "weights of another model"


def read_resume_checkpoint(path: str, config, auto: bool) -> dict:
    """The checkpoint to continue from, checked to be a training checkpoint of the model asked for.

    What the run takes from it (what defines the run, its data, epochs and batch) is
    :func:`~mae_from_scratch.run_config.kept_from_checkpoint`'s business.
    """
    ckpt = load_training_checkpoint(path)  # refuses unreadable and weights-only files
    for key in ("optimizer", "epoch", "args", "rng"):
        if key not in ckpt:
            refuse(f"{path} is not a checkpoint of this pretraining code (no {key!r} entry), so it cannot be "
                   "resumed; load its weights with mae_from_scratch.load_official_checkpoint instead")
    saved = ckpt["args"] if isinstance(ckpt["args"], dict) else {}
    if saved.get("model") not in (None, config.model):
        flag = "" if auto else " (or drop --resume to start a new run)"
        refuse(f"{path} holds {model_of(ckpt)} but --model {config.model} was asked for; resume with --model "
               f"{saved.get('model')}{flag}")
    return ckpt


# What defines a run.  A resume continues the run it resumes, so each of these comes from its
# checkpoint: left out, the checkpoint's value is taken; asked for with another value, the resume is
# refused, naming what the change would do.  The data (kept_from_checkpoint) and the effective batch
# (check_resumed_batch) are checked apart; the model and image size by the checkpoint's weights.
KEPT_ON_RESUME = {"seed": "shuffle, augmentation and masks", "loader": "augmentation",
                  "max_images": "training images", "num_photos": "training images", "mask_ratio": "masks",
                  "norm_pix_loss": "reconstruction target", "blr": "learning rate", "lr": "learning rate",
                  "min_lr": "learning-rate schedule", "warmup_epochs": "learning-rate schedule",
                  "weight_decay": "weight decay", "clip_grad": "gradient clipping"}
# Taken from the checkpoint when left out, but free to change: more epochs extend a run (run.json's
# segment records the change), and another split of the same effective batch trains the same run.
FOLLOWED_ON_RESUME = ("epochs", "batch_size", "accum_iter")


def _show(name: str, value) -> str:
    if value is None:
        return "every image (no --max_images)" if name == "max_images" else f"no --{name}"
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    return f"--{name} {value}"


def _and(items) -> str:
    items = list(dict.fromkeys(items))  # in order, once each
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _refuse_changes(path: str, changes: list, auto: bool) -> None:
    """One line naming every setting asked for that differs from the checkpoint's: ``(name, theirs, mine)``."""
    def show(name, value):  # the data comes shown already
        return value if name == "data" else _show(name, value)

    theirs = _and(show(n, t) for n, t, _ in changes)
    mine = _and(show(n, m) for n, _, m in changes)
    what = KEPT_ON_RESUME.get(changes[0][0], "training images")
    flags = _and("--dataset and --data_path" if n == "data" else _show(n, m) if isinstance(m, bool) else f"--{n}"
                 for n, _, m in changes)
    given = " ".join(show(n, t) for n, t, _ in changes if t is not None)
    new = "choose another --output_dir for a new run" if auto else "drop --resume to start a new run"
    change = f"was asked for, which would change the run's {what}" if len(changes) == 1 else \
        "were asked for, which would make it another run"
    refuse(f"{path} was trained with {theirs}, but {mine} {change}; leave {flags} out"
           + (f" (or give {given})" if given else "") + f" to continue it, or {new}")


def _data(dataset, data_path) -> str:
    return f"--dataset {dataset}" + (f" --data_path {data_path}" if data_path else "")


def kept_from_checkpoint(path: str, config: RunConfig, saved: dict, auto: bool) -> RunConfig:
    """A resume continues the run it resumes: the checkpoint's settings of :data:`KEPT_ON_RESUME` and
    :data:`FOLLOWED_ON_RESUME` replace those not asked for, and a setting of :data:`KEPT_ON_RESUME` asked
    for with another value is refused (every such one in one line).  ``--loader auto`` asks for no
    loader in particular; the checkpoint holds the one auto chose.  Without ``--data_path`` (and
    ``--dataset``) the run reads the data its checkpoint was trained on; other data is refused, unless
    the checkpoint's path is gone (the data moved) and the data set is the same: then run.json's
    segment records the new path, and :func:`check_resumed_images` checks its size."""
    kept, changes = {}, []
    for name in (*KEPT_ON_RESUME, *FOLLOWED_ON_RESUME):
        if name not in saved or (name == "loader" and saved[name] not in LOADERS[1:]):
            continue  # written before it was saved (or before the loader was resolved)
        mine, theirs = config.values.get(name), saved[name]
        if mine == theirs:
            continue
        if config.sources.get(name) != "asked" or (name == "loader" and mine == "auto"):
            kept[name] = theirs
        elif name in KEPT_ON_RESUME and (name != "num_photos" or saved.get("dataset") == "photos"):
            changes.append((name, theirs, mine))
    theirs_ds, theirs_path = saved.get("dataset"), saved.get("data_path")
    if theirs_ds in D.DATASETS:
        mine_ds = theirs_ds if config.dataset == "auto" else config.dataset
        mine_path = theirs_path if config.data_path is None else os.path.abspath(os.path.expanduser(config.data_path))
        moved = theirs_path is not None and not os.path.exists(theirs_path) and mine_ds == theirs_ds
        if mine_ds != theirs_ds or (mine_path != theirs_path and not moved):
            changes.append(("data", _data(theirs_ds, theirs_path), _data(mine_ds, mine_path)))
        if config.dataset == "auto":
            kept["dataset"] = theirs_ds
        if config.data_path is None and theirs_path is not None:
            kept["data_path"] = theirs_path
    elif config.data_path is None and config.dataset == "auto" and theirs_path:
        kept.update(data_path=theirs_path, dataset="auto")  # written before the data set was resolved
    if changes:
        _refuse_changes(path, changes, auto)
    return config.from_checkpoint(**kept)


def check_resumed_batch(config: RunConfig, saved: dict) -> None:
    """The effective batch of a resumed run is its checkpoint's (another split of it over
    ``--batch_size``, ``--accum_iter`` and processes is the same run): it sets the steps per epoch,
    which the logs and the checkpoints count in."""
    theirs = saved.get("effective_batch")
    if theirs is None or theirs == config.effective_batch:
        return
    split = f"{saved.get('batch_size')} x {saved.get('accum_iter', 1)} accum x {saved.get('world_size', 1)} processes"
    refuse(f"{config.resume} was trained with an effective batch of {theirs} images ({split}), but this resume "
           f"makes {config.effective_batch} ({config.batch_size} x {config.accum_iter} accum x {config.world_size} "
           f"processes), which would change the run's steps per epoch; give --batch_size and --accum_iter that make "
           f"{theirs} (or leave them out) to continue it, or choose another --output_dir for a new run")


def check_resumed_images(config: RunConfig, saved: dict) -> None:
    """The data a resumed run reads holds as many images as its checkpoint's did (a folder that
    gained or lost images, or moved data that is not the same, is another data set)."""
    theirs = saved.get("num_images")
    if theirs is None or theirs == config.num_images:
        return
    where = config.data_path or f"the {config.dataset} data"
    refuse(f"{config.resume} was trained on {theirs} images, but {where} now gives {config.num_images}: the data "
           "changed, so the run would continue on other images; give the data it was trained on to continue it, "
           "or choose another --output_dir for a new run")
