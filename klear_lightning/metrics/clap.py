"""CLAP (LAION, HTS-AT audio tower + RoBERTa text tower) through `transformers.ClapModel`.

`metrics.checkpoints.clap` is either
- a transformers directory (config.json, weights, tokenizer and preprocessor files), e.g. a local
  copy of `laion/clap-htsat-unfused`; or
- an original LAION `.pt` checkpoint (e.g. `630k-audioset-best.pt`), converted here key by key into
  the transformers model (config inferred from tensor shapes); its RoBERTa tokenizer files come from
  `metrics.checkpoints.clap_tokenizer` (a local copy of `roberta-base`'s tokenizer).

`clap_score`: raw cosine between the caption's text embedding and the audio embedding at 48 kHz,
averaged over clips (text = the clip's `audio_caption`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric

SAMPLE_RATE = 48000
TEXT_MAX_TOKENS = 77  # LAION's tokenizer setting

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


class ClapExtractor:
    """Text and audio embeddings (L2-normalised, float64 on the CPU); TF32 convolutions off."""

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.device = device

    @staticmethod
    def _pooled(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt")
        emb = self._pooled(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)))
        return torch.nn.functional.normalize(emb.double(), dim=-1).cpu()

    @torch.inference_mode()
    def audio_embeddings(self, clips: Sequence[MediaClip]) -> Tensor:
        waves = [clip_audio(c, SAMPLE_RATE, "CLAP").numpy() for c in clips]
        feats = self.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        is_longer = feats.get("is_longer")
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            emb = self._pooled(self.model.get_audio_features(
                input_features=feats["input_features"].to(self.device),
                is_longer=is_longer.to(self.device) if is_longer is not None else None,
            ))
        return torch.nn.functional.normalize(emb.double(), dim=-1).cpu()


def load_clap(path: Path, tokenizer_dir: Path | None, device: torch.device) -> ClapExtractor:
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    if path.is_dir():
        model = ClapModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or path)
        if (path / "preprocessor_config.json").exists():
            features = ClapFeatureExtractor.from_pretrained(path)
        else:
            features = ClapFeatureExtractor(truncation="fusion" if model.config.audio_config.enable_fusion else "rand_trunc")
    else:
        if tokenizer_dir is None:
            raise MetricUnavailable(
                "set metrics.checkpoints.clap_tokenizer to a local roberta-base tokenizer directory (needed for a LAION .pt)"
            )
        model = load_laion_checkpoint(path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        features = ClapFeatureExtractor(truncation="fusion" if model.config.audio_config.enable_fusion else "rand_trunc")
    return ClapExtractor(model, tokenizer, features, device)


def clap_extractor(ctx: BuildContext) -> ClapExtractor:
    path = ctx.checkpoint("clap", "a transformers CLAP directory (e.g. laion/clap-htsat-unfused) or a LAION .pt")
    tokenizer_dir = ctx.checkpoint("clap_tokenizer", "a roberta-base tokenizer directory") if ctx.checkpoints.get("clap_tokenizer") else None
    return ctx.shared("clap", lambda: load_clap(path, tokenizer_dir, ctx.device))


class ClapScore(ClipMetric):
    columns = (Column("clap_score", "CLAP", higher_is_better=True),)
    protocol = "LAION CLAP (transformers) 48 kHz: raw cosine(audio_caption text embedding, audio embedding), mean"

    def __init__(self, extractor: ClapExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        captioned = [c for c in generated if str(c.meta.get("audio_caption") or "").strip()]
        if not captioned:
            return
        text = self.extractor.text_embeddings([str(c.meta["audio_caption"]) for c in captioned])
        audio = self.extractor.audio_embeddings(captioned)
        self.total += (text * audio).sum(-1).sum().to(self.device)
        self.n += len(captioned)

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clip with an audio_caption in its meta was scored")
        return self.total / self.n


@register_metric("clap_score", group="audio", description="CLAP text-audio cosine at 48 kHz (LAION CLAP)")
def build_clap_score(ctx: BuildContext) -> ClipMetric:
    return ClapScore(clap_extractor(ctx))
