"""The optimizer recipe (optim): the learning rate, AdamW's groups, the schedule, layer-wise decay.

Value checks on small hand-made modules, so that each rule is tested by itself; the
recipe as it meets the real model is tested in test_pretrain.py and test_finetune.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mae_from_scratch.optim import (
    build_optimizer, effective_lr, encoder_layer_id, layer_scales, lr_at, param_groups_layer_decay,
    param_groups_weight_decay, set_lr,
)


def test_effective_lr_multiplies_every_factor_and_divides_by_256():
    assert effective_lr(3.0, 64, 2, 4) == 3.0 * 64 * 2 * 4 / 256
    assert effective_lr(1e-3, 256) == 1e-3  # one process, no accumulation by default
    assert effective_lr(1.5e-4, batch_size=64, accum_iter=8, world_size=8) == pytest.approx(1.5e-4 * 16)


class _Tiny(nn.Module):
    """Every kind of parameter the grouping rules tell apart, under known names."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)  # proj.weight 2-D: decayed; proj.bias 1-D: not
        self.norm = nn.LayerNorm(4)  # 1-D gain and bias: not decayed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # 3-D: decayed, as in the official recipe
        self.table = nn.Parameter(torch.zeros(5, 4), requires_grad=False)  # frozen: left out
        self.inner = nn.Module()
        self.inner.bias = nn.Parameter(torch.zeros(2, 4))  # a 2-D bias: a bias all the same, not decayed


def _names(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_weight_decay_groups_exempt_1d_parameters_and_biases_and_leave_out_frozen_ones():
    model = _Tiny()
    no_decay, decay = param_groups_weight_decay(model, 0.1)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert _names(model, no_decay["params"]) == {"proj.bias", "norm.weight", "norm.bias", "inner.bias"}
    assert _names(model, decay["params"]) == {"proj.weight", "cls_token"}
    assert param_groups_weight_decay(model)[1]["weight_decay"] == 0.05  # the paper's default


def test_build_optimizer_is_adamw_with_maes_betas_over_the_two_groups():
    model = _Tiny()
    opt = build_optimizer(model, lr=2e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    assert _names(model, opt.param_groups[1]["params"]) == {"proj.weight", "cls_token"}
    assert build_optimizer(model, 1e-3, weight_decay=0.3).param_groups[1]["weight_decay"] == 0.3


def test_lr_schedule_warms_up_linearly_then_follows_half_a_cosine():
    lr, min_lr, warm, total = 1e-3, 1e-5, 4, 20
    assert lr_at(0, lr, min_lr, warm, total) == 0.0
    assert lr_at(1, lr, min_lr, warm, total) == pytest.approx(lr / 4)
    assert lr_at(3, lr, min_lr, warm, total) == pytest.approx(3 * lr / 4)
    assert lr_at(4, lr, min_lr, warm, total) == pytest.approx(lr)
    for epoch in (4, 6, 8.5, 12, 17, 20):
        progress = (epoch - warm) / (total - warm)
        expected = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at(epoch, lr, min_lr, warm, total) == pytest.approx(expected, rel=1e-12)
    assert lr_at(12, lr, min_lr, warm, total) == pytest.approx((lr + min_lr) / 2)  # half-way down
    # After the last epoch the rate stays at min_lr (a resumed run may step a little past it).
    assert lr_at(20, lr, min_lr, warm, total) == pytest.approx(min_lr)
    assert lr_at(23, lr, min_lr, warm, total) == pytest.approx(min_lr)


def test_lr_schedule_without_warmup_and_with_only_warmup():
    # No warmup: the cosine starts at the full rate at epoch 0 (no division by zero).
    assert lr_at(0, 1e-3, 0.0, 0, 10) == pytest.approx(1e-3)
    assert lr_at(5, 1e-3, 0.0, 0, 10) == pytest.approx(0.5e-3)
    # Only warmup: the full rate from its end on.
    assert lr_at(5, 1e-3, 1e-5, 5, 5) == 1e-3
    assert lr_at(7, 1e-3, 1e-5, 5, 5) == 1e-3
    assert lr_at(7, 1e-3, 1e-5, 8, 5) == pytest.approx(7e-3 / 8)


def test_set_lr_multiplies_by_each_groups_lr_scale():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a], "lr_scale": 0.25}, {"params": [b]}], lr=1.0)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2 * 0.25, 0.2]


