"""Media <-> latents and captions <-> token embeddings. One `build_*` per codec kind."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from klear_lightning.codecs.audio import AudioCodecConfig, LogMelCodec
from klear_lightning.codecs.decoders import Decoders, denormalize, normalize
from klear_lightning.codecs.normalization import LatentStats, StatsAccumulator, load_stats, stats_path
from klear_lightning.codecs.text import HFTextEncoder, TextEncoderConfig, build_text_encoder
from klear_lightning.codecs.video import PixelPatchCodec, VideoCodecConfig
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import LatentGeometry


class AudioCodec(Protocol):
    name: str
    version: str
    channels: int
    sample_rate: int
    hop: int

    def encode(self, wave: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


class VideoCodec(Protocol):
    name: str
    version: str
    channels: int
    temporal_factor: int
    spatial_factor: int
    causal: bool

    def encode(self, frames: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


def build_audio_codec(cfg: AudioCodecConfig) -> AudioCodec:
    if cfg.name == "logmel":
        return LogMelCodec(cfg)
    if cfg.name == "oobleck":
        from klear_lightning.codecs.pretrained import OobleckAudioCodec

        return OobleckAudioCodec(cfg.path)
    raise ConfigError(f"audio_codec.name: must be 'logmel' or 'oobleck', got {cfg.name!r}")


def build_video_codec(cfg: VideoCodecConfig) -> VideoCodec:
    if cfg.name == "pixel":
        return PixelPatchCodec(cfg)
    from klear_lightning.codecs.pretrained import DiffusersVideoCodec

    return DiffusersVideoCodec(cfg.name, cfg.path)


def latent_geometry(video: VideoCodec, audio: AudioCodec) -> LatentGeometry:
    return LatentGeometry(
        video_channels=video.channels,
        video_temporal_factor=video.temporal_factor,
        video_spatial_factor=video.spatial_factor,
        video_causal=video.causal,
        audio_channels=audio.channels,
        audio_hop=audio.hop,
    )


__all__ = [
    "AudioCodec",
    "AudioCodecConfig",
    "Decoders",
    "HFTextEncoder",
    "LatentStats",
    "LogMelCodec",
    "PixelPatchCodec",
    "StatsAccumulator",
    "TextEncoderConfig",
    "VideoCodec",
    "VideoCodecConfig",
    "build_audio_codec",
    "build_text_encoder",
    "build_video_codec",
    "denormalize",
    "latent_geometry",
    "load_stats",
    "normalize",
    "stats_path",
]
