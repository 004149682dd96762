"""Every stream length, derived in one place from the clip and the codecs (MMAudio's rule).

A clip of `duration` seconds at `fps` frames/s and `sample_rate` Hz becomes
- video latents of shape (T_v, H_v, W_v) with T_v = 1 + (frames - 1) // temporal_factor for a
  causal video codec (first frame kept alone, as CogVideoX / Wan), frames // temporal_factor otherwise;
- audio latents of length T_a = samples // audio_hop;
- tokens: video T_v * (H_v / p) * (W_v / p) with patch (1, p, p); audio T_a / p_a.
Every division must be exact: a clip that does not tile is a configuration error, not a silent crop.
"""

from __future__ import annotations

from dataclasses import dataclass

from klear_lightning.errors import ConfigError


@dataclass(frozen=True)
class ClipSpec:
    """The raw clip every sample is cut / resized to (one bucket).

    Args:
        duration: seconds; longer media is cut, shorter media is padded and masked.
        fps: video frame rate the clip is retimed to.
        height: frame height in pixels (the largest resolution bucket's).
        width: frame width in pixels.
        sample_rate: audio sample rate in Hz (mono).
    """

    duration: float = 2.0
    fps: float = 8.0
    height: int = 32
    width: int = 32
    sample_rate: int = 16000

    @property
    def frames(self) -> int:
        return _exact(self.duration * self.fps, "clip.duration * clip.fps")

    @property
    def samples(self) -> int:
        return _exact(self.duration * self.sample_rate, "clip.duration * clip.sample_rate")


@dataclass(frozen=True)
class LatentGeometry:
    """Compression factors of the codecs (what `codecs` report), independent of any clip.

    Args:
        video_channels: channels of a video latent.
        video_temporal_factor: video frames per latent frame.
        video_spatial_factor: pixels per latent position along height and width.
        video_causal: the first frame is encoded alone (CogVideoX / Wan): 1 + (frames - 1) / factor latent frames.
        audio_channels: channels of an audio latent.
        audio_hop: audio samples per latent frame.
    """

    video_channels: int
    video_temporal_factor: int
    video_spatial_factor: int
    video_causal: bool
    audio_channels: int
    audio_hop: int


@dataclass(frozen=True)
class SequenceSpec:
    clip: ClipSpec
    geometry: LatentGeometry
    video_patch: int = 1
    audio_patch: int = 1

    def __post_init__(self) -> None:
        g = self.geometry
        _divides(
            g.video_spatial_factor * self.video_patch,
            self.clip.height,
            "clip.height",
            "video_spatial_factor * video_patch",
        )
        _divides(
            g.video_spatial_factor * self.video_patch,
            self.clip.width,
            "clip.width",
            "video_spatial_factor * video_patch",
        )
        if g.video_causal:
            _divides(g.video_temporal_factor, self.clip.frames - 1, "clip frames - 1", "video_temporal_factor")
        else:
            _divides(g.video_temporal_factor, self.clip.frames, "clip frames", "video_temporal_factor")
        _divides(g.audio_hop, self.clip.samples, "clip samples", "audio_hop")
        _divides(self.audio_patch, self.audio_latent_frames, "audio latent frames", "audio_patch")

    @property
    def video_latent_frames(self) -> int:
        g = self.geometry
        if g.video_causal:
            return 1 + (self.clip.frames - 1) // g.video_temporal_factor
        return self.clip.frames // g.video_temporal_factor

    @property
    def video_latent_hw(self) -> tuple[int, int]:
        f = self.geometry.video_spatial_factor
        return self.clip.height // f, self.clip.width // f

    @property
    def audio_latent_frames(self) -> int:
        return self.clip.samples // self.geometry.audio_hop

    @property
    def video_latent_fps(self) -> float:
        return self.video_latent_frames / self.clip.duration

    @property
    def audio_latent_fps(self) -> float:
        return self.clip.sample_rate / self.geometry.audio_hop

    @property
    def video_tokens(self) -> int:
        h, w = self.video_latent_hw
        return self.video_latent_frames * (h // self.video_patch) * (w // self.video_patch)

    @property
    def audio_tokens(self) -> int:
        return self.audio_latent_frames // self.audio_patch


def _exact(value: float, what: str) -> int:
    n = round(value)
    if abs(value - n) > 1e-6:
        raise ConfigError(f"{what}: {value} is not a whole number")
    return n


def _divides(factor: int, n: int, what: str, by: str) -> None:
    if factor <= 0 or n % factor:
        raise ConfigError(f"{what}: {n} is not divisible by {by} = {factor}")
