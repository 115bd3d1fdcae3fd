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

An architecture is described by one :class:`MAEConfig`, and the model reads
every size from it::

    model = MaskedAutoencoderViT(MAEConfig(img_size=32, patch_size=4, embed_dim=192, ...))
    model = MaskedAutoencoderViT(img_size=32, patch_size=4, ...)   # the same, from keywords
    model = MaskedAutoencoderViT(model.config, img_size=64)        # a copy with one field changed

Names of modules and parameters follow the official release, so its
checkpoints load with ``strict=True`` (see :mod:`mae_from_scratch.checkpoint`).

Two switches leave the state dict untouched.  ``forward(..., encoder_mask_tokens=True)``
is the baseline of the paper's Table 2 ("encoder w/ [M]"): the encoder also
processes a mask token in place of every removed patch.  :meth:`~MaskedAutoencoderViT.set_drop_path`
turns on stochastic depth in the encoder for fine-tuning.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .loss import masked_mse_loss, normalize_patches
from .masking import num_kept, random_masking
from .patching import PatchEmbed, patchify, unpatchify
from .pos_embed import get_2d_sincos_pos_embed
from .transformer import Block


@dataclass
class MAEConfig:
    """Everything that defines an MAE architecture.

    The field names are also the keys of ``"model_config"`` in our training
    checkpoints (``dataclasses.asdict(model.config)``), so renaming one would
    stop older checkpoints from loading.  The defaults are ViT-Large/16 with
    the paper's 512-wide, 8-block decoder.
    """

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

    def __post_init__(self) -> None:
        # Checked here, where the numbers are written, so that a bad architecture
        # fails with the field's name instead of deep inside a layer's constructor.
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "num_heads",
                     "decoder_embed_dim", "decoder_num_heads"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("depth", "decoder_depth"):  # 0 blocks is allowed (an ablation, not a useful model)
            _require_int(name, getattr(self, name), minimum=0)
        for name in ("mlp_ratio", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not self.norm_eps >= 0:
            raise ValueError(f"norm_eps must be non-negative, got {self.norm_eps}")
        if not isinstance(self.norm_pix_loss, bool):
            raise TypeError(f"norm_pix_loss must be True or False, got {self.norm_pix_loss!r}")

        # The same wording as PatchEmbed, Attention and the sin-cos table use.
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"{width} {getattr(self, width)} is not divisible by {heads} {getattr(self, heads)}"
                )
        for width in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, width) % 4:
                raise ValueError(
                    f"{width} must be divisible by 4 for a 2-D sin-cos table, got {getattr(self, width)}"
                )

    @property
    def grid_size(self) -> int:
        """Patches per side of the image."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """``L``, the number of patches of one image."""
        return self.grid_size**2


def _require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


_CONFIG_FIELDS = tuple(f.name for f in fields(MAEConfig))


class MaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a Vision Transformer encoder and a light decoder.

    Build it from a :class:`MAEConfig`, from the config's fields as keywords,
    or from a config plus keywords that replace some of its fields.  Either
    way the model keeps its own copy as ``self.config``.
    """

    def __init__(self, config: MAEConfig | None = None, **overrides):
        super().__init__()
        if config is not None and not isinstance(config, MAEConfig):
            raise TypeError(
                f"config must be an MAEConfig, got {type(config).__name__}; "
                "give the sizes as keywords, e.g. MaskedAutoencoderViT(img_size=32, patch_size=4)"
            )
        unknown = sorted(set(overrides) - set(_CONFIG_FIELDS))
        if unknown:
            raise TypeError(f"unknown MAEConfig field(s) {unknown}; the fields are {list(_CONFIG_FIELDS)}")
        # replace() makes a fresh instance, so the config is validated again and
        # later changes to the caller's object do not reach the model.
        cfg = replace(config, **overrides) if config is not None else MAEConfig(**overrides)
        self.config = cfg

        def blocks(width: int, heads: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(width, heads, cfg.mlp_ratio, qkv_bias=True, norm_eps=cfg.norm_eps) for _ in range(count)
            )

        # The order in which modules are created below decides how the random
        # number stream is consumed, and so the initial weights for a given seed.

        # Encoder: a plain ViT that only ever sees the visible patches.
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Fixed sin-cos tables (row 0 for the cls token): parameters only so that
        # checkpoints carry them; they are never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.embed_dim), requires_grad=False)
        self.blocks = blocks(cfg.embed_dim, cfg.num_heads, cfg.depth)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

        # Decoder: a narrower Transformer over every position (the encoded visible
        # patches plus one shared, learned mask token per removed patch) that
        # predicts the pixels of each patch.
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + cfg.num_patches, cfg.decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = blocks(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_depth)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size**2 * cfg.in_chans, bias=True)

        self.reset_parameters()

    # Sizes other code reads straight off the model; the config stays their only source.
    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    @property
    def norm_pix_loss(self) -> bool:
        return self.config.norm_pix_loss

    def reset_parameters(self) -> None:
        """Set every weight to its starting value, as the paper trains from.

        The two position tables get their fixed sin-cos values; the cls and
        mask tokens small Gaussian noise (std 0.02); every linear map,
        including the patch embedding, Xavier-uniform weights and zero biases;
        every LayerNorm the identity.
        """
        grid = self.config.grid_size
        for table in (self.pos_embed, self.decoder_pos_embed):
            table.data.copy_(get_2d_sincos_pos_embed(table.shape[-1], grid, cls_token=True))
        # The patch embedding is a Linear(p*p*C, D) in disguise: its Xavier
        # bound must come from those fan-ins, not the convolution's.
        conv_weight = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(conv_weight.view(conv_weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._reset_linear_and_norm)

    @staticmethod
    def _reset_linear_and_norm(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def check_images(self, imgs: torch.Tensor) -> None:
        """Raise a readable error for input the model was not built for.

        A wrong shape should say what is wrong, not fail deep inside a matmul.
        """
        if not isinstance(imgs, torch.Tensor):
            raise TypeError(f"imgs must be a torch.Tensor, got {type(imgs).__name__}")
        if imgs.ndim != 4:
            raise ValueError(
                f"imgs must be a 4-D batch (N, C, H, W); got shape {tuple(imgs.shape)}"
            )
        if not imgs.is_floating_point():
            raise TypeError(
                f"imgs must be a floating-point tensor of normalized pixels, got dtype {imgs.dtype}; "
                "convert raw pixels first, e.g. mae_from_scratch.photos.normalize(imgs.float() / 255) "
                "(or normalize with your dataset's mean and std)"
            )
        n, c, h, w = imgs.shape
        if n == 0:
            raise ValueError(
                f"imgs is an empty batch (shape {tuple(imgs.shape)}); pass at least one image"
            )
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

    def prepare_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """Check ``imgs`` (see :meth:`check_images`) and cast them to the parameters' dtype.

        Floating-point images of another dtype (float16, bfloat16, float64) are
        cast to the dtype of the model's parameters, so a float64 batch feeds a
        float32 model.  Under ``torch.autocast`` the parameters stay float32 and
        autocast still runs the layers in half precision.  Integer and bool
        images are refused: they are raw pixels, not the normalized input.
        """
        self.check_images(imgs)
        return imgs.to(self.patch_embed.proj.weight.dtype)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, L, p*p*C)``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, p*p*C) -> (N, C, H, W)``."""
        return unpatchify(x, self.patch_size, self.in_chans)

    def _embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """Checked images -> one token per patch, position included: ``(N, L, D)``."""
        imgs = self.prepare_images(imgs)
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def _encode(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Put the cls token in front of ``patch_tokens`` and run the encoder on them all."""
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        tokens = torch.cat([cls_token.expand(patch_tokens.shape[0], -1, -1), patch_tokens], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
                        encoder_mask_tokens: bool = False):
        """Encode only the visible patches.

        ``imgs``: ``(N, C, H, W)`` floating-point, normalized (other float dtypes
        are cast to the parameters' dtype, see :meth:`prepare_images`).
        ``noise``: optional finite ``(N, L)`` tensor, see
        :func:`~mae_from_scratch.masking.random_masking`.

        Returns ``latent (N, 1 + L_keep, D)`` (cls token first), ``mask (N, L)``
        and ``ids_restore (N, L)``.

        With ``encoder_mask_tokens=True`` (the baseline of the paper's Table 2,
        see :meth:`forward_encoder_with_mask_tokens`) the same mask is drawn but
        ``latent`` is ``(N, 1 + L, D)``, every patch in its original order, and
        ``ids_restore`` is returned as ``None``: there is nothing left to put back.
        """
        if encoder_mask_tokens:
            return self.forward_encoder_with_mask_tokens(imgs, mask_ratio, noise)
        # Positions are added *before* the shuffle, so each kept token still knows where it was.
        patch_tokens = self._embed_patches(imgs)
        visible, mask, ids_restore = random_masking(patch_tokens, mask_ratio, noise)  # (N, L_keep, D)
        return self._encode(visible), mask, ids_restore

    def forward_encoder_with_mask_tokens(self, imgs: torch.Tensor, mask_ratio: float,
                                         noise: torch.Tensor | None = None):
        """The encoder of the paper's Table 2 baseline: all ``L`` positions, a mask token for each removed patch.

        The mask is drawn exactly as in :meth:`forward_encoder` (same ``noise``,
        same removed patches), then every removed patch's token is replaced by
        the encoder's mask token plus that position's embedding, and the encoder
        runs on ``1 + L`` tokens in patch order.

        The encoder's mask token is a vector of zeros, so a removed position
        carries its position embedding alone.  This mode exists to measure what
        the shortcut of dropping the tokens saves (time and FLOPs): the cost
        does not depend on the token's value, and a fixed zero vector keeps the
        state dict, the buffers and the optimizer's parameter list exactly
        those of the default model (official checkpoints still load strictly,
        and the two modes train the same set of tensors when timed side by
        side).  Training this baseline for accuracy would call for a learned
        token instead, which is not provided here.

        Returns ``latent (N, 1 + L, D)``, ``mask (N, L)`` (1 = removed) and ``None``.
        The masked patches' pixels never reach the encoder.
        """
        patch_tokens = self._embed_patches(imgs)  # (N, L, D)
        _, mask, _ = random_masking(patch_tokens, mask_ratio, noise)
        # zeros + pos: the token's value is the zero vector, its position is still known
        mask_tokens = self.pos_embed[:, 1:, :].to(patch_tokens.dtype).expand_as(patch_tokens)
        removed = mask.bool().unsqueeze(-1)  # (N, L, 1)
        tokens = torch.where(removed, mask_tokens, patch_tokens)  # (N, L, D)
        return self._encode(tokens), mask, None

    def _fill_in_mask_tokens(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``(N, L_keep, D_dec)`` visible tokens in shuffled order -> ``(N, L, D_dec)`` in patch order.

        Every removed patch gets a copy of the one learned ``mask_token``.
        """
        n, num_visible, width = visible.shape
        num_removed = ids_restore.shape[1] - num_visible
        # random_masking kept the first L_keep tokens of the shuffled order, so
        # the removed ones are the rest: appending the mask tokens rebuilds the
        # whole shuffled sequence ...
        shuffled = torch.cat([visible, self.mask_token.expand(n, num_removed, -1)], dim=1)
        # ... and patch j of the original order is the token at shuffled position ids_restore[j].
        return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor | None) -> torch.Tensor:
        """Predict the pixels of every patch: ``(N, 1 + L_keep, D) -> (N, L, p*p*C)``.

        ``ids_restore=None`` means ``latent`` already holds every patch in its
        original order, ``(N, 1 + L, D)``, as the mask-token encoder returns it
        (:meth:`forward_encoder_with_mask_tokens`): the decoder then adds no mask tokens of its own.
        """
        tokens = self.decoder_embed(latent)  # (N, 1 + L_keep, D_dec)
        if ids_restore is not None:
            patch_tokens = self._fill_in_mask_tokens(tokens[:, 1:, :], ids_restore)  # (N, L, D_dec)
            tokens = torch.cat([tokens[:, :1, :], patch_tokens], dim=1)  # the cls token stays in front
        elif tokens.shape[1] != 1 + self.patch_embed.num_patches:
            raise ValueError(f"without ids_restore the latent must hold 1 + L = {1 + self.patch_embed.num_patches} "
                             f"tokens in patch order, got {tokens.shape[1]}")
        tokens = tokens + self.decoder_pos_embed  # mask tokens are identical: only this tells them apart
        for blk in self.decoder_blocks:
            tokens = blk(tokens)
        pixels = self.decoder_pred(self.decoder_norm(tokens))  # (N, 1 + L, p*p*C)
        return pixels[:, 1:, :]  # the cls token predicts no patch

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on removed patches; targets normalized per patch when ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        return masked_mse_loss(pred, target, mask)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                encoder_mask_tokens: bool = False):
        """One MAE step: returns ``loss ()``, ``pred (N, L, p*p*C)``, ``mask (N, L)``.

        ``imgs`` must be floating point; float16, bfloat16 and float64 images are
        cast to the parameters' dtype (see :meth:`prepare_images`), uint8 and
        other integer images are refused with a TypeError.

        ``encoder_mask_tokens=True`` runs the paper's Table 2 baseline: the same
        mask, loss and decoder, but the encoder processes all ``1 + L`` tokens,
        a mask token in place of each removed patch
        (:meth:`forward_encoder_with_mask_tokens`).  Same parameters, same
        outputs' shapes; only the cost differs.
        """
        imgs = self.prepare_images(imgs)
        num_patches = self.patch_embed.num_patches
        if num_kept(num_patches, mask_ratio) == num_patches:
            raise ValueError(
                f"mask_ratio={mask_ratio} removes no patch out of {num_patches}, so the loss "
                "(an average over removed patches) would be 0/0; use a larger mask_ratio"
            )
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise, encoder_mask_tokens)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def set_drop_path(self, rate: float) -> list[float]:
        """Stochastic depth in the encoder blocks, rising linearly from 0 (first block) to ``rate`` (last).

        The fine-tuning recipe of the paper (0.1 for ViT-B, 0.2 for ViT-L and
        ViT-H); the decoder is left alone.  ``rate=0`` turns it off again,
        which is the default (pretraining uses no drop path).  Nothing is added
        to the state dict (:class:`~mae_from_scratch.transformer.DropPath` holds
        no tensors).  Returns the rate of each block.
        """
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be a number in [0, 1), got {rate!r}")
        depth = len(self.blocks)
        rates = [float(rate) * (i / (depth - 1)) if depth > 1 else float(rate) for i in range(depth)]
        for blk, r in zip(self.blocks, rates):
            blk.drop_path.p = r
        return rates

    def forward_features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """The encoder on *all* patches, in their original order (no masking, no shuffle).

        ``pool='cls'`` -> ``(N, D)`` the cls token; ``pool='mean'`` -> ``(N, D)``
        the mean of the patch tokens; ``pool='none'`` -> ``(N, 1 + L, D)`` every
        token.  All after the encoder's final LayerNorm.  ``imgs`` as for
        :meth:`forward` (other float dtypes are cast to the parameters' dtype).
        """
        if pool not in ("cls", "mean", "none"):
            raise ValueError(f"pool must be 'cls', 'mean' or 'none', got {pool!r}")
        tokens = self._encode(self._embed_patches(imgs))
        if pool == "cls":
            return tokens[:, 0]
        if pool == "mean":
            return tokens[:, 1:].mean(dim=1)
        return tokens


# The paper's three models, with its decoder (512 wide, 8 blocks, 16 heads) ...
_PAPER_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)


def mae_vit_base_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-Base/16 at 224 px: encoder 768 wide, 12 blocks, 12 heads."""
    config = MAEConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_PAPER_DECODER)
    return MaskedAutoencoderViT(config, **overrides)


def mae_vit_large_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-Large/16 at 224 px: encoder 1024 wide, 24 blocks, 16 heads."""
    config = MAEConfig(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_PAPER_DECODER)
    return MaskedAutoencoderViT(config, **overrides)


def mae_vit_huge_patch14(**overrides) -> MaskedAutoencoderViT:
    """ViT-Huge/14 at 224 px: encoder 1280 wide, 32 blocks, 16 heads."""
    config = MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_PAPER_DECODER)
    return MaskedAutoencoderViT(config, **overrides)


# ... and small ones for CPUs and Colab.  Their decoders are sized to the encoder
# (a 512x8 decoder would cost more than a ViT-Tiny encoder).
def mae_vit_tiny_patch4_32(**overrides) -> MaskedAutoencoderViT:
    """ViT-Tiny/4 for 32x32 images (CIFAR-10): 64 patches, encoder 192x12, decoder 128x4."""
    config = MAEConfig(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                       decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)
    return MaskedAutoencoderViT(config, **overrides)


def mae_vit_tiny_patch8_64(**overrides) -> MaskedAutoencoderViT:
    """ViT-Tiny/8 for 64x64 images (Tiny ImageNet, STL-10 resized): 64 patches."""
    config = MAEConfig(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3,
                       decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)
    return MaskedAutoencoderViT(config, **overrides)


def mae_vit_micro_patch4_32(**overrides) -> MaskedAutoencoderViT:
    """A very small model for quick CPU demos and tests: encoder 96x4, decoder 64x2."""
    config = MAEConfig(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
                       decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
    return MaskedAutoencoderViT(config, **overrides)


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
