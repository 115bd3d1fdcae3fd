"""mae-from-scratch: Masked Autoencoders (He et al., 2021) written to be read.

One module per idea, in the order the book builds them:

========================  ==========================================  =======
module                    what it holds                               chapter
========================  ==========================================  =======
``patching``              ``patchify`` / ``unpatchify``, PatchEmbed   1
``masking``               ``random_masking``                          2
``pos_embed``             fixed 2-D sin-cos positional embedding      3
``transformer``           attention, MLP, pre-norm block              4
``model``                 ``MaskedAutoencoderViT`` and its configs    5, 7
``loss``                  masked MSE, per-patch normalized targets    6
``flops``                 FLOP counts of encoder and decoder          4, 5
``checkpoint``            loading official checkpoints
``data``                  images (photos shipped in packages, ...)
``engine``                training loops (``train_steps``)
``pictures``              figures
========================  ==========================================  =======
"""

from .checkpoint import CheckpointMismatchError, load_official_checkpoint
from .engine import train_steps
from .loss import masked_mse_loss, normalize_patches
from .masking import random_masking
from .model import (
    MODELS,
    MAEConfig,
    MaskedAutoencoderViT,
    create_model,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_micro_patch4_32,
    mae_vit_tiny_patch4_32,
    mae_vit_tiny_patch8_64,
)
from .patching import PatchEmbed, patchify, unpatchify
from .pos_embed import get_2d_sincos_pos_embed
from .transformer import Attention, Block, explicit_attention

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "Block",
    "CheckpointMismatchError",
    "MAEConfig",
    "MODELS",
    "MaskedAutoencoderViT",
    "PatchEmbed",
    "create_model",
    "explicit_attention",
    "get_2d_sincos_pos_embed",
    "load_official_checkpoint",
    "mae_vit_base_patch16",
    "mae_vit_huge_patch14",
    "mae_vit_large_patch16",
    "mae_vit_micro_patch4_32",
    "mae_vit_tiny_patch4_32",
    "mae_vit_tiny_patch8_64",
    "masked_mse_loss",
    "normalize_patches",
    "patchify",
    "random_masking",
    "train_steps",
    "unpatchify",
]
