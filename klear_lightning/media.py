"""Decoded media: the container that metrics, logging and `klear generate` exchange, and its files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
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


def write_clip(clip: MediaClip, out_dir: Path, stem: str) -> list[Path]:
    """Write `<stem>.mp4` (video, with the audio track when there is audio), `<stem>.wav` and
    `<stem>_spectrogram.png` (when there is audio); returns the written paths."""
    from klear_lightning.data.media import encode_av, encode_video, write_spectrogram_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    wave = clip.audio.float().numpy() if clip.audio is not None else None
    if clip.video is not None:
        frames = np.ascontiguousarray(clip.video.numpy())
        data = (
            encode_av(frames, clip.fps, wave, clip.sample_rate) if wave is not None else encode_video(frames, clip.fps)
        )
        path = out_dir / f"{stem}.mp4"
        path.write_bytes(data)
        written.append(path)
    if wave is not None:
        path = out_dir / f"{stem}.wav"
        sf.write(path, np.clip(wave, -1.0, 1.0), clip.sample_rate, subtype="PCM_16")
        written.append(path)
        written.append(write_spectrogram_png(wave, clip.sample_rate, out_dir / f"{stem}_spectrogram.png", title=stem))
    return written


def write_panel(
    generated: list[MediaClip], reference: list[MediaClip], path: Path, title: str = "", frames: int = 4
) -> Path:
    """One PNG comparing generated clips with their ground truth, one row per clip: `frames` evenly
    spaced video frames and the audio's spectrogram of the generated clip, then the same of the
    ground truth (an empty cell where a clip has no video or no audio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("generated frames", "generated audio", "ground truth frames", "ground truth audio")
    fig, axes = plt.subplots(len(generated), 4, figsize=(14, 1.9 * len(generated) + 0.6), dpi=100, squeeze=False)
    for row, (gen, ref) in enumerate(zip(generated, reference, strict=True)):
        for col, (clip, kind) in enumerate(((gen, "video"), (gen, "audio"), (ref, "video"), (ref, "audio"))):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if kind == "video" and clip.video is not None and clip.video.shape[0] > 0:
                index = torch.linspace(0, clip.video.shape[0] - 1, frames).round().long()
                ax.imshow(np.concatenate(list(clip.video[index].numpy()), axis=1))
            elif kind == "audio" and clip.audio is not None and clip.audio.numel() > 0:
                ax.specgram(clip.audio.float().numpy(), Fs=clip.sample_rate, NFFT=512, noverlap=384, cmap="magma")
            if col == 0:
                ax.set_ylabel(str(gen.meta.get("split") or gen.meta.get("key") or row), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
