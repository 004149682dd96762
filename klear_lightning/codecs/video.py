"""Weight-free video codec: low-resolution pixel patches (space-to-depth), values in [-1, 1].

Frames (B, T, H, W, 3) uint8 are average-pooled by `pool`, then each `factor` x `factor` block
becomes 3 * factor**2 channels: latents (B, 3 * factor**2, T, H / (pool * factor), W / (pool * factor)).
No temporal compression. With pool = 1 the round trip is exact up to uint8 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.errors import ConfigError


@dataclass(frozen=True)
class VideoCodecConfig:
    """The video codec (frames <-> latents).

    Args:
        name: `pixel` (weight-free space-to-depth), `cogvideox` or `wan` (diffusers VAEs read from `path`).
        factor: pixel: space-to-depth factor; latents have 3 * factor**2 channels, values in [-1, 1].
        pool: pixel: average-pool the frames by this factor first (1 = off).
        path: cogvideox / wan: a local diffusers VAE folder (e.g. <checkout>/vae).
    """

    name: str = "pixel"
    factor: int = 4
    pool: int = 1
    path: str | None = None


class PixelPatchCodec(nn.Module):
    def __init__(self, cfg: VideoCodecConfig) -> None:
        super().__init__()
        if cfg.factor < 1 or cfg.pool < 1:
            raise ConfigError(f"video_codec.factor: factor and pool must be >= 1, got {cfg.factor}, {cfg.pool}")
        self.cfg = cfg
        self.name, self.version = "pixel", f"v1-f{cfg.factor}-p{cfg.pool}"
        self.channels = 3 * cfg.factor**2
        self.temporal_factor, self.spatial_factor, self.causal = 1, cfg.factor * cfg.pool, False

    def _check(self, h: int, w: int) -> None:
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(
                f"video codec: frame size {h}x{w} is not divisible by spatial factor {self.spatial_factor}"
            )

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3) -> (B, 3 * factor**2, T, H', W') in [-1, 1]."""
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"video codec: expected uint8 (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        b, _, h, w, _ = frames.shape
        self._check(h, w)
        x = rearrange(frames.float() / 127.5 - 1.0, "b t h w c -> (b t) c h w")
        if self.cfg.pool > 1:
            x = F.avg_pool2d(x, self.cfg.pool)
        f = self.cfg.factor
        return rearrange(x, "(b t) c (h p) (w q) -> b (c p q) t h w", b=b, p=f, q=f)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(B, 3 * factor**2, T, H', W') -> uint8 (B, T, H, W, 3)."""
        f = self.cfg.factor
        x = rearrange(latents.float(), "b (c p q) t h w -> b t c (h p) (w q)", p=f, q=f)
        if self.cfg.pool > 1:
            b = x.shape[0]
            x = F.interpolate(rearrange(x, "b t c h w -> (b t) c h w"), scale_factor=self.cfg.pool, mode="nearest")
            x = rearrange(x, "(b t) c h w -> b t c h w", b=b)
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return rearrange(x, "b t c h w -> b t h w c")
