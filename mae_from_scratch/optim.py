"""The optimizer recipe of MAE pretraining: AdamW groups and the learning-rate schedule.

* learning rate ``lr = blr * effective_batch / 256`` (linear scaling rule), where
  ``effective_batch = batch_size * accum_iter * world_size``;
* AdamW with ``betas=(0.9, 0.95)``; weight decay (0.05) on every parameter except
  1-D ones (LayerNorm gains and biases) and biases, as in the official recipe
  (the ``(1, 1, D)`` cls and mask tokens are decayed there too); frozen
  parameters (the sin-cos tables) are left out of the optimizer;
* per-iteration schedule: linear warmup to ``lr`` over ``warmup_epochs``, then a
  half-cycle cosine down to ``min_lr`` at the end of ``epochs``.

Fine-tuning adds layer-wise learning-rate decay (:func:`param_groups_layer_decay`):
every group carries an ``lr_scale`` that :func:`set_lr` multiplies in.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def effective_lr(blr: float, batch_size: int, accum_iter: int = 1, world_size: int = 1) -> float:
    """``blr * (batch_size * accum_iter * world_size) / 256``."""
    return blr * batch_size * accum_iter * world_size / 256


def param_groups_weight_decay(model: nn.Module, weight_decay: float = 0.05) -> list[dict]:
    """Two AdamW groups: decayed weights, and undecayed 1-D parameters and biases.

    Parameters with ``requires_grad=False`` are left out (the fixed positional
    tables).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW(betas=(0.9, 0.95)) over :func:`param_groups_weight_decay`."""
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=(0.9, 0.95))


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at a fractional ``epoch`` (``step / steps_per_epoch``).

    Linear warmup from 0 to ``lr`` over ``warmup_epochs``, then half a cosine from
    ``lr`` to ``min_lr`` at ``epochs``.
    """
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if epochs <= warmup_epochs:
        return lr
    progress = min((epoch - warmup_epochs) / (epochs - warmup_epochs), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def encoder_layer_id(name: str, depth: int) -> int:
    """The layer of a parameter of a ViT encoder (or of a classifier around it) for layer-wise lr decay.

    The patch embedding, the cls token and the position table are layer 0;
    block ``i`` is layer ``i + 1``; everything after the blocks (the final
    norm, a classification head) is layer ``depth + 1``.  ``name`` may carry a
    prefix such as ``'encoder.'``.
    """
    parts = name.split(".")
    for j, part in enumerate(parts):
        if part == "blocks" and j + 1 < len(parts) and parts[j + 1].isdigit():
            return int(parts[j + 1]) + 1
        if part in ("patch_embed", "cls_token", "pos_embed"):
            return 0
    return depth + 1


def layer_scales(depth: int, layer_decay: float) -> list[float]:
    """``layer_decay ** (depth + 1 - layer)`` for layers ``0 .. depth + 1``: the top layer (head) gets 1."""
    return [layer_decay ** (depth + 1 - layer) for layer in range(depth + 2)]


def param_groups_layer_decay(model: nn.Module, depth: int, weight_decay: float = 0.05, layer_decay: float = 0.75,
                             no_weight_decay: tuple[str, ...] = ("cls_token", "pos_embed")) -> list[dict]:
    """AdamW groups for fine-tuning: one per (layer, decayed or not), each with an ``lr_scale``.

    Layer-wise lr decay (Clark et al. 2020, used by the paper for fine-tuning):
    a parameter of layer ``l`` (:func:`encoder_layer_id`) learns at
    ``lr * layer_decay ** (depth + 1 - l)``, so the head learns at the full
    rate and the patch embedding at ``layer_decay ** (depth + 1)`` of it: the
    lower layers, whose pretrained features are the most general, move least.
    Weight decay as in :func:`param_groups_weight_decay`, and none on the
    tokens named in ``no_weight_decay`` (as the official recipe).  Frozen
    parameters are left out.  Groups carry ``layer`` for inspection.
    """
    scales = layer_scales(depth, layer_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = encoder_layer_id(name, depth)
        decayed = not (p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in no_weight_decay)
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scales[layer],
            "layer": layer,
        })
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]
