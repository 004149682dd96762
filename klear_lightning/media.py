"""Decoded media: the container that metrics, logging and `klear generate` exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class MediaClip:
    """One decoded clip. video: uint8 (T, H, W, 3) RGB frames; audio: float32 (N,) mono in [-1, 1].

    Either modality may be None (a T2V clip has no audio). `meta` carries the sample's JSON
    record (captions, transcript, split, key, annotation) when known.
    """

    video: Tensor | None
    fps: float
    audio: Tensor | None
    sample_rate: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        if self.audio is not None:
            return self.audio.shape[0] / self.sample_rate
        if self.video is not None:
            return self.video.shape[0] / self.fps
        return 0.0
