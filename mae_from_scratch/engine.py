"""Training loops.

:func:`train_steps` is the smallest honest MAE training loop: a fixed batch,
AdamW, fresh random masks at every step.  The chapters use it to train a
tiny model for a minute on a CPU.
"""

from __future__ import annotations

import torch
from tqdm import tqdm  # plain tqdm: the widget form does not render in the static book


def train_steps(
    model: torch.nn.Module,
    imgs: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    mask_ratio: float = 0.75,
    weight_decay: float = 0.05,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Train ``model`` for ``steps`` AdamW steps on ``imgs`` and return a metrics log.

    Each step draws its mask noise (and, with ``batch_size``, its mini-batch)
    from a generator seeded with ``seed``, so two calls with the same arguments
    and the same initial model give the same losses on the same device.

    Returns one dict per step: ``step``, ``loss`` (on removed patches, the
    training objective) and ``loss_visible`` (the same error on visible
    patches, which the objective ignores).
    """
    device = next(model.parameters()).device
    imgs = imgs.to(device)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    n = imgs.shape[0]
    num_patches = model.patch_embed.num_patches
    log = []
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="train", ascii=True):
        batch = imgs
        if batch_size is not None and batch_size < n:
            batch = imgs[torch.randperm(n, generator=g)[:batch_size].to(device)]
        noise = torch.rand(batch.shape[0], num_patches, generator=g).to(device)
        loss, pred, mask = model(batch, mask_ratio=mask_ratio, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            # The same error on the patches the encoder saw (ignored by the objective).
            loss_visible = model.forward_loss(batch, pred, 1 - mask) if mask.sum() < mask.numel() else torch.tensor(float("nan"))
        log.append({"step": step, "loss": loss.item(), "loss_visible": loss_visible.item()})
    return log
