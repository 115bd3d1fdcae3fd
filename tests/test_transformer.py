import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import Attention, Block, explicit_attention


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), t=st.integers(1, 20), heads=st.sampled_from([1, 2, 4]), d=st.sampled_from([4, 8]))
def test_fused_attention_equals_explicit(n, t, heads, d):
    dim = heads * d
    fused = Attention(dim, heads, fused=True)
    explicit = Attention(dim, heads, fused=False)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(n, t, dim)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)


def test_explicit_attention_is_a_weighted_average_of_values():
    q, k = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    v = torch.ones(1, 1, 5, 4) * 3.0
    # Attention weights sum to one, so constant values come back unchanged.
    torch.testing.assert_close(explicit_attention(q, k, v), v)


def test_attention_heads_are_independent():
    """Changing the values seen by head 0 leaves head 1's output untouched."""
    attn = Attention(8, 2, fused=False)
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        v2 = v.clone()
        v2[..., :4] += 1.0  # head 0's values
        from einops import rearrange
        split = lambda t: rearrange(t, "n t (h d) -> n h t d", h=2)  # noqa: E731
        a = explicit_attention(split(q), split(k), split(v))
        b = explicit_attention(split(q), split(k), split(v2))
    assert torch.equal(a[:, 1], b[:, 1]) and not torch.equal(a[:, 0], b[:, 0])


def test_block_shapes_and_names():
    blk = Block(16, 4, mlp_ratio=4.0)
    assert blk(torch.randn(2, 7, 16)).shape == (2, 7, 16)
    names = set(blk.state_dict())
    assert {"norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "norm2.bias",
            "mlp.fc1.weight", "mlp.fc2.weight"} <= names
    assert blk.mlp.fc1.out_features == 64


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Attention(10, 3)
