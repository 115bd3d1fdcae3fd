"""How good are the features?  kNN, linear probe and fine-tuning on labelled images.

``python -m mae_from_scratch.evaluate MODE --checkpoint PATH [--data_path ROOT] ...``
with ``MODE`` one of:

``knn``       frozen features, cosine similarity, the ``k = 20`` nearest training
              images vote with weights ``exp(similarity / 0.07)``;
``linprobe``  frozen features, a linear classifier after a BatchNorm without
              affine parameters (as in the paper, which found it makes the
              probe insensitive to the features' scale);
``finetune``  the encoder plus a linear head, trained end to end with the
              paper's recipe at small scale (see
              :func:`~mae_from_scratch.finetune.finetune`): layer-wise lr decay,
              drop path, label smoothing, RandAugment; or only its last
              ``--trainable_blocks`` blocks (partial fine-tuning).

The features are the encoder's output (after its final LayerNorm) on *all*
patches, no masking: the cls token (``--pool cls``, the default, as the
paper's linear probe) or the mean of the patch tokens (``--pool mean``).

Honest numbers: a hyperparameter is never chosen on the test split.
``--val_images N`` images of the *training* split, a seeded random subset
disjoint from the rest
(:func:`~mae_from_scratch.validation.split_train_val`), are held out as a
validation split; by default a fifth of the training split, at most 5000
(:func:`~mae_from_scratch.validation.default_val_images`: 5000 of CIFAR-10's
50000, 819 of the offline photos' 4096), said in one printed line.  With ``--tune`` the kNN's ``k``
(10, 20 or 50) or the probe's ``blr`` (0.03, 0.1 or 0.3) is chosen by the
accuracy on that split of a model trained on the rest; the chosen value is then used on the whole
training split and the test split is scored once; a grid that scores the same
everywhere chooses nothing and says so (``"tuned": false``, ``"why_not_tuned"``).
Without ``--tune`` the fixed defaults are used, nothing is held out, and the
result says ``"tuned": false``.  ``"k"`` is the number of neighbours that voted
(at most the training images).  Fine-tuning trains on the training split minus the
validation images, prints the validation accuracy after every epoch as it comes
(what any choice, the number of epochs say, should be made on; Ctrl-C keeps them
and ends with one line) and the test accuracy once, at the end (``--val_images 0``:
train on everything, no validation).

The data: ``--data_path``, or the checkpoint's (said in a printed line); the JSON
names the absolute path, where it came from and its images.  Training images
must have labels (STL-10's labelled ``train`` split, not ``train+unlabeled``) of
at least two classes: on one class any classifier scores 1.0.

Works with our checkpoints (which carry the model's configuration and the
normalization statistics used in pretraining) and with the official ones
(``{'model': state_dict}``: give ``--model``, or it is inferred from the
shapes; ImageNet statistics); a ``--model`` that is not our checkpoint's is refused.  ``--checkpoint random`` evaluates a randomly
initialized encoder, the baseline every number should beat; with
``finetune`` it is the paper's "trained from scratch" baseline: a ViT of the
architecture ``--model`` (give the pretrained one's), trained on the same
labels for the same epochs, without pretraining and, unless ``--layer_decay``
says otherwise, without layer decay (as the paper trains that baseline).  The
last line printed is a JSON object with the accuracy.

Departure from the official linear probe, for speed on small machines: the
features are computed once, without augmentation, and the probe trains on
them (SGD with momentum and a cosine schedule instead of LARS).

This module is the command line only.  What it runs lives in
:mod:`~mae_from_scratch.features` (the encoder, its features),
:mod:`~mae_from_scratch.knn`, :mod:`~mae_from_scratch.linear_probe`,
:mod:`~mae_from_scratch.validation` (the choices made on held-out training
images) and :mod:`~mae_from_scratch.finetune`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
from torch.utils.data import DataLoader

from . import data as D
from .archives import data_cache_dir
from .cli_checks import OneLineParser, check_device, check_number, check_whole, one_line, refuse
from .data_error import DataError
from .features import POOLS, extract_features, load_encoder
from .finetune import finetune, finetune_transform
from .knn import KNN_GRID, knn_evaluation
from .linear_probe import BLR_GRID, linear_probe_evaluation
from .model import MODELS
from .precision import PRECISIONS, choose_precision
from .validation import VAL_MAX, VAL_PART, default_val_images, split_train_val

MODES = ("knn", "linprobe", "finetune")


# ----------------------------------------------------------------------------------
# Command line
def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser("MAE evaluation", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("mode", choices=MODES)
    p.add_argument("--checkpoint", default="random",
                   help="our checkpoint, an official one, or 'random' for a randomly initialized encoder")
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="architecture for official checkpoints and 'random' (ours carry theirs)")
    p.add_argument("--dataset", default="auto", choices=("auto",) + D.DATASETS,
                   help="auto: the pretraining data set of our checkpoints, else imagefolder/photos")
    p.add_argument("--data_path", default=None, help="ImageFolder ROOT (train/ and val/ or test/), archive, "
                   "or torchvision root; default: the checkpoint's")
    p.add_argument("--input_size", default=None, type=int, help="default: the checkpoint's")
    p.add_argument("--crop_pct", default=None, type=float,
                   help="resize to input_size / crop_pct, then centre crop (default 1.0; 0.875 for imagefolder)")
    p.add_argument("--pool", default="cls", choices=POOLS, help="cls token or mean of patch tokens")
    p.add_argument("--batch_size", default=256, type=int)
    p.add_argument("--num_workers", default=2, type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--max_train", default=None, type=int, help="use a fixed random subset of the training split")
    p.add_argument("--max_test", default=None, type=int, help="use a fixed random subset of the test split")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--val_images", default=None, type=int,
                   help="training images (after --max_train) held out as a validation split (seeded, disjoint): "
                        "what --tune chooses on and what finetune reports each epoch; 0 holds out nothing; "
                        f"default: 1/{VAL_PART} of the training split, at most {VAL_MAX}")
    p.add_argument("--tune", action="store_true",
                   help=f"knn: choose k from {list(KNN_GRID)}, linprobe: blr from {list(BLR_GRID)}, on the "
                        "validation split; then train on the whole training split and score the test split once")
    p.add_argument("--k", default=20, type=int, help="kNN: neighbours (without --tune)")
    p.add_argument("--temperature", default=0.07, type=float, help="kNN: vote weight exp(sim / T)")
    p.add_argument("--epochs", default=None, type=int, help="linprobe (default 90) / finetune (default 10)")
    p.add_argument("--blr", default=None, type=float,
                   help="linprobe (default 0.1, without --tune) / finetune (default 1e-3)")
    p.add_argument("--weight_decay", default=None, type=float, help="linprobe (default 0) / finetune (default 0.05)")
    p.add_argument("--layer_decay", default=None, type=float,
                   help="finetune: layer-wise lr decay in (0, 1]; default 0.75, or 1 (none) for --checkpoint random, "
                        "the from-scratch baseline")
    p.add_argument("--drop_path", default=0.1, type=float, help="finetune: stochastic depth of the last block")
    p.add_argument("--smoothing", default=0.1, type=float, help="finetune: label smoothing")
    p.add_argument("--trainable_blocks", default=None, type=int,
                   help="finetune: train only the last K blocks, the final norm and the head; None: every block")
    p.add_argument("--no_progress", action="store_true")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range flags before any checkpoint or data is read.

    Every problem is an :class:`~mae_from_scratch.cli_checks.InputError` with one line
    naming the flag, the value and the allowed range.  Unset flags (``None``) take their documented defaults.
    """
    if args.checkpoint is not None and not str(args.checkpoint).strip():
        refuse("--checkpoint is empty; give a checkpoint file, or 'random' for a random encoder")
    if args.data_path is not None and not str(args.data_path).strip():
        refuse("--data_path is empty; give an ImageFolder ROOT, an archive or a torchvision root, "
               "or leave the flag out to use the checkpoint's")
    check_whole("k", args.k, 1)
    check_whole("val_images", args.val_images, 0, optional=True, hint="0 holds out no validation images")
    if args.tune and args.mode == "finetune":
        refuse("--tune is for knn and linprobe; finetune reports the validation accuracy of every epoch instead")
    if args.tune and args.val_images == 0:
        refuse("--tune chooses on the validation split, but --val_images is 0; give --val_images >= 1")
    if args.layer_decay is not None and not (isinstance(args.layer_decay, (int, float))
                                             and math.isfinite(args.layer_decay) and 0 < args.layer_decay <= 1):
        refuse(f"--layer_decay must be in (0, 1] (1 = no decay), got {args.layer_decay}; e.g. --layer_decay 0.75")
    for flag in ("drop_path", "smoothing"):
        value = getattr(args, flag)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
            refuse(f"--{flag} must be in [0, 1), got {value}; e.g. --{flag} 0.1")
    check_whole("trainable_blocks", args.trainable_blocks, 0, optional=True,
                hint="0 trains the head only (a linear probe), leave it out to train every block")
    check_number("temperature", args.temperature, strict=True, example="0.07")
    check_whole("epochs", args.epochs, 1, optional=True)
    check_number("blr", args.blr, strict=True, optional=True)
    check_number("weight_decay", args.weight_decay, optional=True)
    if args.crop_pct is not None and not (isinstance(args.crop_pct, (int, float)) and math.isfinite(args.crop_pct)
                                          and 0 < args.crop_pct <= 1):
        refuse(f"--crop_pct must be in (0, 1] (the centre crop's share of the resized image), got {args.crop_pct}")
    check_whole("batch_size", args.batch_size, 1)
    check_whole("num_workers", args.num_workers, 0)
    check_whole("max_train", args.max_train, 1, optional=True)
    check_whole("max_test", args.max_test, 1, optional=True)
    check_whole("input_size", args.input_size, 1, optional=True)
    check_device(args.device, allow_mps=True, purpose="evaluation")


