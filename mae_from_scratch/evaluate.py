"""How good are the features?  kNN, linear probe and fine-tuning on labelled images.

``python -m mae_from_scratch.evaluate MODE --checkpoint PATH [--data_path ROOT] ...``
with ``MODE`` one of:

``knn``       frozen features, cosine similarity, the ``k = 20`` nearest training
              images vote with weights ``exp(similarity / 0.07)``;
``linprobe``  frozen features, a linear classifier after a BatchNorm without
              affine parameters (as in the paper, which found it makes the
              probe insensitive to the features' scale);
``finetune``  the whole encoder plus a linear head, trained end to end.

The features are the encoder's output (after its final LayerNorm) on *all*
patches, no masking: the cls token (``--pool cls``, the default, as the
paper's linear probe) or the mean of the patch tokens (``--pool mean``).

Works with our checkpoints (which carry the model's configuration and the
normalization statistics used in pretraining) and with the official ones
(``{'model': state_dict}``: give ``--model``, or it is inferred from the
shapes; ImageNet statistics).  ``--checkpoint random`` evaluates a randomly
initialized encoder, the baseline every number should beat.  The last line
printed is a JSON object with the accuracy.

Departure from the official linear probe, for speed on small machines: the
features are computed once, without augmentation, and the probe trains on
them (SGD with momentum and a cosine schedule instead of LARS).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import data as D
from .checkpoint import Encoder, load_encoder_checkpoint
from .cli_checks import OneLineParser, check_device, check_number, check_whole, one_line, refuse
from .model import MODELS, MaskedAutoencoderViT, create_model
from .precision import PRECISIONS, choose_precision

MODES = ("knn", "linprobe", "finetune")
POOLS = ("cls", "mean")


# ----------------------------------------------------------------------------------
# The encoder to evaluate
def load_encoder(checkpoint: str | None, model: str | None = None, input_size: int | None = None,
                 dataset: str | None = None, seed: int = 0) -> Encoder:
    """The encoder from a checkpoint path (ours or official, see
    :func:`~mae_from_scratch.checkpoint.load_encoder_checkpoint`), or with
    ``'random'`` (or no checkpoint) a randomly initialized ``model``: the baseline.

    ``input_size`` other than the pretraining one regenerates the sin-cos positions.
    """
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if checkpoint in (None, "", "random"):
        name = model or "mae_vit_tiny_patch4_32"
        with torch.device("meta"):  # only the configuration is needed
            patch = create_model(name).patch_size
        if input_size is not None and input_size % patch:
            raise ValueError(f"input_size {input_size} is not divisible by the patch size {patch} of {name}; "
                             f"use a multiple of {patch}")
        torch.manual_seed(seed)
        m = create_model(name, **({"img_size": input_size} if input_size is not None else {}))
        info = D.dataset_info(dataset or "photos")
        return Encoder(m, info.mean, info.std, dataset, None, "random")
    return load_encoder_checkpoint(checkpoint, model, input_size)


# ----------------------------------------------------------------------------------
# Features
@torch.no_grad()
def extract_features(model: MaskedAutoencoderViT, loader, pool: str = "cls", device="cpu", precision=None,
                     progress: bool = False, desc: str = "features"):
    """Encoder features of every image in ``loader``: ``(N, D)`` float32 and labels ``(N,)``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    precision = precision or choose_precision(device, "fp32")
    model.eval()
    feats, labels = [], []
    for imgs, y in tqdm(loader, desc=desc, disable=not progress, mininterval=2.0):
        with precision.autocast(device):
            f = model.forward_features(imgs.to(device, non_blocking=True), pool=pool)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def encoder_attention(model: MaskedAutoencoderViT, imgs: torch.Tensor) -> torch.Tensor:
    """The attention weights of every encoder block on all patches (no masking):
    ``(N, depth, heads, 1 + L, 1 + L)``, token 0 the cls token.

    Each block's attention input (the output of its ``norm1``) is caught with a
    forward hook and the weights ``softmax(q k^T / sqrt(d))`` recomputed from its
    ``attn.qkv``, the same numbers the fused kernel uses without storing them.
    """
    from einops import rearrange

    model.eval()
    inputs = []
    hooks = [blk.norm1.register_forward_hook(lambda _m, _i, out: inputs.append(out)) for blk in model.blocks]
    try:
        model.forward_features(imgs.to(next(model.parameters()).device), pool="none")
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for blk, x in zip(model.blocks, inputs):
        q, k, _ = rearrange(blk.attn.qkv(x), "n t (three h d) -> three n h t d", three=3, h=blk.attn.num_heads)
        maps.append((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1))
    return torch.stack(maps, dim=1).float().cpu()


