"""Audio preparation shared by the audio metrics: mono float waves at the extractor's rate."""

from __future__ import annotations

from math import gcd

import numpy as np
import torch
from scipy.signal import resample_poly
from torch import Tensor

from klear_lightning.media import MediaClip


def resample(wave: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """Polyphase resampling (Kaiser-windowed FIR, scipy) of a 1-D wave; float32 out."""
    if wave.ndim != 1:
        raise ValueError(f"resample expects a 1-D wave, got shape {tuple(wave.shape)}")
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wave = wave.detach().float().cpu()
    if orig_sr == target_sr:
        return wave
    g = gcd(orig_sr, target_sr)
    out = resample_poly(wave.numpy().astype(np.float64), target_sr // g, orig_sr // g)
    return torch.from_numpy(out.astype(np.float32))


def clip_audio(clip: MediaClip, target_sr: int, what: str) -> Tensor:
    """The clip's audio as a finite 1-D float32 wave at `target_sr`; clear error otherwise."""
    key = clip.meta.get("key", "?")
    if clip.audio is None:
        raise ValueError(f"{what}: clip {key} has no audio")
    if clip.audio.ndim != 1:
        raise ValueError(f"{what}: clip {key} audio must be mono (N,), got shape {tuple(clip.audio.shape)}")
    if clip.audio.numel() == 0:
        raise ValueError(f"{what}: clip {key} has empty audio")
    if not torch.isfinite(clip.audio).all():
        raise ValueError(f"{what}: clip {key} audio has NaN or inf samples")
    return resample(clip.audio, clip.sample_rate, target_sr)
