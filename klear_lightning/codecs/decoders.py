"""Normalised latents <-> codec latents, and what turns generated latents back into media.

Latents in batches are normalised per channel, z = (x - mean) / std, with the statistics stored
beside the shards (`normalization.LatentStats`); mean and std are (C,) tensors or None (no
normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


def _channels(x: Tensor, stat: Tensor) -> Tensor:
    """`stat` (C,) shaped to broadcast over dim 1 of a batched latent (B, C, ...)."""
    return stat.to(x).reshape((1, -1) + (1,) * (x.dim() - 2))


def normalize(x: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """Batched codec latents (B, C, ...) -> normalised."""
    if mean is None or std is None:
        return x
    return (x - _channels(x, mean)) / _channels(x, std)


def denormalize(x: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """Batched normalised latents (B, C, ...) -> codec scale."""
    if mean is None or std is None:
        return x
    return x * _channels(x, std) + _channels(x, mean)


class Decoder(Protocol):
    def decode(self, lat: Tensor) -> Tensor: ...


@dataclass
class Decoders:
    """The codecs and latent statistics that turn normalised latents into frames and waveforms
    (what `KlearModule.generate` needs; the data module provides it)."""

    video_codec: Decoder
    audio_codec: Decoder
    fps: float
    sample_rate: int
    video_mean: Tensor | None = None
    video_std: Tensor | None = None
    audio_mean: Tensor | None = None
    audio_std: Tensor | None = None

    def video(self, latents: Tensor) -> Tensor:
        """Normalised video latents (B, C, T, H, W) -> uint8 frames (B, T, H, W, 3)."""
        return self.video_codec.decode(denormalize(latents.float(), self.video_mean, self.video_std))

    def audio(self, latents: Tensor) -> Tensor:
        """Normalised audio latents (B, C, T) -> float waveforms (B, N)."""
        return self.audio_codec.decode(denormalize(latents.float(), self.audio_mean, self.audio_std)).float()
