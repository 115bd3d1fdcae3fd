"""mae-from-scratch: Masked Autoencoders (He et al., 2021) written to be read.

One module per idea, in the order the book builds them:

========================  ==========================================  =======
module                    what it holds                               chapter
========================  ==========================================  =======
``photos``                the book's photographs, held-out crops,     1-7
                          ``normalize``
``patching``              ``patchify`` / ``unpatchify``, PatchEmbed   1
``masking``               ``random_masking``                          2
``pos_embed``             fixed 2-D sin-cos positional embedding      3
``transformer``           attention, MLP, pre-norm block              4
``model``                 ``MaskedAutoencoderViT`` and its configs    5, 7
``loss``                  masked MSE, per-patch normalized targets    6
``flops``                 FLOP counts of encoder and decoder          4, 5
``checkpoint``            reading checkpoints: official ones,         7
                          encoders to evaluate
``training_checkpoint``   training checkpoints, written atomically,
                          read back to resume
``data``                  data sets, transforms, the resumable
                          sampler
``archives``              ``.tar``/``.tar.gz`` data extracted once
``image_check``           every image file decoded once before
                          training
``train_step``            the one optimizer step every loop uses
``engine``                training loops (``train_steps``, epochs)    4, 6, 7
``optim``                 AdamW parameter groups, lr schedule
``precision``             mixed precision chosen from the hardware
``distributed``           torchrun / DDP helpers
``metrics``               the metrics logs (``log.txt``)
``presets``               named pretraining recipes
``pretrain``              ``python -m mae_from_scratch.pretrain``     8
``run_config``            its flags and frozen configuration          8
``run_folder``            its output folder: checked and locked
``pretrain_data``         its images, sampler and loader
``run_info``              ``run.json``: what produced a run           8
``features``              a frozen encoder's features and attention   9
``knn``                   kNN classifier on frozen features           9
``linear_probe``          linear probe on frozen features             9
``validation``            choices made on held-out training images    9
``finetune``              encoder and head trained end to end         9
``evaluate``              ``python -m mae_from_scratch.evaluate``
``pictures``              figures
========================  ==========================================  =======
"""

from .checkpoint import CheckpointMismatchError, load_official_checkpoint
from .engine import train_steps
from .metrics import read_epoch_log, read_step_log
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
from .training_checkpoint import load_training_checkpoint, save_atomic
from .transformer import Attention, Block, explicit_attention

# The command-line modules are not imported here, so that ``python -m mae_from_scratch.pretrain``
# and ``python -m mae_from_scratch.evaluate`` run them fresh; nor are the evaluation parts, which
# load torchvision (through ``data``).  Import them from their modules:
#   from mae_from_scratch.pretrain import pretrain
#   from mae_from_scratch.features import extract_features, load_encoder
#   from mae_from_scratch.knn import knn_accuracy
#   from mae_from_scratch.linear_probe import linear_probe
#   from mae_from_scratch.finetune import finetune
#   from mae_from_scratch.presets import PRESETS   (python -m mae_from_scratch.presets lists them)

__version__ = "0.1.0"

__all__ = [
    "load_training_checkpoint",
    "read_epoch_log",
    "read_step_log",
    "save_atomic",
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
