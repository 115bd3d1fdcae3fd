"""Multi-head self-attention and the pre-norm Transformer block (chapter 4).

Written by hand so that every step of attention is visible.  The module and
parameter names (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``,
``norm1``, ``norm2``) are those of the official MAE checkpoints.
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


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        fused_attn: bool = True,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x
