"""Video preparation shared by the video metrics: frame-rate resampling, resizing, normalisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def resample_video(frames: Tensor, fps: float, target_fps: float) -> Tensor:
    """Nearest-earlier-frame resampling of (T, ...) frames to `target_fps`, keeping the duration."""
    count = int(math.floor(frames.shape[0] * target_fps / fps + 1e-6))
    idx = torch.floor(torch.arange(count, dtype=torch.float64) * fps / target_fps + 1e-6).long()
    return frames[idx.clamp(max=frames.shape[0] - 1)]


def resize_center_crop(frames: Tensor, size: int) -> Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, size, size) in [0, 1]: bicubic short side, centre crop."""
    x = rearrange(frames, "t h w c -> t c h w").float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 255) / 255.0


def normalized(frames: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """`resize_center_crop`, then per-channel (x - mean) / std."""
    x = resize_center_crop(frames, size)
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def even_frames(video: Tensor, count: int) -> Tensor:
    """`count` frames spread evenly from first to last (all frames when the clip is shorter)."""
    if video.shape[0] <= count:
        return video
    return video[torch.linspace(0, video.shape[0] - 1, count).round().long()]
