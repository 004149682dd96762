"""The filters of `klear curate` that need model weights a user supplies (local paths in the config),
loaded with the same loaders as the metrics:

- faces: S3FD (`s3fd`, syncnet_python's `sfd_face.pth`) finds every face track of a clip; their
  number is the clip's speaker count when routing speech;
- lip-sync: SyncNet (`syncnet`, `syncnet_v2.model`) scores each face track against the audio as
  syncnet_python does (25 fps, LSE-C, offset in frames); the most confident track stands for the clip;
- semantic: CLAP (`clap`, LAION's checkpoint or a transformers directory) gives the cosine between the
  audio and its `audio_caption`;
- aesthetic: the LAION aesthetic head (`aesthetic_head`) on CLIP ViT-L/14 embeddings (`clip_vision`), as
  the `aesthetic_laion` metric scores a clip;
- tagging: PANNs Cnn14 (`tagger`, with AudioSet's `class_labels_indices.csv` as `tagger_labels`) gives
  the probabilities of "Speech" and "Singing", which route vocal clips and send the rest to `sound`.

A model that is not configured is not loaded and its filter is reported skipped by the caller.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from klear_lightning.curate.config import CurateConfig
from klear_lightning.errors import ConfigError
from klear_lightning.media import MediaClip
from klear_lightning.metrics.aesthetic import AestheticScore
from klear_lightning.metrics.audio_prep import resample
from klear_lightning.metrics.clap import ClapExtractor, load_clap
from klear_lightning.metrics.face import FaceDetector
from klear_lightning.metrics.nets.aesthetic import load_aesthetic_head, load_clip_vision
from klear_lightning.metrics.nets.cnn14 import N_CLASSES, Cnn14, load_cnn14
from klear_lightning.metrics.nets.cnn14 import SAMPLE_RATE as TAGGER_SR
from klear_lightning.metrics.nets.s3fd import load_s3fd
from klear_lightning.metrics.nets.syncnet import SyncNet, load_syncnet
from klear_lightning.metrics.syncnet import AUDIO_SR, VIDEO_FPS, crop_faces, score_track
from klear_lightning.metrics.video_prep import resample_video


@dataclass(frozen=True)
class LipSyncScore:
    """SyncNet on a clip's most confident face track: LSE-C, LSE-D and the offset (25 fps frames,
    positive: the audio comes late)."""

    conf: float
    dist: float
    offset: int


VOCAL_CLASSES = ("Speech", "Singing")


def audioset_indices(path: Path, names: tuple[str, ...] = VOCAL_CLASSES) -> tuple[int, ...]:
    """The class indices of `names` in AudioSet's `class_labels_indices.csv` (index,mid,display_name)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        found = {row["display_name"]: int(row["index"]) for row in rows}
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"tagger_labels: {path} is not AudioSet's class_labels_indices.csv ({err})") from err
    if len(rows) != N_CLASSES or not set(names) <= found.keys():
        raise ConfigError(
            f"tagger_labels: {path} must list AudioSet's {N_CLASSES} classes with {', '.join(names)}; got {len(rows)}"
        )
    return tuple(found[n] for n in names)


@dataclass(frozen=True)
class Tagger:
    """PANNs Cnn14 and the indices of its "Speech" and "Singing" outputs."""

    net: Cnn14
    classes: tuple[int, ...]

    @torch.no_grad()
    def vocal(self, audio: np.ndarray, sr: int) -> tuple[float, float]:
        """(P(speech), P(singing)) of mono audio; at least one second (zero-padded), as PANNs runs."""
        wave = torch.from_numpy(audio.astype(np.float32))
        wave = resample(wave, sr, TAGGER_SR) if sr != TAGGER_SR else wave
        wave = torch.nn.functional.pad(wave, (0, max(0, TAGGER_SR - wave.numel())))
        probs = torch.sigmoid(self.net(wave[None]).logits[0])
        speech, singing = (float(probs[i]) for i in self.classes)
        return speech, singing


@dataclass
class CurateModels:
    """The optional networks of one scoring worker (None: not configured)."""

    detector: FaceDetector | None = None
    syncnet: SyncNet | None = None
    clap: ClapExtractor | None = None
    tagger: Tagger | None = None
    aesthetic: AestheticScore | None = None

    @classmethod
    def load(cls, cfg: CurateConfig) -> CurateModels:
        def path(p: str | None) -> Path | None:
            return Path(p).expanduser() if p else None

        s3fd, syncnet, clap, tagger = path(cfg.s3fd), path(cfg.syncnet), path(cfg.clap), path(cfg.tagger)
        labels, clip, head = path(cfg.tagger_labels), path(cfg.clip_vision), path(cfg.aesthetic_head)
        return cls(
            detector=FaceDetector(load_s3fd(s3fd)) if s3fd else None,
            syncnet=load_syncnet(syncnet) if syncnet else None,
            clap=load_clap(clap, path(cfg.clap_tokenizer), torch.device("cpu")) if clap else None,
            tagger=Tagger(load_cnn14(tagger), audioset_indices(labels)) if tagger and labels else None,
            aesthetic=AestheticScore(load_clip_vision(clip), load_aesthetic_head(head)) if clip and head else None,
        )

    @staticmethod
    def frames(video: np.ndarray, fps: float) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames at SyncNet's 25 fps (nearest earlier frame)."""
        return resample_video(torch.from_numpy(video), fps, VIDEO_FPS)

    def face_tracks(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Every face track (T, 4) of 25 fps frames (needs `detector`)."""
        assert self.detector is not None
        return self.detector.tracks(frames)

    def lipsync(self, frames: torch.Tensor, tracks: list[torch.Tensor], audio: np.ndarray, sr: int) -> LipSyncScore:
        """SyncNet over every face track of 25 fps frames; the most confident one (needs `syncnet`
        and at least one track)."""
        assert self.syncnet is not None and tracks
        wave = torch.from_numpy(audio.astype(np.float32))
        wave = (resample(wave, sr, AUDIO_SR) if sr != AUDIO_SR else wave).clamp(-1, 1) * 32768.0
        scores = [score_track(self.syncnet, crop_faces(frames, track), wave) for track in tracks]
        return LipSyncScore(*max(scores, key=lambda s: s[0]))

    def aesthetic_score(self, video: np.ndarray) -> float:
        """The LAION aesthetic score (1-10) of uint8 (T, H, W, 3) frames, 8 spread over the clip (needs
        `aesthetic`)."""
        assert self.aesthetic is not None
        return self.aesthetic.clip_score(torch.from_numpy(video))

    def clap_similarity(self, audio: np.ndarray, sr: int, caption: str, key: str) -> float:
        """Cosine between the CLAP embeddings of the audio and of its caption (needs `clap`)."""
        assert self.clap is not None
        clip = MediaClip(None, 1.0, torch.from_numpy(audio.astype(np.float32)), sr, meta={"key": key})
        return float((self.clap.audio_embeddings([clip]) * self.clap.text_embeddings([caption])).sum())
