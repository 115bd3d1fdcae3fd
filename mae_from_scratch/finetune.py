"""Fine-tuning: the encoder and a linear head trained end to end on labelled images.

The paper's recipe at small scale (:func:`finetune`): layer-wise lr decay,
drop path, label smoothing, and RandAugment in the train loader
(:func:`finetune_transform`); or only the encoder's last blocks
(:func:`freeze_for_partial_finetune`, partial fine-tuning).  Every step goes
through :func:`~mae_from_scratch.train_step.train_step`, as pretraining's do.

Where it departs from the paper's recipe and the official code, each
departure is named where it is made: a milder RandAugment and no mixup,
cutmix or random erasing (:func:`finetune_transform`), and a head on the
pretraining encoder as it is, with its final LayerNorm and its frozen sin-cos
position table (:class:`Classifier`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import data as D
from .model import MaskedAutoencoderViT
from .optim import lr_at, param_groups_layer_decay, set_lr
from .precision import choose_precision
from .train_step import train_step


class Classifier(nn.Module):
    """The MAE encoder and a linear head: ``(N, 3, s, s) -> (N, num_classes)``.

    The pooled feature is
    :meth:`~mae_from_scratch.model.MaskedAutoencoderViT.forward_features`:
    the encoder's final LayerNorm applied to every token, then the cls token
    (``pool='cls'``) or the mean of the patch tokens (``pool='mean'``).  The
    head is a linear layer with weights drawn at std 2e-5, as in the official
    code.  Two departures from the official fine-tuning model, both for one
    reason: a single encoder definition, the pretraining one, serves every
    evaluation (linear probe, k-NN, partial and full fine-tuning), and a
    fine-tuned encoder keeps the pretraining state dict.

    * The norm.  The official model with global pooling (its default) drops
      the encoder's final norm, averages the patch tokens *before* any norm,
      and normalizes the average with a new, trained LayerNorm (``fc_norm``).
      Ours normalizes each token with the pretrained final norm, then
      averages; as LayerNorm is not linear the two features differ, and
      ``fc_norm`` starts from the identity where ours starts from the
      pretrained scale and shift.  With ``pool='cls'`` (our default, and
      the official ``--cls_token`` option, which the official notes report
      performs similarly) the two heads are the same computation.
    * The position table.  The official one is a parameter that trains
      during fine-tuning, starting from the pretrained sin-cos values.  Ours
      is the fixed sin-cos table and stays frozen (``requires_grad=False``);
      what is given up is the training of ``(1 + L) x D`` numbers (151k of
      ViT-B's 86M), so with ``pool='cls'`` that is the only difference.
    """

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

    The RandAugment is milder than the paper's.  torchvision's magnitude runs
    over 31 bins, 0 to 30, so ``magnitude=9`` is about 0.3 of each
    operation's largest change (a 9-degree rotation of at most 30).  The
    paper's ``RandAug (9, 0.5)`` (Table 9), timm's ``rand-m9-mstd0.5-inc1``
    in the official code, is magnitude 9 on a 0-10 scale, about 0.9 of the
    largest change (27 degrees), with Gaussian noise of std 0.5 on the
    magnitude at every use; timm also applies each chosen operation with
    probability 0.5, and its list of operations differs a little.
    ``T.RandAugment(2, 27)`` would come close to the paper's mean strength.

    Mixup (0.8) and cutmix (1.0), which the paper uses with RandAugment
    (appendix A.1, Table 9, over 50-100 ImageNet epochs), are left out, and
    so is the official code's random erasing (0.25, whose effect its notes
    call smaller than the run-to-run variance).  The reason for these and
    for the mild RandAugment is the same: at this scale the runs are a few
    epochs on small images, and strong regularizers pay off only over long
    schedules -- in a short one they mostly slow the fit.  Without mixup and
    cutmix the labels also stay hard (so label smoothing and the accuracy
    count stay plain), and everything here runs per image inside the data
    loader's workers, off the training loop.  The crop keeps at least 20% of
    the image, as in pretraining: the paper's 8% of a 32-pixel image leaves
    about 9x9 pixels.
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
             val_loader=None, min_lr: float = 1e-6, return_details: bool = False, on_epoch=None):
    """Fine-tune encoder + linear head with the paper's recipe; return the test accuracy.

    The recipe (He et al. 2021, appendix A.1), scaled down:

    * AdamW (``betas=(0.9, 0.999)``), ``lr = blr * batch / 256``, linear warmup
      over ``warmup_epochs`` then a cosine to ``min_lr``, weight decay
      ``weight_decay`` (none on biases, norms and the cls token);
    * layer-wise lr decay ``layer_decay`` (the paper's Table 9: 0.75; the
      official fine-tuning scripts, FINETUNE.md: 0.65 for ViT-B, with base lr
      5e-4, and 0.75 for ViT-L and ViT-H): the patch embedding and cls token
      are layer 0, block ``i`` is layer ``i + 1``, the final norm and the
      head ``depth + 1``, and layer ``l`` learns at
      ``lr * layer_decay ** (depth + 1 - l)``
      (:func:`~mae_from_scratch.optim.param_groups_layer_decay`); 1 turns it off;
    * drop path ``drop_path`` (paper: 0.1 for ViT-B), rising linearly over the
      blocks (:meth:`~mae_from_scratch.model.MaskedAutoencoderViT.set_drop_path`),
      switched off again when training ends;
    * cross-entropy with label smoothing ``smoothing`` (paper: 0.1);
    * the augmentation is the train loader's business
      (:func:`finetune_transform`, which names what it leaves out: mixup,
      cutmix, and two thirds of RandAugment's strength);
    * the head is a :class:`Classifier` on the pretraining encoder as it is,
      pooled by ``pool`` (``'cls'`` by default; the official default is the
      global pool).  It departs from the official head in two ways, named
      there with their reason: the pooled feature goes through the
      encoder's pretrained final norm token by token instead of a new
      ``fc_norm`` after the average, and the sin-cos position table stays
      frozen instead of training.

    ``trainable_blocks=K`` fine-tunes only the last ``K`` blocks, the final
    norm and the head (:func:`freeze_for_partial_finetune`, paper Figure 9);
    frozen blocks get no drop path.  The decoder is never used.  The
    ``encoder`` is trained in place.

    A randomly initialized ``encoder`` gives the paper's from-scratch
    baseline (a ViT trained with labels only, for the same budget); the paper
    trains that one without layer decay (``layer_decay=1``).

    ``val_loader`` (held-out *training* images) is scored after every epoch,
    ``test_loader`` once, at the end (``None``: not scored); ``on_epoch(epoch, val_accuracy)``,
    when given, hears each validation accuracy as it comes, so that a run stopped part-way
    (Ctrl-C) has told what it measured.  Returns the test
    accuracy, or with ``return_details=True`` a dict: ``accuracy``,
    ``val_accuracy`` (one per epoch, empty without ``val_loader``), ``epochs``
    and the recipe's settings.
    """
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
                if on_epoch is not None:
                    on_epoch(epoch, val_accuracy[-1])
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
