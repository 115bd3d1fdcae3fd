"""Convert our (official-layout) state dict into Hugging Face ViTMAE's layout.

Used only by the parity tests.  Transformers renamed ViTMAE's submodules in
version 5, so both layouts are spelled out and the one that matches the
installed model is used.
"""

import re

import torch

# (our block suffix) -> (transformers 4.x suffix, transformers 5.x suffix)
BLOCK_NAMES = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
QKV_NAMES = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
             ("attention.q_proj", "attention.k_proj", "attention.v_proj"))
ENCODER_LAYERS = ("vit.encoder.layer", "vit.layers")
TOP_NAMES = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
}


def to_hf_state_dict(ours: dict, hf_keys) -> dict:
    hf_keys = set(hf_keys)
    v = 1 if any(k.startswith("vit.layers.") for k in hf_keys) else 0
    out = {}
    for k, t in ours.items():
        if k in TOP_NAMES:
            out[TOP_NAMES[k]] = t
            continue
        m = re.fullmatch(r"(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)", k)
        if m is None:  # decoder_embed, decoder_norm, decoder_pred
            out["decoder." + k] = t
            continue
        which, i, name, kind = m.groups()
        prefix = f"{ENCODER_LAYERS[v]}.{i}" if which == "blocks" else f"decoder.decoder_layers.{i}"
        if name == "attn.qkv":
            for part, hf_name in zip(torch.chunk(t, 3, dim=0), QKV_NAMES[v]):
                out[f"{prefix}.{hf_name}.{kind}"] = part
        else:
            out[f"{prefix}.{BLOCK_NAMES[name][v]}.{kind}"] = t
    if set(out) != hf_keys:
        raise AssertionError(f"conversion mismatch: {sorted(set(out) ^ hf_keys)[:10]}")
    return out
