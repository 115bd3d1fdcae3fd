import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def micro_config():
    """A model small enough that a forward pass takes milliseconds."""
    return dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
