import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_from_scratch import random_masking


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    L=st.integers(1, 50),
    ratio=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_masking_properties(n, L, ratio, seed):
    len_keep = int(L * (1 - ratio))
    if len_keep < 1:
        with pytest.raises(ValueError, match="keeps no patch"):
            random_masking(torch.zeros(n, L, 2), ratio)
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, L, 5, generator=g)
    noise = torch.rand(n, L, generator=g)
    x_masked, mask, ids_restore = random_masking(x, ratio, noise)

    # Exactly the right number of tokens is kept.
    assert x_masked.shape == (n, len_keep, 5)
    assert mask.shape == (n, L)
    assert torch.all(mask.sum(1) == L - len_keep)

    ids_shuffle = torch.argsort(noise, dim=1)
    # ids_restore inverts the shuffle.
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(L).expand(n, L))
    for i in range(n):
        kept = set(torch.topk(noise[i], len_keep, largest=False).indices.tolist())
        # The kept tokens are the ones with the smallest noise ...
        assert set(ids_shuffle[i, :len_keep].tolist()) == kept
        # ... and the mask says 0 exactly there, in the original order.
        assert set(torch.nonzero(mask[i] == 0).flatten().tolist()) == kept
        # x_masked holds those tokens, in order of increasing noise.
        assert torch.equal(x_masked[i], x[i, ids_shuffle[i, :len_keep]])


def test_default_noise_comes_from_the_global_generator():
    """Without ``noise`` the mask is random, and ``torch.manual_seed`` makes it repeatable."""
    x = torch.randn(2, 16, 4)
    torch.manual_seed(5)
    _, m1, r1 = random_masking(x, 0.75)
    torch.manual_seed(5)
    _, m2, r2 = random_masking(x, 0.75)
    _, m3, _ = random_masking(x, 0.75)
    assert torch.equal(m1, m2) and torch.equal(r1, r2)
    assert not torch.equal(m1, m3)


def test_outputs_keep_the_tokens_dtype_and_device():
    x = torch.randn(2, 16, 4, dtype=torch.float64)
    x_masked, mask, ids_restore = random_masking(x, 0.75)
    # Tokens are copied, never cast; the mask is float32 and the indices int64 whatever x is.
    assert (x_masked.dtype, mask.dtype, ids_restore.dtype) == (torch.float64, torch.float32, torch.int64)
    ids_keep = torch.argsort(ids_restore, dim=1)[:, :4]  # the shuffle, recovered from its inverse
    assert torch.equal(x_masked, torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, 4)))
    # Every build has a second device, "meta": outputs follow the tokens there,
    # with the default noise and with noise given on the CPU.
    tokens = torch.empty(2, 16, 4, device="meta")
    for noise in (None, torch.rand(2, 16)):
        outs = random_masking(tokens, 0.75, noise)
        assert [t.device.type for t in outs] == ["meta"] * 3
        assert [tuple(t.shape) for t in outs] == [(2, 4, 4), (2, 16), (2, 16)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tokens_mask_like_cpu_tokens():
    x = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    on_gpu = random_masking(x.cuda(), 0.75, noise)  # noise on the CPU is moved to the tokens
    assert all(t.is_cuda for t in on_gpu)
    for a, b in zip(on_gpu, random_masking(x, 0.75, noise)):
        assert torch.equal(a.cpu(), b)
    assert random_masking(x.cuda(), 0.75)[1].is_cuda  # default noise drawn on the GPU


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_mask_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        random_masking(torch.zeros(1, 16, 4), ratio)


def test_noise_of_wrong_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(torch.zeros(2, 16, 4), 0.75, noise=torch.rand(2, 15))


def test_zero_ratio_keeps_everything():
    x = torch.randn(2, 9, 3)
    x_masked, mask, _ = random_masking(x, 0.0)
    assert x_masked.shape == x.shape and mask.sum() == 0


@pytest.mark.parametrize("ratio", [True, False, "0.75", None])
def test_mask_ratio_that_is_not_a_real_number_is_refused(ratio):
    # bool is an int in Python: False would silently mean "keep everything", True "remove everything".
    with pytest.raises(TypeError, match="mask_ratio must be a number"):
        random_masking(torch.zeros(1, 16, 4), ratio)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_noise_that_is_not_real_scores_is_refused(dtype):
    with pytest.raises(TypeError, match="real scores"):
        random_masking(torch.zeros(2, 16, 4), 0.75, noise=torch.zeros(2, 16, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_cpu_noise_that_is_not_finite_is_refused(bad):
    noise = torch.rand(2, 16)
    noise[1, 3] = bad
    with pytest.raises(ValueError, match="noise must be finite"):
        random_masking(torch.zeros(2, 16, 4), 0.75, noise=noise)
    # Integer scores are finite by construction and accepted.
    random_masking(torch.zeros(2, 16, 4), 0.75, noise=torch.randperm(32).view(2, 16))
