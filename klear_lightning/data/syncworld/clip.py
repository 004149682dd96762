"""SyncWorld's in-memory clip, its configuration, and the raster / envelope helpers all splits share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from klear_lightning.errors import ConfigError

SPLITS: tuple[str, ...] = ("sound", "speech_single", "speech_multi", "singing")
BACKGROUND: tuple[int, int, int] = (34, 36, 44)


@dataclass(frozen=True)
class SceneScale:
    """How much of the frame the synchronised part of a clip covers (and so how much of a model's
    video loss it carries). Defaults are the original drawing.

    Args:
        face_radius: radius of the one face of `speech_single` / `singing`, as a fraction of the frame.
        pair_face_radius: radius of each of the two faces of `speech_multi`, as a fraction of the frame
            (at most 0.25: the faces sit at 0.26 and 0.74 of the width).
        mouth_scale: mouth width and opening relative to its face (at most 1.5, where the open mouth
            reaches from just below the eyes to the chin).
        object_scale: radius of the `sound` objects relative to the original small / medium / large.
    """

    face_radius: float = 0.36
    pair_face_radius: float = 0.21
    mouth_scale: float = 1.0
    object_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("face_radius", 0.2, 0.48),
            ("pair_face_radius", 0.15, 0.25),
            ("mouth_scale", 0.5, 1.5),
            ("object_scale", 0.5, 2.0),
        ):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"SyncWorld scene.{name} must be in [{lo}, {hi}], got {getattr(self, name)}")


@dataclass(frozen=True)
class SyncWorldConfig:
    """Clip geometry shared by every split, and the scene scale. Defaults are sized for the 2-core CPU demo."""

    duration: float = 2.0
    fps: int = 8
    size: int = 64
    sample_rate: int = 16000
    scene: SceneScale = SceneScale()

    def __post_init__(self) -> None:
        if self.duration < 1.0:
            raise ConfigError(f"SyncWorldConfig.duration: must be >= 1 s, got {self.duration}")
        if self.fps < 4:
            raise ConfigError(f"SyncWorldConfig.fps: must be >= 4, got {self.fps}")
        if self.size < 32 or self.size % 16:
            raise ConfigError(f"SyncWorldConfig.size: must be a multiple of 16 and >= 32, got {self.size}")
        if self.num_frames < 12:
            raise ConfigError(
                f"SyncWorldConfig.duration: duration * fps must give at least 12 frames, got {self.num_frames}"
            )
        if self.sample_rate < 8000:
            raise ConfigError(f"SyncWorldConfig.sample_rate: must be >= 8000, got {self.sample_rate}")

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))


@dataclass
class SyncClip:
    """One generated clip: video uint8 (T, H, W, 3), audio float32 (N,) in [-1, 1], text and truth."""

    split: str
    video: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int
    video_caption: str
    audio_caption: str
    transcript: str
    attributes: dict[str, Any]
    annotation: dict[str, Any] = field(default_factory=dict)


def blank_frames(cfg: SyncWorldConfig) -> np.ndarray:
    """(T, H, W, 3) float32 canvas filled with the background colour."""
    frames = np.empty((cfg.num_frames, cfg.size, cfg.size, 3), dtype=np.float32)
    frames[:] = np.asarray(BACKGROUND, dtype=np.float32)
    return frames


def ellipse_alpha(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """(size, size) coverage in [0, 1] of an axis-aligned ellipse, with a one-pixel soft edge."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    ry, rx = max(ry, 1e-3), max(rx, 1e-3)
    dist = np.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2)
    return np.clip((1.0 - dist) * min(ry, rx) + 0.5, 0.0, 1.0)


def box_alpha(size: int, cy: float, cx: float, half: float) -> np.ndarray:
    """(size, size) coverage of an axis-aligned square of half-width `half`, soft one-pixel edge."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    edge = half - np.maximum(np.abs(ys - cy), np.abs(xs - cx))
    return np.clip(edge + 0.5, 0.0, 1.0)


def paint(frame: np.ndarray, alpha: np.ndarray, colour: tuple[float, float, float]) -> None:
    """Alpha-blend a flat colour into a float (H, W, 3) frame in place."""
    frame += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - frame)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def frame_envelope(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS of `audio` in a one-frame window centred on each video frame's instant k / fps."""
    half = int(round(sample_rate / fps / 2))
    env = np.zeros(num_frames, dtype=np.float64)
    for k in range(num_frames):
        centre = int(round(k * sample_rate / fps))
        seg = audio[max(0, centre - half) : centre + half]
        env[k] = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64)))) if seg.size else 0.0
    return env


def normalise_peak(audio: np.ndarray, peak: float = 0.8) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (peak / top)).astype(np.float32) if top > 0 else audio.astype(np.float32)
