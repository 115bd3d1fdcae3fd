"""The optimizer recipe of MAE pretraining: AdamW groups and the learning-rate schedule.

* learning rate ``lr = blr * effective_batch / 256`` (linear scaling rule), where
  ``effective_batch = batch_size * accum_iter * world_size``;
* AdamW with ``betas=(0.9, 0.95)``; weight decay (0.05) on every parameter except
  1-D ones (LayerNorm gains and biases) and biases, as in the official recipe
  (the ``(1, 1, D)`` cls and mask tokens are decayed there too); frozen
  parameters (the sin-cos tables) are left out of the optimizer;
* per-iteration schedule: linear warmup to ``lr`` over ``warmup_epochs``, then a
  half-cycle cosine down to ``min_lr`` at the end of ``epochs``.
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
    """Set every group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