# ----------------------------------------------------------------------------------
# kNN
@torch.no_grad()
def knn_predict(train_feats, train_labels, test_feats, k: int = 20, temperature: float = 0.07,
                num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Labels predicted for ``test_feats (M, D)`` by a weighted vote of the ``k`` most
    cosine-similar rows of ``train_feats (N, D)``; weight ``exp(sim / temperature)``."""
    if train_feats.shape[0] == 0:
        raise ValueError("the kNN training set is empty")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    preds = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``test_labels``."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (pred == test_labels).float().mean().item()


# ----------------------------------------------------------------------------------
# Linear probe
class LinearProbe(nn.Module):
    """``BatchNorm1d(D, affine=False)`` then ``Linear(D, num_classes)``: ``(N, D) -> (N, C)``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(x))


def linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes: int | None = None,
                 epochs: int = 90, batch_size: int = 256, blr: float = 0.1, weight_decay: float = 0.0,
                 seed: int = 0, device="cpu", return_probe: bool = False):
    """Train :class:`LinearProbe` on frozen features and return the test accuracy.

    SGD (momentum 0.9), ``lr = blr * batch_size / 256``, cosine schedule over
    ``epochs``, cross-entropy.  Deterministic for a given ``seed``.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(train_feats.shape[1], num_classes).to(device)
    lr = blr * batch_size / 256
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    x, y = train_feats.to(device).float(), train_labels.to(device)
    n = x.shape[0]
    steps_per_epoch = max(math.ceil(n / batch_size), 1)
    total = epochs * steps_per_epoch
    step = 0
    probe.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    probe.eval()
    with torch.no_grad():
        acc = (probe(test_feats.to(device).float()).argmax(1).cpu() == test_labels).float().mean().item()
    return (acc, probe) if return_probe else acc


# ----------------------------------------------------------------------------------
# Fine-tuning (minimal: no layer decay, mixup or drop path)
class Classifier(nn.Module):
    """The MAE encoder and a linear head: ``(N, 3, s, s) -> (N, num_classes)``."""

    def __init__(self, encoder: MaskedAutoencoderViT, num_classes: int, pool: str = "cls"):
        super().__init__()
        self.encoder = encoder
        self.pool = pool
        self.head = nn.Linear(encoder.norm.normalized_shape[0], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(imgs, pool=self.pool))


def finetune(encoder: MaskedAutoencoderViT, train_loader, test_loader, num_classes: int, epochs: int = 10,
             blr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 1.0, pool: str = "cls",
             device="cpu", precision=None, seed: int = 0, progress: bool = False) -> float:
    """Train encoder + head end to end (AdamW, warmup + cosine) and return the test accuracy.

    The decoder is not used; its parameters get no gradient and are left out.
    """
    from .optim import lr_at, param_groups_weight_decay, set_lr

    precision = precision or choose_precision(device, "fp32")
    torch.manual_seed(seed)
    model = Classifier(encoder, num_classes, pool).to(device)
    enc_names = {n for n, _ in encoder.named_parameters() if not n.startswith(("decoder_", "mask_token"))}
    trainable = nn.ModuleDict({"encoder": encoder, "head": model.head})
    for n, p in encoder.named_parameters():
        p.requires_grad_(n in enc_names and n not in ("pos_embed",))
    batch = getattr(train_loader, "batch_size", None) or 256
    lr = blr * batch / 256
    opt = torch.optim.AdamW(param_groups_weight_decay(trainable, weight_decay), lr=lr, betas=(0.9, 0.999))
    scaler = precision.grad_scaler(device)
    steps = len(train_loader)
    for epoch in range(epochs):
        model.train()
        for i, (imgs, y) in enumerate(tqdm(train_loader, desc=f"finetune {epoch}", disable=not progress,
                                           mininterval=2.0)):
            set_lr(opt, lr_at(epoch + i / steps, lr, 1e-6, warmup_epochs, epochs))
            with precision.autocast(device):
                loss = F.cross_entropy(model(imgs.to(device)), torch.as_tensor(y).to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for imgs, y in test_loader:
            with precision.autocast(device):
                pred = model(imgs.to(device)).argmax(1).cpu()
            correct += (pred == torch.as_tensor(y)).sum().item()
            total += pred.numel()
    return correct / max(total, 1)


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
    p.add_argument("--k", default=20, type=int, help="kNN: neighbours")
    p.add_argument("--temperature", default=0.07, type=float, help="kNN: vote weight exp(sim / T)")
    p.add_argument("--epochs", default=None, type=int, help="linprobe (default 90) / finetune (default 10)")
    p.add_argument("--blr", default=None, type=float, help="linprobe (default 0.1) / finetune (default 1e-3)")
    p.add_argument("--weight_decay", default=None, type=float)
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


def evaluate(args: argparse.Namespace) -> dict:
    """Run one evaluation from parsed ``args``; returns the result dict the CLI prints.

    Flags are checked first (:func:`check_args`), then the checkpoint (non-finite
    weights are refused), then the class folders, before any image is decoded.
    """
    check_args(args)
    enc = load_encoder(args.checkpoint, args.model, args.input_size,
                       dataset=None if args.dataset == "auto" else args.dataset, seed=args.seed)
    dataset = args.dataset
    if dataset == "auto":
        dataset = enc.dataset or ("imagefolder" if args.data_path else "photos")
    data_path = args.data_path if args.data_path is not None else (enc.data_path if dataset == enc.dataset else None)
    if enc.source == "random":
        info = D.dataset_info(dataset)
        enc.mean, enc.std = info.mean, info.std
    model = enc.model.to(args.device)
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

    train_raw = D.build_dataset(dataset, "train", data_path, transform=t_eval)
    classes = getattr(train_raw, "classes", None)
    # The test split is labelled with the train split's class -> index map.
    test_raw = D.build_dataset(dataset, "test", data_path, transform=t_eval, classes=classes)
    missing = getattr(getattr(test_raw, "base", None), "missing_classes", [])
    train_ds, train_loader = loader(train_raw, limit=args.max_train)
    test_ds, test_loader = loader(test_raw, limit=args.max_test)
    result = {"mode": args.mode, "checkpoint": str(args.checkpoint), "source": enc.source, "dataset": dataset,
              "pool": args.pool, "input_size": size, "train_images": len(train_ds), "test_images": len(test_ds)}
    if missing:
        result["classes_without_test_images"] = missing

    if args.mode in ("knn", "linprobe"):
        ftr, ytr = extract_features(model, train_loader, args.pool, args.device, precision, progress, "train")
        _check_features(ftr, "train")
        fte, yte = extract_features(model, test_loader, args.pool, args.device, precision, progress, "test")
        _check_features(fte, "test")
        num_classes = len(classes) if classes else int(max(ytr.max(), yte.max())) + 1
        if args.mode == "knn":
            acc = knn_accuracy(ftr, ytr, fte, yte, args.k, args.temperature, num_classes)
            result.update(k=args.k, temperature=args.temperature)
        else:
            epochs = 90 if args.epochs is None else args.epochs
            blr = 0.1 if args.blr is None else args.blr
            acc = linear_probe(ftr, ytr, fte, yte, num_classes, epochs=epochs, blr=blr,
                               weight_decay=0.0 if args.weight_decay is None else args.weight_decay,
                               seed=args.seed, device=args.device)
            result.update(epochs=epochs, blr=blr)
    else:
        t_train = D.pretrain_transform(size, enc.mean, enc.std)
        train_aug = D.build_dataset(dataset, "train", data_path, transform=t_train)
        train_ds, train_loader = loader(train_aug, shuffle=True, limit=args.max_train)
        num_classes = len(classes) if classes else None
        if num_classes is None:
            raise ValueError("cannot tell the number of classes of this data set")
        epochs = 10 if args.epochs is None else args.epochs
        blr = 1e-3 if args.blr is None else args.blr
        acc = finetune(model, train_loader, test_loader, num_classes, epochs=epochs, blr=blr,
                       weight_decay=0.05 if args.weight_decay is None else args.weight_decay, pool=args.pool,
                       device=args.device, precision=precision, seed=args.seed, progress=progress)
        result.update(epochs=epochs, blr=blr)
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
    except (D.DataError, OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
