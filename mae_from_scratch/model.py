"""The Masked Autoencoder with a ViT backbone (chapter 7).

Data flow of one training step, with the shapes of MAE ViT-Base/16 at 224 px
(``L = 196`` patches, ``D = 768``, decoder width ``D_dec = 512``)::

    imgs (N,3,224,224)
      -> patch_embed + pos_embed            (N,196,768)
      -> random_masking, keep 25%           (N,49,768)    + mask (N,196), ids_restore (N,196)
      -> prepend cls, encoder blocks, norm  (N,50,768)     forward_encoder
      -> decoder_embed                      (N,50,512)
      -> append mask tokens, unshuffle      (N,197,512)
      -> + decoder_pos_embed, blocks, norm
      -> decoder_pred, drop cls             (N,196,16*16*3) forward_decoder
      -> MSE on the removed patches         ()             forward_loss

Names of modules and parameters follow the official release, so its
checkpoints load with ``strict=True`` (see :mod:`mae_from_scratch.checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .loss import masked_mse_loss, normalize_patches
from .masking import num_kept, random_masking
from .patching import PatchEmbed, patchify, unpatchify
from .pos_embed import get_2d_sincos_pos_embed
from .transformer import Block


@dataclass
class MAEConfig:
    """Everything that defines an MAE architecture (the constructor's arguments)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    norm_pix_loss: bool = False


class MaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a Vision Transformer encoder and a light decoder."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        self.config = MAEConfig(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads,
            decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps, norm_pix_loss,
        )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss

        # --------------------------------------------------------------------------
        # encoder specifics
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos table (row 0 for the cls token): a parameter only so that
        # checkpoints carry it, never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        # --------------------------------------------------------------------------
        # decoder specifics
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self.initialize_weights()

    @classmethod
    def from_config(cls, config: MAEConfig) -> "MaskedAutoencoderViT":
        return cls(**asdict(config))

    # ------------------------------------------------------------------------------
    # initialization
    def initialize_weights(self) -> None:
        grid = self.patch_embed.grid_size
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True))
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, cls_token=True)
        )
        # The patch embedding is a Linear(p*p*C, D) in disguise: initialize it like one.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------
    # input checks: a wrong shape should say what is wrong, not fail deep inside a matmul
    def check_images(self, imgs: torch.Tensor) -> None:
        if not isinstance(imgs, torch.Tensor):
            raise TypeError(f"imgs must be a torch.Tensor, got {type(imgs).__name__}")
        if imgs.ndim != 4:
            raise ValueError(
                f"imgs must be a 4-D batch (N, C, H, W); got shape {tuple(imgs.shape)}"
            )
        n, c, h, w = imgs.shape
        if c != self.in_chans:
            raise ValueError(f"the model expects {self.in_chans} channels, got {c} (shape {tuple(imgs.shape)})")
        if h != w:
            raise ValueError(f"images must be square, got {h}x{w}")
        if h % self.patch_size:
            raise ValueError(f"image size {h} is not divisible by the patch size {self.patch_size}")
        if h != self.img_size:
            raise ValueError(
                f"the model was built for {self.img_size}x{self.img_size} images, got {h}x{w}; "
                f"resize the images or build the model with img_size={h}"
            )

    # ------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, L, p*p*C)``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, p*p*C) -> (N, C, H, W)``."""
        return unpatchify(x, self.patch_size, self.in_chans)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Encode only the visible patches.

        Returns ``latent (N, 1 + L_keep, D)`` (cls token first), ``mask (N, L)``
        and ``ids_restore (N, L)``.
        """
        self.check_images(imgs)
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]  # positions are added *before* shuffling
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (N, L_keep, D)

        cls = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch: ``(N, 1 + L_keep, D) -> (N, L, p*p*C)``."""
        x = self.decoder_embed(latent)  # (N, 1 + L_keep, D_dec)
        n, t, d = x.shape
        L = ids_restore.shape[1]
        # One (learned, shared) mask token for every removed patch.
        mask_tokens = self.mask_token.expand(n, L + 1 - t, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, D_dec), shuffled order
        # Unshuffle: position j takes the token that was placed at ids_restore[j].
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1, :], x_], dim=1)  # cls token back in front

        x = x + self.decoder_pos_embed  # the decoder needs to know where each token is
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # (N, 1 + L, p*p*C)
        return x[:, 1:, :]  # drop the cls token

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on removed patches; targets normalized per patch when ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        return masked_mse_loss(pred, target, mask)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """One MAE step: returns ``loss ()``, ``pred (N, L, p*p*C)``, ``mask (N, L)``."""
        num_patches = self.patch_embed.num_patches
        if num_kept(num_patches, mask_ratio) == num_patches:
            raise ValueError(
                f"mask_ratio={mask_ratio} removes no patch out of {num_patches}, so the loss "
                "(an average over removed patches) would be 0/0; use a larger mask_ratio"
            )
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    # ------------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """The encoder on *all* patches, in their original order (no masking, no shuffle).

        ``pool='cls'`` -> ``(N, D)`` the cls token; ``pool='mean'`` -> ``(N, D)``
        the mean of the patch tokens; ``pool='none'`` -> ``(N, 1 + L, D)`` every
        token.  All after the encoder's final LayerNorm.
        """
        if pool not in ("cls", "mean", "none"):
            raise ValueError(f"pool must be 'cls', 'mean' or 'none', got {pool!r}")
        self.check_images(imgs)
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if pool == "cls":
            return x[:, 0]
        if pool == "mean":
            return x[:, 1:].mean(dim=1)
        return x


# ----------------------------------------------------------------------------------
# The official configurations (decoder 512-d, 8 blocks, 16 heads) ...
def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        **{**dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16), **kwargs}
    )


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        **{**dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16), **kwargs}
    )


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        **{**dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16), **kwargs}
    )


# ... and small ones for CPUs and Colab.  Their decoders are sized to the encoder
# (a 512x8 decoder would cost more than a ViT-Tiny encoder).
def mae_vit_tiny_patch4_32(**kwargs) -> MaskedAutoencoderViT:
    """ViT-Tiny/4 for 32x32 images (CIFAR-10): 64 patches, encoder 192x12, decoder 128x4."""
    return MaskedAutoencoderViT(
        **{**dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                  decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4), **kwargs}
    )


def mae_vit_tiny_patch8_64(**kwargs) -> MaskedAutoencoderViT:
    """ViT-Tiny/8 for 64x64 images (Tiny ImageNet, STL-10 resized): 64 patches."""
    return MaskedAutoencoderViT(
        **{**dict(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3,
                  decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4), **kwargs}
    )


def mae_vit_micro_patch4_32(**kwargs) -> MaskedAutoencoderViT:
    """A very small model for quick CPU demos and tests: encoder 96x4, decoder 64x2."""
    return MaskedAutoencoderViT(
        **{**dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
                  decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4), **kwargs}
    )


MODELS = {
    f.__name__: f
    for f in (
        mae_vit_base_patch16,
        mae_vit_large_patch16,
        mae_vit_huge_patch14,
        mae_vit_tiny_patch4_32,
        mae_vit_tiny_patch8_64,
        mae_vit_micro_patch4_32,
    )
}


def create_model(name: str, **kwargs) -> MaskedAutoencoderViT:
    """Build a model by its factory name (``MODELS``), e.g. ``'mae_vit_base_patch16'``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
