"""The linear probe: a linear classifier trained on frozen features.

A BatchNorm without affine parameters comes before the linear layer (as in
the paper, which found it makes the probe insensitive to the features' scale).
Departure from the official probe, for speed on small machines: the features
are computed once, without augmentation, and the probe trains on them (SGD
with momentum and a cosine schedule instead of LARS).
:func:`linear_probe_evaluation` scores the test split with ``blr`` fixed, or
chosen from :data:`BLR_GRID` on held-out training images
(:mod:`~mae_from_scratch.validation`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .validation import _tune_on_val

BLR_GRID = (0.03, 0.1, 0.3)  # the linear probe's base learning rates that --tune tries


class LinearProbe(nn.Module):
    """``BatchNorm1d(D, affine=False)`` then ``Linear(D, num_classes)``: ``(N, D) -> (N, C)``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(x))


def linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes: int | None = None,
                 epochs: int = 90, batch_size: int = 256, blr: float = 0.1, weight_decay: float = 0.0,
                 seed: int = 0, device="cpu", return_probe: bool = False):
    """Train :class:`LinearProbe` on frozen features and return the test accuracy.

    SGD (momentum 0.9), ``lr = blr * batch_size / 256``, cosine schedule over
    ``epochs``, cross-entropy.  Deterministic for a given ``seed``.  Fewer than two training
    features are refused: the BatchNorm needs two per batch, so the probe would never train.
    """
    if train_feats.shape[0] < 2:
        raise ValueError(f"the linear probe needs at least 2 training images (its BatchNorm normalizes over a "
                         f"batch), got {train_feats.shape[0]}")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(train_feats.shape[1], num_classes).to(device)
    lr = blr * batch_size / 256
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    x, y = train_feats.to(device).float(), train_labels.to(device)
    n = x.shape[0]
    steps_per_epoch = max(math.ceil(n / batch_size), 1)
    total = epochs * steps_per_epoch
    step = 0
    probe.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    probe.eval()
    with torch.no_grad():
        acc = (probe(test_feats.to(device).float()).argmax(1).cpu() == test_labels).float().mean().item()
    return (acc, probe) if return_probe else acc


def linear_probe_evaluation(train_feats, train_labels, test_feats, test_labels, num_classes: int | None = None,
                            blr: float = 0.1, tune: bool = False, grid=BLR_GRID, val_images: int | None = None,
                            seed: int = 0, epochs: int = 90, batch_size: int = 256, weight_decay: float = 0.0,
                            device="cpu") -> dict:
    """Linear-probe accuracy on the test split, with ``blr`` fixed or chosen on a validation split.

    As :func:`~mae_from_scratch.knn.knn_evaluation`: with ``tune=True`` a probe per ``blr`` in
    ``grid`` is trained on the training features minus ``val_images`` held-out
    ones and scored on those; the best ``blr`` then trains a probe on *all*
    training features, scored once on the test split.

    Returns ``{"accuracy", "blr", "epochs", "tuned"}`` plus, when tuned,
    ``"val_accuracy"`` (``{str(blr): accuracy}``), ``"val_images"`` and ``"grid"``; as there,
    a grid that scores the same everywhere chooses nothing (``"tuned"`` false, the given ``blr``).
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    probe_args = dict(num_classes=num_classes, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay,
                      seed=seed, device=device)
    result = {"tuned": bool(tune)}
    if tune:
        chosen = _tune_on_val(result, train_labels, grid, val_images, seed, lambda tr, va, c: linear_probe(
            train_feats[tr], train_labels[tr], train_feats[va], train_labels[va], blr=c, **probe_args), "blr", blr)
        blr = blr if chosen is None else chosen
    acc = linear_probe(train_feats, train_labels, test_feats, test_labels, blr=blr, **probe_args)
    result.update(blr=blr, epochs=epochs, accuracy=acc)
    return result

