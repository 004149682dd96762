"""CLAP (LAION, HTS-AT audio tower + RoBERTa text tower) through `transformers.ClapModel`.

`metrics.checkpoints.clap` is either
- a transformers directory (config.json, weights, tokenizer and preprocessor files), e.g. a local
  copy of `laion/clap-htsat-unfused`; or
- an original LAION `.pt` checkpoint (e.g. `630k-audioset-best.pt`), converted here key by key into
  the transformers model by `metrics.nets.clap`; its RoBERTa tokenizer files come from
  `metrics.checkpoints.clap_tokenizer` (a local copy of `roberta-base`'s tokenizer).

`clap_score`: raw cosine between the caption's text embedding and the audio embedding at 48 kHz,
averaged over clips (text = the clip's `audio_caption`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric
from klear_lightning.metrics.nets.clap import load_laion_checkpoint

SAMPLE_RATE = 48000
TEXT_MAX_TOKENS = 77  # LAION's tokenizer setting


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
