"""Typed containers for the four token streams that cross module boundaries.

Stream order is fixed everywhere: video (V), video text (VT), audio text (AT), audio (A).
Time convention (flow matching, paper): t = 0 is noise, t = 1 is clean data. A conditioning
token carries t = 1. A stream that is absent for a sample has an all-False mask for that sample:
absence is "not in the attention at all", expressed as masking, never as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

STREAMS: tuple[str, ...] = ("video", "video_text", "audio_text", "audio")
GENERATED_STREAMS: tuple[str, ...] = ("video", "audio")
TEXT_STREAMS: tuple[str, ...] = ("video_text", "audio_text")


@dataclass
class AVBatch:
    """A collated batch as the DataModule yields it: latents and caption embeddings, clean.

    Shapes: video (B, C_v, T_v, H, W) latents; audio (B, C_a, T_a) latents;
    video_text / audio_text (B, L, D_text) token embeddings. Masks are bool, True = real
    (non-padding) position: video_mask (B, T_v) over latent frames, audio_mask (B, T_a),
    text masks (B, L). `meta` holds each sample's JSON record (captions, transcript, split,
    key, annotation) for logging and metrics; it never reaches the network.
    """

    video: Tensor
    video_mask: Tensor
    audio: Tensor
    audio_mask: Tensor
    video_text: Tensor
    video_text_mask: Tensor
    audio_text: Tensor
    audio_text_mask: Tensor
    meta: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]

    def to(self, device: torch.device | str) -> AVBatch:
        moved = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


@dataclass
class ModelInputs:
    """What the denoiser sees: possibly noisy latents, clean text, per-frame times and masks.

    video_t (B, T_v) and audio_t (B, T_a) are per latent frame (1 = clean), so a conditioned
    first frame inside a generated video carries t = 1. Text tokens always carry t = 1.
    Masks are False for padding and for every position of an absent stream.
    """

    video: Tensor
    audio: Tensor
    video_text: Tensor
    audio_text: Tensor
    video_t: Tensor
    audio_t: Tensor
    video_mask: Tensor
    audio_mask: Tensor
    video_text_mask: Tensor
    audio_text_mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]

    def mask(self, stream: str) -> Tensor:
        return getattr(self, f"{stream}_mask")


@dataclass
class ModelOutputs:
    """Predicted velocities (x1 - x0) in latent layout: video (B, C_v, T_v, H, W), audio (B, C_a, T_a)."""

    video: Tensor
    audio: Tensor
