"""Random masking by shuffling (chapter 2).

MAE removes a large random subset of patches (75% by default) and the
encoder only ever sees the rest.  The trick that makes this cheap and
batch-friendly: give every patch a random number, sort, and keep the
patches with the smallest numbers.  Sorting also tells us how to put the
tokens back in order later (``ids_restore``).
"""

from __future__ import annotations

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` patches stay visible: ``int(L * (1 - mask_ratio))``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}; "
            "the encoder needs at least one visible patch"
        )
    return len_keep


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep a random ``1 - mask_ratio`` share of the tokens of every sample.

    Args:
        x: ``(N, L, D)`` tokens in their original (row-major) order.
        mask_ratio: share of tokens to remove, in ``[0, 1)``.
        noise: optional ``(N, L)`` scores; the tokens with the *smallest* noise
            are kept.  ``None`` draws ``torch.rand(N, L)`` on ``x``'s device.

    Returns:
        ``x_masked`` ``(N, L_keep, D)``: the kept tokens, in shuffled order;
        ``mask`` ``(N, L)``: 0 for kept, 1 for removed, in the original order;
        ``ids_restore`` ``(N, L)``: the permutation that undoes the shuffle.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (N, L, D); got shape {tuple(x.shape)}")
    n, L, d = x.shape
    len_keep = num_kept(L, mask_ratio)
    if noise is None:
        noise = torch.rand(n, L, device=x.device)
    elif noise.shape != (n, L):
        raise ValueError(f"noise must have shape (N, L) = {(n, L)}, got {tuple(noise.shape)}")
    noise = noise.to(x.device)

    # ids_shuffle[i] lists the token indices of sample i from smallest to largest noise.
    ids_shuffle = torch.argsort(noise, dim=1)
    # Sorting a permutation gives its inverse: token j sits at position ids_restore[j].
    ids_restore = torch.argsort(ids_shuffle, dim=1)

    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))

    # Binary mask built in shuffled order (first len_keep are kept), then unshuffled.
    # float32 even under autocast: mask.sum() counts up to N*L exactly.
    mask = torch.ones(n, L, device=x.device, dtype=torch.float32)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore
