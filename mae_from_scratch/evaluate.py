"""How good are the features?  kNN, linear probe and fine-tuning on labelled images.

``python -m mae_from_scratch.evaluate MODE --checkpoint PATH [--data_path ROOT] ...``
with ``MODE`` one of:

``knn``       frozen features, cosine similarity, the ``k = 20`` nearest training
              images vote with weights ``exp(similarity / 0.07)``;
``linprobe``  frozen features, a linear classifier after a BatchNorm without
              affine parameters (as in the paper, which found it makes the
              probe insensitive to the features' scale);
``finetune``  the encoder plus a linear head, trained end to end with the
              paper's recipe at small scale (see :func:`finetune`): layer-wise
              lr decay, drop path, label smoothing, RandAugment; or only its
              last ``--trainable_blocks`` blocks (partial fine-tuning).

The features are the encoder's output (after its final LayerNorm) on *all*
patches, no masking: the cls token (``--pool cls``, the default, as the
paper's linear probe) or the mean of the patch tokens (``--pool mean``).

Honest numbers: a hyperparameter is never chosen on the test split.
``--val_images N`` images of the *training* split, a seeded random subset
disjoint from the rest (:func:`split_train_val`), are held out as a
validation split; by default a fifth of the training split, at most 5000
(:func:`default_val_images`: 5000 of CIFAR-10's 50000, 819 of the offline
photos' 4096), said in one printed line.  With ``--tune`` the kNN's ``k``
(10, 20 or 50) or the probe's ``blr`` (0.03, 0.1 or 0.3) is chosen by the
accuracy on that split of a model trained on the rest; the chosen value is then used on the whole
training split and the test split is scored once.  Without ``--tune`` the
fixed defaults are used, nothing is held out, and the result says
``"tuned": false``.  Fine-tuning trains on the training split minus the
validation images, reports the validation accuracy after every epoch (what any
choice, the number of epochs say, should be made on) and the test accuracy
once, at the end (``--val_images 0``: train on everything, no validation).

Works with our checkpoints (which carry the model's configuration and the
normalization statistics used in pretraining) and with the official ones
(``{'model': state_dict}``: give ``--model``, or it is inferred from the
shapes; ImageNet statistics).  ``--checkpoint random`` evaluates a randomly
initialized encoder, the baseline every number should beat; with
``finetune`` it is the paper's "trained from scratch" baseline: a ViT of the
architecture ``--model`` (give the pretrained one's), trained on the same
labels for the same epochs, without pretraining and, unless ``--layer_decay``
says otherwise, without layer decay (as the paper trains that baseline).  The
last line printed is a JSON object with the accuracy.

Departure from the official linear probe, for speed on small machines: the
features are computed once, without augmentation, and the probe trains on
them (SGD with momentum and a cosine schedule instead of LARS).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable

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
KNN_GRID = (10, 20, 50)  # the k that --tune tries
BLR_GRID = (0.03, 0.1, 0.3)  # the linear probe's base learning rates that --tune tries
VAL_PART, VAL_MAX = 5, 5000  # without --val_images: 1 / VAL_PART of the training split held out, at most VAL_MAX


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
# Honest evaluation: choose on a validation split carved out of the training split
def split_train_val(n: int, val_images: int = 5000, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` training indices into ``(train', val)``, disjoint, covering all ``n``.

    ``val`` is ``val_images`` indices drawn by a permutation seeded with
    ``seed`` (the same split on every call, every machine); ``train'`` is the
    rest.  Both lists are sorted.  ``val_images=0`` gives ``(all, [])``.  At
    least one image must stay in ``train'``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, got {n!r}")
    if isinstance(val_images, bool) or not isinstance(val_images, int) or val_images < 0:
        raise ValueError(f"val_images must be a whole number >= 0, got {val_images!r}")
    if val_images and val_images >= n:
        raise ValueError(f"val_images={val_images} leaves nothing to train on: the training split has {n} images "
                         f"(hold out at most {max(n - 1, 0)})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[val_images:].tolist()), sorted(perm[:val_images].tolist())


def default_val_images(n: int) -> int:
    """The validation images held out of ``n`` training images when no number is given:
    a fifth (``n // VAL_PART``, as chapter 9 splits the offline photos), at most ``VAL_MAX``
    (5000 of CIFAR-10's 50000, the usual 45000/5000 split), at least 1 so that a small split
    can still be tuned on, and 0 when ``n < 2`` (holding out the only image would leave
    nothing to train on)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, got {n!r}")
    if n < 2:
        return 0
    return max(1, min(VAL_MAX, n // VAL_PART))


def choose_on_val(candidates, val_accuracy: Callable[[object], float]) -> tuple[object, dict]:
    """The candidate with the highest ``val_accuracy(candidate)``, and every candidate's score.

    Ties go to the earliest candidate in ``candidates`` order.  Returns
    ``(chosen, {candidate: accuracy})``.
    """
    scores = {c: float(val_accuracy(c)) for c in candidates}
    if not scores:
        raise ValueError("no candidates to choose from")
    best = max(scores.values())
    return next(c for c in candidates if scores[c] == best), scores


def _key(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _tune_on_val(result: dict, train_labels, grid, val_images: int | None, seed: int, score):
    """Hold ``val_images`` training images out (:func:`split_train_val`; ``None``: the
    :func:`default_val_images`), score every candidate in ``grid`` with
    ``score(train_idx, val_idx, candidate)``, record the scores in ``result`` and return the
    best candidate (:func:`choose_on_val`)."""
    if val_images is None:
        val_images = default_val_images(len(train_labels))
    tr, va = split_train_val(len(train_labels), val_images, seed)
    if not va:
        raise ValueError("tuning needs a validation split: val_images must be at least 1")
    tr, va = torch.tensor(tr), torch.tensor(va)
    chosen, scores = choose_on_val(list(grid), lambda c: score(tr, va, c))
    result.update(val_accuracy={_key(c): a for c, a in scores.items()}, val_images=len(va), grid=list(grid))
    return chosen


def knn_evaluation(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07,
                   num_classes: int | None = None, tune: bool = False, grid=KNN_GRID,
                   val_images: int | None = None, seed: int = 0) -> dict:
    """kNN accuracy on the test split, with ``k`` fixed or chosen on a validation split.

    ``tune=False``: ``k`` as given, all training features vote, the result
    holds ``"tuned": False``.  ``tune=True``: :func:`split_train_val` holds out
    ``val_images`` training images (``None``: :func:`default_val_images`), each
    ``k`` in ``grid`` is scored on them with the rest as neighbours, the best
    (:func:`choose_on_val`) is used with *all* training features as neighbours,
    and the test split is scored once.
    The test features and labels are not touched before that choice.

    Returns ``{"accuracy", "k", "temperature", "tuned"}`` plus, when tuned,
    ``"val_accuracy"`` (``{str(k): accuracy}``), ``"val_images"`` and ``"grid"``.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    result = {"tuned": bool(tune)}
    if tune:
        k = _tune_on_val(result, train_labels, grid, val_images, seed, lambda tr, va, c: knn_accuracy(
            train_feats[tr], train_labels[tr], train_feats[va], train_labels[va], c, temperature, num_classes))
    acc = knn_accuracy(train_feats, train_labels, test_feats, test_labels, k, temperature, num_classes)
    result.update(k=k, temperature=temperature, accuracy=acc)
    return result


def linear_probe_evaluation(train_feats, train_labels, test_feats, test_labels, num_classes: int | None = None,
                            blr: float = 0.1, tune: bool = False, grid=BLR_GRID, val_images: int | None = None,
                            seed: int = 0, epochs: int = 90, batch_size: int = 256, weight_decay: float = 0.0,
                            device="cpu") -> dict:
    """Linear-probe accuracy on the test split, with ``blr`` fixed or chosen on a validation split.

    As :func:`knn_evaluation`: with ``tune=True`` a probe per ``blr`` in
    ``grid`` is trained on the training features minus ``val_images`` held-out
    ones and scored on those; the best ``blr`` then trains a probe on *all*
    training features, scored once on the test split.

    Returns ``{"accuracy", "blr", "epochs", "tuned"}`` plus, when tuned,
    ``"val_accuracy"`` (``{str(blr): accuracy}``), ``"val_images"`` and ``"grid"``.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    probe_args = dict(num_classes=num_classes, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay,
                      seed=seed, device=device)
    result = {"tuned": bool(tune)}
    if tune:
        blr = _tune_on_val(result, train_labels, grid, val_images, seed, lambda tr, va, c: linear_probe(
            train_feats[tr], train_labels[tr], train_feats[va], train_labels[va], blr=c, **probe_args))
    acc = linear_probe(train_feats, train_labels, test_feats, test_labels, blr=blr, **probe_args)
    result.update(blr=blr, epochs=epochs, accuracy=acc)
    return result


# ----------------------------------------------------------------------------------
# Fine-tuning: the paper's recipe at small scale
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


def finetune_transform(input_size: int, mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD, rand_augment: bool = True):
    """Fine-tuning augmentation, PIL -> ``(3, s, s)``: random resized crop (20-100% of the image,
    bicubic), horizontal flip, ``RandAugment(num_ops=2, magnitude=9)``, normalization.

    Why RandAugment and not mixup/cutmix (the paper uses all three on
    ImageNet, over 50-100 epochs): at this scale the runs are a few epochs on
    small images, and mixup/cutmix are regularizers that pay off only over
    long schedules -- in a short one they mostly slow the fit.  RandAugment
    also keeps hard labels (so label smoothing and the accuracy count stay
    plain), and it runs per image inside the data loader's workers, off the
    training loop.  The crop keeps at least 20% of the image, as in
    pretraining: the paper's 8% of a 32-pixel image leaves about 9x9 pixels.
    """
    from torchvision import transforms as T

    steps = [T.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
             T.RandomHorizontalFlip()]
    if rand_augment:
        steps.append(T.RandAugment(num_ops=2, magnitude=9))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def freeze_for_partial_finetune(encoder: MaskedAutoencoderViT, trainable_blocks: int | None) -> int:
    """Leave only the last ``trainable_blocks`` blocks and the final norm trainable (paper Figure 9).

    ``None`` trains every block (full fine-tuning).  ``0`` freezes every
    block: only the final norm (and the classifier's head, outside the
    encoder) learn, a linear probe on the pooled feature.  The decoder, the
    mask token and the fixed sin-cos table never train; the patch embedding
    and the cls token train only in full fine-tuning.  Returns the number of
    trainable blocks.
    """
    depth = len(encoder.blocks)
    k = depth if trainable_blocks is None else trainable_blocks
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= depth:
        raise ValueError(f"trainable_blocks must be a whole number from 0 to the encoder's depth {depth}, "
                         f"got {trainable_blocks!r}")
    first = depth - k
    for name, p in encoder.named_parameters():
        if name.startswith(("decoder_", "mask_token")) or name == "pos_embed":
            train = False
        elif name.startswith("blocks."):
            train = int(name.split(".")[1]) >= first
        elif name.startswith(("patch_embed.", "cls_token")):
            train = k == depth
        else:  # the final norm
            train = True
        p.requires_grad_(train)
    return k


@torch.no_grad()
def _accuracy(model: nn.Module, loader, device, precision) -> float:
    model.eval()
    correct = total = 0
    for imgs, y in loader:
        with precision.autocast(device):
            pred = model(imgs.to(device)).argmax(1).cpu()
        correct += (pred == torch.as_tensor(y)).sum().item()
        total += pred.numel()
    return correct / max(total, 1)


def finetune(encoder: MaskedAutoencoderViT, train_loader, test_loader, num_classes: int, epochs: int = 10,
             blr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 1.0, pool: str = "cls",
             device="cpu", precision=None, seed: int = 0, progress: bool = False, *, layer_decay: float = 0.75,
             drop_path: float = 0.1, smoothing: float = 0.1, trainable_blocks: int | None = None,
             val_loader=None, min_lr: float = 1e-6, return_details: bool = False):
    """Fine-tune encoder + linear head with the paper's recipe; return the test accuracy.

    The recipe (He et al. 2021, appendix A.1), scaled down:

    * AdamW (``betas=(0.9, 0.999)``), ``lr = blr * batch / 256``, linear warmup
      over ``warmup_epochs`` then a cosine to ``min_lr``, weight decay
      ``weight_decay`` (none on biases, norms and the cls token);
    * layer-wise lr decay ``layer_decay`` (paper: 0.75 for ViT-B, 0.65 for
      ViT-L/H): the patch embedding and cls token are layer 0, block ``i`` is
      layer ``i + 1``, the final norm and the head ``depth + 1``, and layer
      ``l`` learns at ``lr * layer_decay ** (depth + 1 - l)``
      (:func:`~mae_from_scratch.optim.param_groups_layer_decay`); 1 turns it off;
    * drop path ``drop_path`` (paper: 0.1 for ViT-B), rising linearly over the
      blocks (:meth:`~mae_from_scratch.model.MaskedAutoencoderViT.set_drop_path`),
      switched off again when training ends;
    * cross-entropy with label smoothing ``smoothing`` (paper: 0.1);
    * the augmentation is the train loader's business (:func:`finetune_transform`).

    ``trainable_blocks=K`` fine-tunes only the last ``K`` blocks, the final
    norm and the head (:func:`freeze_for_partial_finetune`, paper Figure 9);
    frozen blocks get no drop path.  The decoder is never used.  The
    ``encoder`` is trained in place.

    A randomly initialized ``encoder`` gives the paper's from-scratch
    baseline (a ViT trained with labels only, for the same budget); the paper
    trains that one without layer decay (``layer_decay=1``).

    ``val_loader`` (held-out *training* images) is scored after every epoch,
    ``test_loader`` once, at the end (``None``: not scored).  Returns the test
    accuracy, or with ``return_details=True`` a dict: ``accuracy``,
    ``val_accuracy`` (one per epoch, empty without ``val_loader``), ``epochs``
    and the recipe's settings.
    """
    from .optim import lr_at, param_groups_layer_decay, set_lr
    from .train_step import train_step

    for name, value in (("layer_decay", layer_decay), ("drop_path", drop_path), ("smoothing", smoothing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1 = no decay), got {layer_decay}")
    if not 0 <= drop_path < 1 or not 0 <= smoothing < 1:
        raise ValueError(f"drop_path and smoothing must be in [0, 1), got {drop_path} and {smoothing}")
    precision = precision or choose_precision(device, "fp32")
    torch.manual_seed(seed)
    model = Classifier(encoder, num_classes, pool).to(device)
    depth = len(encoder.blocks)
    k = freeze_for_partial_finetune(encoder, trainable_blocks)
    rates = encoder.set_drop_path(drop_path)
    for i, blk in enumerate(encoder.blocks):
        if i < depth - k:
            blk.drop_path.p = 0.0  # a frozen block is a fixed feature extractor
    trainable = nn.ModuleDict({"encoder": encoder, "head": model.head})
    groups = param_groups_layer_decay(trainable, depth, weight_decay, layer_decay)
    batch = getattr(train_loader, "batch_size", None) or 256
    lr = blr * batch / 256
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    scaler = precision.grad_scaler(device)
    steps = len(train_loader)
    val_accuracy = []
    try:
        for epoch in range(epochs):
            model.train()
            for i, (imgs, y) in enumerate(tqdm(train_loader, desc=f"finetune {epoch}", disable=not progress,
                                               mininterval=2.0)):
                set_lr(opt, lr_at(epoch + i / steps, lr, min_lr, warmup_epochs, epochs))
                train_step(model, opt, lambda batch: F.cross_entropy(model(batch[0].to(device)),
                                                                     torch.as_tensor(batch[1]).to(device),
                                                                     label_smoothing=smoothing),
                           [(imgs, y)], device=device, precision=precision, scaler=scaler,
                           where=f"fine-tuning epoch {epoch}, step {i}")
            if val_loader is not None:
                val_accuracy.append(_accuracy(model, val_loader, device, precision))
        acc = None if test_loader is None else _accuracy(model, test_loader, device, precision)
    finally:
        encoder.set_drop_path(0.0)  # back to the default model
    if not return_details:
        return acc
    return {"accuracy": acc, "val_accuracy": val_accuracy, "epochs": epochs, "blr": blr, "lr": lr,
            "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "layer_decay": layer_decay,
            "drop_path": drop_path, "drop_path_per_block": [blk_rate if i >= depth - k else 0.0
                                                            for i, blk_rate in enumerate(rates)],
            "smoothing": smoothing, "trainable_blocks": k, "pool": pool,
            "trainable_params": sum(p.numel() for p in trainable.parameters() if p.requires_grad)}


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

    train_raw = D.build_dataset(dataset, "train", data_path, transform=t_eval)
    classes = getattr(train_raw, "classes", None)
    # The test split is labelled with the train split's class -> index map.
    test_raw = D.build_dataset(dataset, "test", data_path, transform=t_eval, classes=classes)
    missing = getattr(getattr(test_raw, "base", None), "missing_classes", [])
    train_ds, train_loader = loader(train_raw, limit=args.max_train)
    test_ds, test_loader = loader(test_raw, limit=args.max_test)
    # The validation images are needed by --tune and by finetune; refuse a split that leaves nothing to train on
    # now, before any image is decoded.  Without --val_images the number follows the training split's size.
    uses_val = args.tune or args.mode == "finetune"
    after = " (after --max_train)" if args.max_train else ""
    val_images = args.val_images
    if val_images is None:
        val_images = default_val_images(len(train_ds))
        if args.tune and val_images == 0:
            refuse(f"--tune needs at least 2 training images, one to hold out and one to train on: the training "
                   f"split has {len(train_ds)}{after}")
        if uses_val:
            print(f"validation split: {val_images} of the {len(train_ds)} training images{after} held out "
                  f"(1/{VAL_PART}, at most {VAL_MAX}; --val_images N sets the number, 0 holds out none)",
                  flush=True)
    elif uses_val and val_images >= len(train_ds):
        refuse(f"--val_images {val_images} leaves nothing to train on: the training split has {len(train_ds)} "
               f"images{after}; use at most {len(train_ds) - 1}, or --val_images 0 to hold out none")
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
        train_aug = D.subset(D.build_dataset(dataset, "train", data_path, transform=t_train), args.max_train,
                             seed=args.seed)
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
        res = finetune(model, fit_loader, test_loader, num_classes, epochs=10 if args.epochs is None else args.epochs,
                       blr=1e-3 if args.blr is None else args.blr,
                       weight_decay=0.05 if args.weight_decay is None else args.weight_decay, pool=args.pool,
                       device=args.device, precision=precision, seed=args.seed, progress=progress,
                       layer_decay=layer_decay, drop_path=args.drop_path, smoothing=args.smoothing,
                       trainable_blocks=args.trainable_blocks, val_loader=val_loader, return_details=True)
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
    except (D.DataError, OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