@pytest.mark.parametrize("name, layer", [
    ("patch_embed.proj.weight", 0), ("encoder.patch_embed.proj.bias", 0), ("cls_token", 0),
    ("pos_embed", 0), ("encoder.pos_embed", 0),
    ("blocks.0.attn.qkv.weight", 1), ("encoder.blocks.3.mlp.fc1.bias", 4), ("blocks.11.norm1.weight", 12),
    ("norm.weight", 13), ("encoder.norm.bias", 13), ("head.weight", 13), ("fc_norm.weight", 13),
    # "blocks" not followed by a block number is not a block
    ("blocks", 13), ("blocks.weight", 13), ("encoder.blocks", 13),
])
def test_encoder_layer_ids(name, layer):
    assert encoder_layer_id(name, 12) == layer


def test_layer_scales_fall_geometrically_from_the_head():
    assert layer_scales(2, 0.5) == [0.125, 0.25, 0.5, 1.0]
    assert layer_scales(0, 0.75) == [0.75, 1.0]


class _Encoder(nn.Module):
    """A 2-block ViT-shaped encoder: parameters under the names encoder_layer_id reads."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(3, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4), requires_grad=False)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Module()
        self.head.extra = nn.Module()
        self.head.extra.special = nn.Parameter(torch.zeros(2, 4))  # 2-D, named in no_weight_decay below


def _groups_by_name(model, groups):
    return {n: g for g in groups for n in _names(model, g["params"])}


def test_layer_decay_groups_scale_each_layer_and_exempt_the_named_tokens():
    model = _Encoder()
    groups = param_groups_layer_decay(model, depth=2, weight_decay=0.1, layer_decay=0.5,
                                      no_weight_decay=("cls_token", "special"))
    by_name = _groups_by_name(model, groups)
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}  # pos_embed is frozen
    expected = {  # name: (layer, lr_scale, weight decay)
        "patch_embed.proj.weight": (0, 0.125, 0.1), "patch_embed.proj.bias": (0, 0.125, 0.0),
        "cls_token": (0, 0.125, 0.0), "blocks.0.weight": (1, 0.25, 0.1), "blocks.0.bias": (1, 0.25, 0.0),
        "blocks.1.weight": (2, 0.5, 0.1), "blocks.1.bias": (2, 0.5, 0.0), "norm.weight": (3, 1.0, 0.0),
        "norm.bias": (3, 1.0, 0.0), "head.extra.special": (3, 1.0, 0.0),
    }
    for name, (layer, scale, decay) in expected.items():
        g = by_name[name]
        assert (g["layer"], g["lr_scale"], g["weight_decay"]) == (layer, scale, decay), name
    # One group per (layer, decayed or not), in that order.
    keys = [(g["layer"], g["weight_decay"] > 0) for g in groups]
    assert keys == [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False)]
    assert sum(len(g["params"]) for g in groups) == len(by_name)


def test_layer_decay_defaults_are_the_papers_fine_tuning_recipe():
    model = _Encoder()
    by_name = _groups_by_name(model, param_groups_layer_decay(model, depth=2))
    assert by_name["blocks.0.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.0.weight"]["lr_scale"] == pytest.approx(0.75 ** 2)
    assert by_name["cls_token"]["weight_decay"] == 0.0  # no decay on the cls token by default ...
    assert by_name["head.extra.special"]["weight_decay"] == 0.05  # ... and only on the named tokens
