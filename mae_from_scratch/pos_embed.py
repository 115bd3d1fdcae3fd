"""Fixed 2-D sine-cosine positional embeddings (chapter 3).

After patchify, a token no longer knows where it came from.  MAE adds a
fixed (not learned) table: every position of the ``grid x grid`` patch
grid gets a ``D``-dimensional vector.  The first ``D/2`` channels encode the
patch's *column*, the last ``D/2`` its *row*; each half is
``[sin(pos * w_k) | cos(pos * w_k)]`` with frequencies
``w_k = 1 / 10000^(k / (D/4))``, ``k = 0 .. D/4 - 1`` -- the Transformer's 1-D
recipe, applied once per axis.  The cls token's row is all zeros.

The table is computed in float64 and returned as float32, so it is the same
on every machine and matches the published checkpoints to ~1e-7.
"""

from __future__ import annotations

import torch


def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``(M,)`` positions -> ``(M, embed_dim)`` as ``[sin | cos]`` (float64)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,) frequencies, from 1 down to ~1/10000
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """The 2-D table for a ``grid_size x grid_size`` patch grid.

    Returns:
        ``(grid_size**2, embed_dim)``, or ``(1 + grid_size**2, embed_dim)`` with a
        leading row of zeros for the cls token when ``cls_token`` is True.
        Row ``r * grid_size + c`` belongs to the patch in row ``r``, column ``c``
        (the order of :func:`~mae_from_scratch.patching.patchify`).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )
    emb_col = get_1d_sincos_pos_embed(embed_dim // 2, cols)  # first half: the column
    emb_row = get_1d_sincos_pos_embed(embed_dim // 2, rows)  # second half: the row
    emb = torch.cat([emb_col, emb_row], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.to(torch.float32)