def _check_features(feats: torch.Tensor, split: str) -> None:
    if not torch.isfinite(feats).all():
        raise ValueError(f"the encoder's features on the {split} split are not finite (NaN or inf), so no "
                         "accuracy can be computed; the checkpoint's weights overflow on these images")


def _data_path(args, enc, dataset: str) -> tuple[str | None, str]:
    """The data path evaluation reads, absolute (so the JSON names the folder whatever the
    current one), and where it came from: ``--data_path``, the ``checkpoint``, or none:
    torchvision's ``download`` (into its cache folder) or ``generated`` (the offline photos)."""
    if args.data_path is not None:
        return os.path.abspath(os.path.expanduser(args.data_path)), "--data_path"
    if enc.data_path and dataset == enc.dataset:
        if not os.path.isabs(os.path.expanduser(enc.data_path)):
            # Relative to the folder pretraining ran in, which the checkpoint does not say: read from
            # here it could be another folder's data.
            refuse(f"{args.checkpoint} names its data by the relative path {enc.data_path!r}, whose folder it does "
                   "not record; give --data_path")
        return enc.data_path, "checkpoint"
    return None, "download" if dataset in ("cifar10", "stl10") else "generated"


def _labels(ds) -> list | None:
    """The labels of ``ds`` without decoding an image (``None`` where it cannot tell)."""
    if isinstance(ds, torch.utils.data.Subset):
        labels = _labels(ds.dataset)
        return None if labels is None else [labels[i] for i in ds.indices]
    for obj in (ds, getattr(ds, "base", None)):
        for name in ("targets", "labels"):  # ImageFolder, CIFAR-10, the photos; STL-10
            if getattr(obj, name, None) is not None:
                return [int(y) for y in getattr(obj, name)]
    return None


