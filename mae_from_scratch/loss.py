"""The reconstruction loss (chapter 6).

MAE predicts the pixels of every patch but is graded only on the patches it
could not see: a mean squared error averaged over the *removed* patches.
With ``norm_pix_loss`` each target patch is first normalized by its own mean
and (unbiased) standard deviation, which the paper finds gives better
representations (it makes the model care about local contrast, not the
absolute brightness).
"""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def normalize_patches(target: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Normalize each patch by its own statistics.

    ``target``: ``(N, L, P)`` flat patches -> ``(target - mean) / sqrt(var + eps)``
    where mean and unbiased var are taken over the ``P`` values of each patch.
    A constant patch becomes all zeros (never NaN) thanks to ``eps``.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the official code
    return (target - mean) / (var + eps) ** 0.5


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over removed patches of the per-patch mean squared error.

    ``pred``, ``target``: ``(N, L, P)``; ``mask``: ``(N, L)`` with 1 = removed.
    Predictions on visible patches (mask 0) have no effect on the result.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    return (per_patch * mask).sum() / mask.sum()
