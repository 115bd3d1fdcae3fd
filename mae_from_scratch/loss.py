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


def patch_stats(patches: torch.Tensor, eps: float = NORM_PIX_EPS):
    """Per-patch mean and ``sqrt(var + eps)`` of ``(N, L, P)`` patches, each ``(N, L, 1)``."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps) ** 0.5


def unnormalize_patches(
    pred: torch.Tensor,
    patches: torch.Tensor,
    mask: torch.Tensor | None = None,
    stats: str = "true",
    eps: float = NORM_PIX_EPS,
) -> torch.Tensor:
    """Turn predictions of normalized patches back into pixel values, for pictures.

    ``pred``, ``patches`` (the real image's patches): ``(N, L, P)``; ``mask``: ``(N, L)``.

    * ``stats='true'``: every patch gets back its *own* mean and std.  For removed patches
      this leaks the real patch's colour and contrast into the picture -- the model never
      predicted them.  Label such pictures accordingly.
    * ``stats='visible'``: removed patches get the average mean and std of the sample's
      *visible* patches (visible patches keep their own), so nothing about a hidden patch is
      used.  Needs ``mask``.
    """
    mean, std = patch_stats(patches, eps)
    if stats == "visible":
        if mask is None:
            raise ValueError("stats='visible' needs the mask")
        vis = (1 - mask).unsqueeze(-1)  # (N, L, 1)
        count = vis.sum(dim=1, keepdim=True).clamp(min=1)
        vis_mean = (mean * vis).sum(dim=1, keepdim=True) / count
        vis_std = (std * vis).sum(dim=1, keepdim=True) / count
        mean = torch.where(vis.bool(), mean, vis_mean)
        std = torch.where(vis.bool(), std, vis_std)
    elif stats != "true":
        raise ValueError(f"stats must be 'true' or 'visible', got {stats!r}")
    return pred * std + mean
