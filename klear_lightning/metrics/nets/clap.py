"""LAION CLAP (HTS-AT audio tower + RoBERTa text tower) as `transformers.ClapModel`, including the
key-by-key conversion of an original LAION `.pt` checkpoint (e.g. `630k-audioset-best.pt`; the
config is inferred from tensor shapes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor



# LAION-only tensors with no transformers counterpart: the in-model mel front end (the feature
# extractor computes it), the AudioSet head, the training-only MLPs and rebuilt buffers.
_DROPPED = re.compile(
    r"^(audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|text_transform\.|audio_transform\.)"
    r"|\.attn_mask$|^text_branch\.embeddings\.position_ids$"
)


_BLOCK_RENAMES = (
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
    (".attn.proj.", ".attention.output.dense."),
    (".attn.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".attn.relative_position_index", ".attention.self.relative_position_index"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)


def laion_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split qkv of) a LAION CLAP state dict into `transformers.ClapModel` keys."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _DROPPED.search(key):
            continue
        if key.startswith("audio_branch."):
            key = "audio_model.audio_encoder." + key.removeprefix("audio_branch.")
            key = key.replace("audio_encoder.bn0.", "audio_encoder.batch_norm.")
            if ".blocks." in key:
                for old, new in _BLOCK_RENAMES:
                    key = key.replace(old, new)
                if ".attn.qkv." in key:
                    for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                        out[key.replace(".attn.qkv.", f".attention.self.{name}.")] = part.clone()
                    continue
        elif key.startswith("text_branch."):
            key = "text_model." + key.removeprefix("text_branch.")
        elif m := re.match(r"^(text|audio)_projection\.([02])\.(weight|bias)$", key):
            key = f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.{m[3]}"
        elif key not in ("logit_scale_a", "logit_scale_t"):
            raise ValueError(f"unexpected key {key!r} in a LAION CLAP checkpoint")
        out[key] = value
    return out


def config_from_laion(state: dict[str, Tensor]) -> Any:
    """A `ClapConfig` matching a converted state dict's shapes (text heads: hidden // 64, as RoBERTa)."""
    from transformers import ClapConfig

    enc = "audio_model.audio_encoder."
    n_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(enc + "layers."))
    depths = [1 + max(int(k.split(".")[5]) for k in state if k.startswith(f"{enc}layers.{i}.blocks.")) for i in range(n_layers)]
    tables = [state[f"{enc}layers.{i}.blocks.0.attention.self.relative_position_bias_table"] for i in range(n_layers)]
    window = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
    words = state["text_model.embeddings.word_embeddings.weight"]
    text_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layer."))
    audio_proj = state["audio_projection.linear1.weight"]
    return ClapConfig(
        text_config=dict(
            vocab_size=words.shape[0],
            hidden_size=words.shape[1],
            num_hidden_layers=text_layers,
            num_attention_heads=max(1, words.shape[1] // 64),
            intermediate_size=state["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["text_model.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=state["text_model.embeddings.token_type_embeddings.weight"].shape[0],
        ),
        audio_config=dict(
            patch_embeds_hidden_size=state[enc + "patch_embed.proj.weight"].shape[0],
            depths=depths,
            num_attention_heads=[t.shape[1] for t in tables],
            window_size=window,
            hidden_size=audio_proj.shape[1],
            enable_fusion=any(k.startswith(enc + "patch_embed.mel_conv2d") for k in state),
        ),
        projection_dim=audio_proj.shape[0],
    )


def load_laion_checkpoint(path: Path) -> Any:
    """A `ClapModel` holding the weights of an original LAION `.pt` checkpoint."""
    from transformers import ClapModel

    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a LAION CLAP checkpoint (a dict with 'state_dict')")
    converted = laion_to_transformers(state)
    model = ClapModel(config_from_laion(converted))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"{path}: LAION CLAP conversion left missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    return model
