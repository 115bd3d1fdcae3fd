import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import Attention, Block, explicit_attention
from mae_from_scratch.transformer import DropPath


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


def reference_attention(attn, x, interleaved_heads=False):
    """Multi-head self-attention computed from ``attn``'s own weights, one head at a time.

    Written without the module's code: ``qkv`` stacks the q, k and v projections
    (``D`` output rows each) and head ``h`` owns channels ``h*d .. (h+1)*d - 1`` of
    each.  ``interleaved_heads=True`` gives head ``h`` the channels ``h, h+H, h+2H, ...``
    instead, a plausible mistake the comparison must catch.
    """
    D, H = x.shape[-1], attn.num_heads
    d = D // H
    w, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = (x @ w[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    heads = []
    for h in range(H):
        channels = torch.arange(h, D, H) if interleaved_heads else torch.arange(h * d, (h + 1) * d)
        qh, kh, vh = q[..., channels], k[..., channels], v[..., channels]
        scores = qh @ kh.transpose(-2, -1) / d**0.5  # (N, T, T)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        heads.append(weights @ vh)
    out = torch.empty_like(x)
    for h, head in enumerate(heads):  # put each head back where it came from
        channels = torch.arange(h, D, H) if interleaved_heads else torch.arange(h * d, (h + 1) * d)
        out[..., channels] = head
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads", [1, 3, 4])
def test_attention_forward_matches_a_reference(fused, heads):
    torch.manual_seed(heads)
    attn = Attention(12, heads, fused=fused).double()
    with torch.no_grad():  # nonzero biases, so a dropped bias shows
        attn.qkv.bias.normal_()
        attn.proj.bias.normal_()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    with torch.no_grad():
        out = attn(x)
        torch.testing.assert_close(out, reference_attention(attn, x), atol=1e-10, rtol=1e-10)
        if heads > 1:  # the reference is sharp enough to see a wrong head split
            assert (out - reference_attention(attn, x, interleaved_heads=True)).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [True, False])
def test_attention_heads_are_independent(fused):
    """Changing head 0's query and value weights changes head 0's output channels only.

    With ``proj`` set to the identity the output is the concatenation of the heads,
    so this checks where ``forward`` splits the channels into heads and where it
    puts each head's result back.
    """
    attn = Attention(8, 2, fused=fused)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        before = attn(x)
        attn.qkv.weight[0:4] += torch.randn(4, 8)  # q of head 0
        attn.qkv.weight[16:20] += torch.randn(4, 8)  # v of head 0
        after = attn(x)
    torch.testing.assert_close(after[..., 4:], before[..., 4:], atol=1e-6, rtol=0)  # head 1: untouched
    assert (after[..., :4] - before[..., :4]).abs().max() > 0.1  # head 0: changed


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


# ---------------------------------------------------------------------------------- drop path
def test_drop_path_is_the_identity_in_eval_mode_and_at_rate_zero():
    x = torch.randn(8, 5, 16)
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    off = DropPath(0.0).train()
    assert torch.equal(off(x), x)
    blk = Block(16, 4)
    blk.train()
    torch.manual_seed(0)
    a = blk(x)
    torch.manual_seed(1)
    assert torch.equal(blk(x), a)  # rate 0 (the default): training is deterministic


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    out = dp(torch.ones(4000, 3, 2))
    per_sample = out.flatten(1)
    # every sample is either all zeros or all 1 / 0.75
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(1))
    dropped = (per_sample == 0).all(1).float().mean().item()
    assert abs(dropped - 0.25) < 0.03  # binomial sd is 0.007
    assert abs(out.mean().item() - 1.0) < 0.05


def test_drop_path_adds_no_state_and_checks_its_rate():
    plain, dropping = Block(16, 4), Block(16, 4, drop_path=0.3)
    assert set(plain.state_dict()) == set(dropping.state_dict())
    assert list(dropping.drop_path.parameters()) == [] and list(dropping.drop_path.buffers()) == []
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\)"):
            DropPath(bad)
