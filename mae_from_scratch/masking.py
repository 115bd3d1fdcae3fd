"""Random masking by shuffling (chapter 2).

MAE removes a large random subset of patches (75% by default) and the
encoder only ever sees the rest.  The trick that makes this cheap and
batch-friendly: give every patch a random number, sort, and keep the
patches with the smallest numbers.  Sorting also tells us how to put the
tokens back in order later (``ids_restore``).
"""

from __future__ import annotations

import math
import numbers

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` patches stay visible: ``int(L * (1 - mask_ratio))``."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real):
        raise TypeError(
            f"mask_ratio must be a number in [0, 1) such as 0.75, got {type(mask_ratio).__name__} "
            f"{mask_ratio!r}"
        )
    if not 0.0 <= mask_ratio < 1.0:  # also refuses NaN
        raise ValueError(f"mask_ratio must be in [0, 1), e.g. 0.75; got {mask_ratio}")
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}; "
            "the encoder needs at least one visible patch"
        )
    return len_keep


def _check_noise(noise, n: int, L: int) -> None:
    if not isinstance(noise, torch.Tensor):
        raise TypeError(
            f"noise must be a torch.Tensor of shape (N, L) = {(n, L)}, got {type(noise).__name__}; "
            "e.g. noise=torch.rand(N, L)"
        )
    if noise.dtype == torch.bool or noise.is_complex():
        raise TypeError(f"noise must hold real scores (e.g. torch.rand(N, L)), got dtype {noise.dtype}")
    if noise.shape != (n, L):
        raise ValueError(f"noise must have shape (N, L) = {(n, L)}, got {tuple(noise.shape)}")
    # Checked where it is free: reading a GPU tensor's values would stall the training
    # loop on every step, and the training loops' noise is finite by construction.
    if noise.is_floating_point() and noise.device.type == "cpu" and not bool(torch.isfinite(noise).all()):
        raise ValueError(
            "noise must be finite; it contains NaN or inf, which would give every sample the "
            "same mask; pass finite scores such as torch.rand(N, L)"
        )


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep a random ``1 - mask_ratio`` share of the tokens of every sample.

    Args:
        x: ``(N, L, D)`` tokens in their original (row-major) order.
        mask_ratio: share of tokens to remove, in ``[0, 1)``.
        noise: optional ``(N, L)`` tensor of finite real scores; the tokens with
            the *smallest* noise are kept.  ``None`` draws ``torch.rand(N, L)`` on
            ``x``'s device.  NaN or inf is refused in CPU noise; noise already on a
            GPU is not read back to be checked (that would wait on every step).

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
    else:
        _check_noise(noise, n, L)
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


# ----------------------------------------------------------------------------------
# Other ways to choose the removed patches (for comparison in chapter 2).
#
# The paper compares its random sampling with block-wise masking (BEiT) and
# grid-wise masking (Table 1f, Figure 6).  These helpers return only the binary
# mask; :func:`noise_from_mask` turns such a mask into ``noise`` for
# :func:`random_masking` (and so for the model's ``noise=`` argument).


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator | None, high: int) -> int:
    """An integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=g).item())


def block_masking(
    n: int,
    grid_size: int,
    mask_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    min_block: int = 16,
    max_aspect: float = 1 / 0.3,
) -> torch.Tensor:
    """Block-wise masking in the style of BEiT: remove large random rectangles.

    For every sample, rectangles of patches are placed until exactly
    ``L - num_kept(L, mask_ratio)`` patches are removed (``L = grid_size**2``).
    Each rectangle has a random area between ``min_block`` patches and the number
    still to remove, a log-uniform aspect ratio in ``[1/max_aspect, max_aspect]``
    and a uniform position.  BEiT's defaults are ``min_block=16`` and
    ``max_aspect=1/0.3``.  When a rectangle would remove more than the remaining
    budget, only the first of its new patches (row by row) are removed, so the
    count is exact and every sample of a batch keeps the same number of patches.

    Args:
        n: number of masks (the batch size ``N``).
        grid_size: the patch grid is ``grid_size x grid_size``.
        mask_ratio: share of patches to remove, in ``[0, 1)``.
        generator: a ``torch.Generator`` for reproducible masks (``None``: the
            global generator).
        min_block: smallest rectangle area, in patches (smaller only at the end,
            when fewer patches remain to be removed).
        max_aspect: largest height/width ratio of a rectangle (``>= 1``).

    Returns:
        ``mask`` ``(N, L)`` float32: 0 for kept, 1 for removed, in row-major order
        (the order of :func:`~mae_from_scratch.patching.patchify`).
    """
    if grid_size < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    if min_block < 1 or max_aspect < 1:
        raise ValueError(f"need min_block >= 1 and max_aspect >= 1, got {min_block}, {max_aspect}")
    L = grid_size * grid_size
    num_mask = L - num_kept(L, mask_ratio)
    log_aspect = math.log(max_aspect)
    masks = torch.zeros(n, grid_size, grid_size, dtype=torch.bool)
    for i in range(n):
        m = masks[i]
        count = 0
        while count < num_mask:
            budget = num_mask - count
            area = _uniform(generator, min(min_block, budget), budget)
            aspect = math.exp(_uniform(generator, -log_aspect, log_aspect))
            h = min(grid_size, max(1, round(math.sqrt(area * aspect))))
            w = min(grid_size, max(1, round(math.sqrt(area / aspect))))
            top = _randint(generator, grid_size - h + 1)
            left = _randint(generator, grid_size - w + 1)
            new = torch.zeros_like(m)
            new[top : top + h, left : left + w] = True
            new &= ~m
            idx = torch.nonzero(new.flatten()).flatten()[:budget]  # row-major order
            m.view(-1)[idx] = True
            count += len(idx)
    return masks.reshape(n, L).float()


def grid_masking(
    n: int,
    grid_size: int,
    stride: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Grid-wise masking: keep one patch of every ``stride x stride`` cell.

    With ``stride=2`` this keeps one of every four patches (a 75% mask), on a
    regular grid whose offset ``(dr, dc)`` in ``[0, stride)^2`` is drawn per sample:
    patch ``(r, c)`` is kept when ``r % stride == dr`` and ``c % stride == dc``.

    Args:
        n: number of masks (the batch size ``N``).
        grid_size: the patch grid is ``grid_size x grid_size``; must be a multiple
            of ``stride`` so that every sample keeps ``(grid_size / stride)**2`` patches.
        stride: spacing of the kept patches; the mask ratio is ``1 - 1/stride**2``.
        generator: a ``torch.Generator`` for reproducible offsets (``None``: the
            global generator).

    Returns:
        ``mask`` ``(N, L)`` float32 with ``L = grid_size**2``: 0 for kept, 1 for
        removed, in row-major order.
    """
    if stride < 1 or grid_size % stride:
        raise ValueError(f"grid_size ({grid_size}) must be a positive multiple of stride ({stride})")
    offsets = torch.randint(stride, (n, 2), generator=generator)  # (N, 2): (dr, dc)
    r = torch.arange(grid_size).view(1, grid_size, 1)
    c = torch.arange(grid_size).view(1, 1, grid_size)
    keep = (r % stride == offsets[:, 0].view(n, 1, 1)) & (c % stride == offsets[:, 1].view(n, 1, 1))
    return (~keep).reshape(n, grid_size * grid_size).float()


def noise_from_mask(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores that make :func:`random_masking` remove exactly the patches of ``mask``.

    ``mask`` ``(N, L)`` (0 keep, 1 remove, the same number of zeros in every row)
    -> ``noise`` ``(N, L)``: ``mask + u`` with ``u`` uniform in ``[0, 1)``.  Kept
    patches score below 1 and removed ones at least 1, so sorting puts the kept
    ones first, in a random order.  Pass it as ``random_masking(x, ratio, noise)``
    or ``model(imgs, ratio, noise=...)`` with ``ratio`` equal to the mask's share
    of ones.
    """
    u = torch.rand(mask.shape, generator=generator).to(mask.device)
    return mask.float() + u
