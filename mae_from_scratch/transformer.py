"""Multi-head self-attention and the pre-norm Transformer block (chapter 4).

Written by hand so that every step of attention is visible.  The module and
parameter names (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``,
``norm1``, ``norm2``) are those of the official MAE checkpoints.

:class:`DropPath` (stochastic depth) is used when fine-tuning; it has no
parameters or buffers, so a block's state dict is the same with or without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v``, spelled out for teaching.

    ``q, k, v``: ``(N, heads, T, d)`` -> ``(N, heads, T, d)``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (N, heads, T, T)
    weights = scores.softmax(dim=-1)  # every query's weights over the keys sum to 1
    return weights @ v


class Attention(nn.Module):
    """Multi-head self-attention: ``(N, T, D) -> (N, T, D)``.

    ``fused=True`` (the default) calls
    :func:`torch.nn.functional.scaled_dot_product_attention`, which computes
    the same function as :func:`explicit_attention` without materializing
    the ``T x T`` weight matrix when a fused kernel is available.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, fused: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)  # one matmul for q, k and v
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        q, k, v = rearrange(qkv, "n t (three h d) -> three n h t d", three=3, h=self.num_heads)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = explicit_attention(q, k, v)
        out = rearrange(out, "n h t d -> n t (h d)")  # concatenate the heads
        return self.proj(out)


class Mlp(nn.Module):
    """The block's two-layer MLP: ``Linear(D, r*D) -> GELU -> Linear(r*D, D)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for whole samples.

    ``(N, ...) -> (N, ...)``.  With probability ``p`` a sample's branch output is
    replaced by zeros, otherwise it is divided by ``1 - p`` so that its expected
    value is unchanged; the block then passes that sample through its skip
    connection alone.  In eval mode, or with ``p = 0``, it is the identity.

    ``p`` is a plain attribute, not a parameter or a buffer: it can be changed
    on a built model (see
    :meth:`~mae_from_scratch.model.MaskedAutoencoderViT.set_drop_path`) and
    never appears in a state dict.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # One draw per sample, broadcast over tokens and channels: the whole branch goes or stays.
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        alive = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * alive / keep

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    With ``drop_path > 0`` each residual branch goes through :class:`DropPath`
    during training (off by default: pretraining uses none).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        fused_attn: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)  # one module for both branches: it holds no state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
