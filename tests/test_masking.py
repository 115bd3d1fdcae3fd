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


def test_default_noise_is_random_and_on_device():
    x = torch.randn(2, 16, 4)
    _, m1, _ = random_masking(x, 0.75)
    _, m2, _ = random_masking(x, 0.75)
    assert m1.device == x.device
    assert not torch.equal(m1, m2)


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
