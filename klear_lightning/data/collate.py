"""Per-sample latents and their collation into an AVBatch with padding masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from klear_lightning.streams import AVBatch


@dataclass
class LatentSample:
    """One sample ready for the model: normalised latents and caption token embeddings.

    video (C_v, T_v, H, W); audio (C_a, T_a); video_text / audio_text (L, D), real tokens only.
    """

    key: str
    video: Tensor
    audio: Tensor
    video_text: Tensor
    audio_text: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def _pad(items: list[Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """Stack along a new batch dim, zero-padding `dim` (of each item) to the longest; mask (B, max)."""
    longest = max(x.shape[dim] for x in items)
    out = items[0].new_zeros((len(items), *items[0].shape[:dim], longest, *items[0].shape[dim + 1 :]))
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, x in enumerate(items):
        out[i].narrow(dim, 0, x.shape[dim]).copy_(x)
        mask[i, : x.shape[dim]] = True
    return out, mask


def collate(samples: list[LatentSample]) -> AVBatch:
    """Pad time (video latent frames, audio latent frames) and text length; masks mark real positions."""
    if not samples:
        raise ValueError("collate: empty batch")
    for name, dims in (("video", (0, 2, 3)), ("audio", (0,)), ("video_text", (1,)), ("audio_text", (1,))):
        shapes = {tuple(getattr(s, name).shape[d] for d in dims) for s in samples}
        if len(shapes) > 1:
            keys = [s.key for s in samples]
            raise ValueError(
                f"collate: {name} shapes differ outside the padded dim {shapes} in keys {keys} (bucketing bug)"
            )
    video, video_mask = _pad([s.video for s in samples], 1)
    audio, audio_mask = _pad([s.audio for s in samples], 1)
    video_text, video_text_mask = _pad([s.video_text for s in samples], 0)
    audio_text, audio_text_mask = _pad([s.audio_text for s in samples], 0)
    return AVBatch(
        video=video,
        video_mask=video_mask,
        audio=audio,
        audio_mask=audio_mask,
        video_text=video_text,
        video_text_mask=video_text_mask,
        audio_text=audio_text,
        audio_text_mask=audio_text_mask,
        meta=[s.meta for s in samples],
    )