def _check_labels(labels, classes, after: str) -> None:
    """Refuse training images without labels (-1) or all of one class: every classifier scores
    1.0 on one class, so its accuracy would measure nothing."""
    if labels is not None and labels and min(labels) < 0:
        refuse(f"{sum(y < 0 for y in labels)} of the training images{after} are unlabelled (label {min(labels)}); "
               "evaluation needs labelled images")
    present = sorted(set(labels)) if labels is not None else range(len(classes)) if classes else None
    if present is not None and len(present) < 2:
        name = f" ({classes[present[0]]!r})" if classes and present and present[0] < len(classes) else ""
        refuse(f"the training images{after} are all of one class{name}: any classifier scores 1.0 there, so the "
               "accuracy would measure nothing; give a data set of at least 2 classes")


def evaluate(args: argparse.Namespace) -> dict:
    """Run one evaluation from parsed ``args``; returns the result dict the CLI prints.

    Flags are checked first (:func:`check_args`), then the checkpoint (non-finite
    weights are refused), then the class folders and labels, before any image is decoded.
    """
    check_args(args)
    enc = load_encoder(args.checkpoint, args.model, args.input_size,
                       dataset=None if args.dataset == "auto" else args.dataset, seed=args.seed)
    dataset = args.dataset
    if dataset == "auto":
        dataset = enc.dataset or ("imagefolder" if args.data_path else "photos")
    data_path, data_from = _data_path(args, enc, dataset)
    if enc.source == "random":
        info = D.dataset_info(dataset)
        enc.mean, enc.std = info.mean, info.std
    model = enc.model.to(args.device)
    if args.mode == "finetune" and args.trainable_blocks is not None and args.trainable_blocks > len(model.blocks):
        refuse(f"--trainable_blocks must be at most the encoder's depth {len(model.blocks)}, "
               f"got {args.trainable_blocks}")
    size = model.img_size
    crop_pct = args.crop_pct if args.crop_pct is not None else (
        0.875 if dataset == "imagefolder" and size >= 128 else 1.0)
    t_eval = D.eval_transform(size, enc.mean, enc.std, crop_pct)
    precision = choose_precision(args.device, args.precision)
    progress = not args.no_progress
    pin = torch.device(args.device).type == "cuda"

    def loader(raw, shuffle=False, limit=None):
        ds = D.subset(raw, limit, seed=args.seed)
        return ds, DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, num_workers=args.num_workers,
                              pin_memory=pin, drop_last=shuffle and len(ds) > args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed))

    def build(split, transform, classes=None):
        try:  # the training split: labelled images only (STL-10's train, not train+unlabeled)
            return D.build_dataset(dataset, split, data_path, transform=transform, classes=classes, labelled=True)
        except DataError as e:
            if data_from == "checkpoint":
                raise DataError(f"{e} (the data path comes from the checkpoint {args.checkpoint}; give "
                                "--data_path)") from e
            raise

    train_raw = build("train", t_eval)
    classes = getattr(train_raw, "classes", None)
    # The test split is labelled with the train split's class -> index map.
    test_raw = build("test", t_eval, classes)
    missing = getattr(getattr(test_raw, "base", None), "missing_classes", [])
    train_ds, train_loader = loader(train_raw, limit=args.max_train)
    test_ds, test_loader = loader(test_raw, limit=args.max_test)
    after = " (after --max_train)" if args.max_train else ""
    # The validation images are needed by --tune and by finetune; refuse a split that leaves nothing to train on
    # now, before any image is decoded.  Without --val_images the number follows the training split's size.
    uses_val = args.tune or args.mode == "finetune"
    val_images = args.val_images
    if val_images is None:
        val_images = default_val_images(len(train_ds))
        if args.tune and val_images == 0:
            refuse(f"--tune needs at least 2 training images, one to hold out and one to train on: the training "
                   f"split has {len(train_ds)}{after}")
    elif uses_val and val_images >= len(train_ds):
        refuse(f"--val_images {val_images} leaves nothing to train on: the training split has {len(train_ds)} "
               f"images{after}; use at most {len(train_ds) - 1}, or --val_images 0 to hold out none")
    fit = len(train_ds) - (val_images if args.tune else 0)
    if args.mode == "linprobe" and fit < 2:  # else every probe stays untrained and --tune "chooses" among equals
        held = f", {val_images} held out for --tune" if args.tune else ""
        refuse(f"the linear probe would train on {fit} image(s) ({len(train_ds)} training images{after}{held}); "
               "its BatchNorm needs at least 2" + ("; lower --val_images" if args.tune else ""))
    _check_labels(_labels(train_ds), classes, after)
    # Said once every check has passed: what is printed before the JSON describes a run that goes ahead.
    if data_from == "checkpoint":
        print(f"data: {data_path}, from the checkpoint (--data_path reads other data)", flush=True)
    if args.val_images is None and uses_val:
        print(f"validation split: {val_images} of the {len(train_ds)} training images{after} held out "
              f"(1/{VAL_PART}, at most {VAL_MAX}; --val_images N sets the number, 0 holds out none)", flush=True)
    result = {"mode": args.mode, "checkpoint": str(args.checkpoint), "source": enc.source, "dataset": dataset,
              "data_path": str(data_cache_dir() / dataset) if data_from == "download" else data_path,
              "data_path_from": data_from,
              "data_images": {"train": len(train_raw), "test": len(test_raw)},
              "pool": args.pool, "input_size": size, "train_images": len(train_ds), "test_images": len(test_ds)}
    if missing:
        result["classes_without_test_images"] = missing

    if args.mode in ("knn", "linprobe"):
        ftr, ytr = extract_features(model, train_loader, args.pool, args.device, precision, progress, "train")
        _check_features(ftr, "train")
        _check_labels(ytr.tolist(), classes, after)  # where the data set could not tell before decoding
        fte, yte = extract_features(model, test_loader, args.pool, args.device, precision, progress, "test")
        _check_features(fte, "test")
        num_classes = len(classes) if classes else int(max(ytr.max(), yte.max())) + 1
        if args.mode == "knn":
            res = knn_evaluation(ftr, ytr, fte, yte, args.k, args.temperature, num_classes, tune=args.tune,
                                 val_images=val_images, seed=args.seed)
        else:
            res = linear_probe_evaluation(
                ftr, ytr, fte, yte, num_classes, blr=0.1 if args.blr is None else args.blr, tune=args.tune,
                val_images=val_images, seed=args.seed, epochs=90 if args.epochs is None else args.epochs,
                weight_decay=0.0 if args.weight_decay is None else args.weight_decay, device=args.device)
        acc = res.pop("accuracy")
        result.update(res)
    else:
        num_classes = len(classes) if classes else None
        if num_classes is None:
            raise ValueError("cannot tell the number of classes of this data set")
        t_train = finetune_transform(size, enc.mean, enc.std)
        train_aug = D.subset(build("train", t_train), args.max_train, seed=args.seed)
        evaluated = D.subset(train_raw, args.max_train, seed=args.seed)  # the same images, without augmentation
        tr, va = split_train_val(len(train_aug), val_images, seed=args.seed)
        fit_ds = torch.utils.data.Subset(train_aug, tr)
        fit_loader = DataLoader(fit_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                                pin_memory=pin, drop_last=len(fit_ds) > args.batch_size,
                                generator=torch.Generator().manual_seed(args.seed))
        val_loader = None
        if va:
            val_loader = DataLoader(torch.utils.data.Subset(evaluated, va), batch_size=args.batch_size,
                                    num_workers=args.num_workers, pin_memory=pin)
        layer_decay = args.layer_decay if args.layer_decay is not None else (
            1.0 if enc.source == "random" else 0.75)
        epochs, seen = 10 if args.epochs is None else args.epochs, []

        def said(epoch, acc):  # printed as it comes: a Ctrl-C later loses none of it
            seen.append(acc)
            print(f"finetune epoch {epoch + 1}/{epochs}: validation accuracy {acc:.4f}", flush=True)

        try:
            res = finetune(model, fit_loader, test_loader, num_classes, epochs=epochs,
                           blr=1e-3 if args.blr is None else args.blr,
                           weight_decay=0.05 if args.weight_decay is None else args.weight_decay, pool=args.pool,
                           device=args.device, precision=precision, seed=args.seed, progress=progress,
                           layer_decay=layer_decay, drop_path=args.drop_path, smoothing=args.smoothing,
                           trainable_blocks=args.trainable_blocks, val_loader=val_loader, return_details=True,
                           on_epoch=said)
        except KeyboardInterrupt:
            done = (f"; the validation accuracies of the {len(seen)} epoch{'s' * (len(seen) > 1)} done are printed "
                    "above") if seen else ""
            raise KeyboardInterrupt(f"interrupted in fine-tuning epoch {len(seen) + 1} of {epochs}, before the "
                                    f"test accuracy{done}") from None
        acc = res.pop("accuracy")
        result.update(res, tuned=False, train_images=len(tr), val_images=len(va),
                      augmentation="RandomResizedCrop(0.2-1) + flip + RandAugment(2, 9)")
    if not (isinstance(acc, (int, float)) and math.isfinite(acc)):
        raise ValueError(f"the {args.mode} accuracy is {acc}, not a number; the training diverged "
                         "(try a smaller --blr)")
    result["accuracy"] = acc
    return result


def main(argv=None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
        result = evaluate(args)
        line = json.dumps(result, allow_nan=False)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback; 130 is the shell's code for it
        print(f"error: {one_line(e) if str(e) else 'interrupted before the accuracy was computed'}",
              file=sys.stderr, flush=True)
        return 130
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
