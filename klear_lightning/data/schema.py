"""The sample schema: one clip with its captions, annotation and optional cached arrays.

Cached arrays are keyed by what produced them so a stale cache is never used:
`latent.<codec>-<version>` for codec latents (unnormalised, codec layout without batch dim; codec and
encoder names use [A-Za-z0-9_], the first dash starts the version) and
`emb.<stream>.<encoder>-<version>` for caption token embeddings (L, D) of the real tokens only
(no padding, so no mask is stored), with stream `video_text` or `audio_text`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from klear_lightning.media import MediaClip

REQUIRED_META: dict[str, type | tuple[type, ...]] = {
    "video_caption": str,
    "audio_caption": str,
    "transcript": str,
    "split": str,
    "annotation": dict,
    "source": str,
}
DERIVED_META: tuple[str, ...] = ("key", "duration", "fps", "sample_rate")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_ARRAY = re.compile(
    r"^(latent\.[A-Za-z0-9_]+-[A-Za-z0-9_.\-]+|emb\.(video_text|audio_text)\.[A-Za-z0-9_]+-[A-Za-z0-9_.\-]+)$"
)


class SampleError(ValueError):
    """A sample that breaks the schema; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def latent_name(codec: str, version: str) -> str:
    return f"latent.{codec}-{version}"


def embedding_name(stream: str, encoder: str, version: str) -> str:
    return f"emb.{stream}.{encoder}-{version}"


def audio_text(meta: dict[str, Any]) -> str:
    """The text of the audio-text stream: the audio caption, then the transcript when there is one."""
    transcript = meta.get("transcript", "").strip()
    caption = meta["audio_caption"].strip()
    return f"{caption} Transcript: {transcript}" if transcript else caption


def stream_texts(meta: dict[str, Any]) -> dict[str, str]:
    return {"video_text": meta["video_caption"].strip(), "audio_text": audio_text(meta)}


@dataclass
class AVSample:
    """One clip. video: uint8 (T, H, W, 3) RGB; audio: float32 (N,) mono in [-1, 1].

    `meta` holds the caption fields of REQUIRED_META (transcript may be empty; annotation is the
    ground truth a generator knows, `{}` for real data). `arrays` holds cached latents / embeddings.
    Torch tensors are accepted and stored as numpy arrays.
    """

    key: str
    video: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.video, torch.Tensor):
            self.video = self.video.detach().cpu().numpy()
        if isinstance(self.audio, torch.Tensor):
            self.audio = self.audio.detach().cpu().numpy()
        self.arrays = {
            k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in self.arrays.items()
        }

    @property
    def duration(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    def validate(self) -> None:
        """Raise SampleError naming the key and the field that is wrong."""
        where = f"sample {self.key!r}"
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise SampleError("bad_key", f"{where}: key must match [A-Za-z0-9_-]+ (no dots: WebDataset splits on them)")
        v = self.video
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] == 0:
            got = f"{getattr(v, 'dtype', type(v))} {getattr(v, 'shape', '')}"
            raise SampleError("bad_video", f"{where}: video must be uint8 (T>0, H, W, 3), got {got}")
        if v.shape[1] % 2 or v.shape[2] % 2:
            raise SampleError(
                "bad_video", f"{where}: video height and width must be even for yuv420p, got {v.shape[1:3]}"
            )
        a = self.audio
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1:
            raise SampleError(
                "bad_audio",
                f"{where}: audio must be float32 (N,), got {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}",
            )
        if a.shape[0] == 0:
            raise SampleError("empty_audio", f"{where}: audio is empty")
        if not np.isfinite(a).all():
            raise SampleError("nan_audio", f"{where}: audio has NaN or inf")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise SampleError("bad_fps", f"{where}: fps must be positive, got {self.fps}")
        if not (isinstance(self.sample_rate, int) and self.sample_rate > 0):
            raise SampleError(
                "bad_sample_rate", f"{where}: sample_rate must be a positive int, got {self.sample_rate!r}"
            )
        validate_meta(self.meta, where)
        for name, arr in self.arrays.items():
            if not _ARRAY.match(name):
                raise SampleError(
                    "bad_array",
                    f"{where}: cached array name {name!r} is not latent.<codec>-<version> or emb.<stream>.<encoder>-<version>",
                )
            if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
                raise SampleError("bad_array", f"{where}: cached array {name!r} must be a float numpy array")
            if not np.isfinite(arr).all():
                raise SampleError("nan_latent", f"{where}: cached array {name!r} has NaN or inf")

    def record(self) -> dict[str, Any]:
        """The JSON record: caption fields plus the derived key, duration, fps and sample rate."""
        return {
            **self.meta,
            "key": self.key,
            "duration": self.duration,
            "fps": float(self.fps),
            "sample_rate": self.sample_rate,
        }

    def to_clip(self) -> MediaClip:
        return MediaClip(
            video=torch.from_numpy(self.video),
            fps=float(self.fps),
            audio=torch.from_numpy(self.audio),
            sample_rate=self.sample_rate,
            meta=self.record(),
        )


def validate_meta(meta: dict[str, Any], where: str) -> None:
    if not isinstance(meta, dict):
        raise SampleError("bad_meta", f"{where}: meta must be a dict, got {type(meta).__name__}")
    for name, kind in REQUIRED_META.items():
        if name not in meta:
            reason = "missing_caption" if name.endswith("caption") else "bad_meta"
            raise SampleError(reason, f"{where}: meta is missing {name!r}")
        if not isinstance(meta[name], kind):
            raise SampleError("bad_meta", f"{where}: meta[{name!r}] must be {kind}, got {type(meta[name]).__name__}")
    for name in ("video_caption", "audio_caption"):
        if not meta[name].strip():
            raise SampleError("missing_caption", f"{where}: meta[{name!r}] is empty")
