"""Pretrained VAEs through diffusers, read from a local directory (never downloaded).

Audio: AutoencoderOobleck (Stable Audio Open's VAE). Video: AutoencoderKLCogVideoX or
AutoencoderKLWan. Point `path` at the folder holding the VAE's `config.json` and weights (for a full
pipeline checkout, its `vae/` subfolder). Latents are the posterior mean, unscaled; the DataModule
normalises them with statistics computed at prepare time. diffusers is an optional extra.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from klear_lightning.errors import ConfigError


def model_fingerprint(path: Path) -> str:
    """A short version string from the model's config and weight file sizes (identifies the weights)."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for name in sorted(p.name for p in path.iterdir()):
        if name.startswith(("model", "pytorch_model", "diffusion_pytorch_model")):
            h.update(f"{name}:{(path / name).stat().st_size}".encode())
    return h.hexdigest()[:10]


def _checked_dir(path: str | None, field: str) -> Path:
    if path is None:
        raise ConfigError(f"{field}: required for a pretrained codec (a local diffusers VAE directory)")
    p = Path(path)
    if not (p / "config.json").exists():
        raise ConfigError(f"{field}: {p}: no config.json there (point it at the VAE folder, e.g. <checkout>/vae)")
    return p


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("pretrained VAEs need diffusers: pip install 'klear-lightning[diffusers]'") from e
    return diffusers


class OobleckAudioCodec(nn.Module):
    """Stereo Oobleck VAE used on mono audio (the channel is duplicated in, averaged out)."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        p = _checked_dir(path, "audio_codec.path")
        self.vae = _diffusers().AutoencoderOobleck.from_pretrained(p, local_files_only=True).eval()
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.name, self.version = "oobleck", model_fingerprint(p)
        self.channels, self.sample_rate = int(cfg.decoder_input_channels), int(cfg.sampling_rate)
        self.hop = math.prod(cfg.downsampling_ratios)
        self.audio_channels = int(cfg.audio_channels)

    @torch.no_grad()
    def encode(self, wave: Tensor) -> Tensor:
        """(B, N) -> (B, C, N // hop)."""
        x = repeat(wave.float(), "b n -> b c n", c=self.audio_channels)
        return self.vae.encode(x).latent_dist.mode()[..., : wave.shape[1] // self.hop]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        out = self.vae.decode(latents.float()).sample
        return out.mean(dim=1)[..., : latents.shape[-1] * self.hop].clamp(-1.0, 1.0)


class DiffusersVideoCodec(nn.Module):
    """CogVideoX or Wan causal video VAE: T frames (T = 1 + k * temporal) -> 1 + k latent frames."""

    def __init__(self, kind: str, path: str | None) -> None:
        super().__init__()
        p = _checked_dir(path, "video_codec.path")
        d = _diffusers()
        if kind == "cogvideox":
            self.vae = d.AutoencoderKLCogVideoX.from_pretrained(p, local_files_only=True)
            cfg = self.vae.config
            self.channels = int(cfg.latent_channels)
            self.temporal_factor = int(cfg.temporal_compression_ratio)
            self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        elif kind == "wan":
            self.vae = d.AutoencoderKLWan.from_pretrained(p, local_files_only=True)
            cfg = self.vae.config
            self.channels = int(cfg.z_dim)
            self.temporal_factor = 2 ** sum(cfg.temperal_downsample)
            self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1)
        else:
            raise ConfigError(f"video_codec.name: must be 'pixel', 'cogvideox' or 'wan', got {kind!r}")
        self.vae.eval().requires_grad_(False)
        self.name, self.version, self.causal = kind, model_fingerprint(p), True

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3) -> (B, C, 1 + (T - 1) // temporal, H / spatial, W / spatial)."""
        t, h, w = frames.shape[1:4]
        if (t - 1) % self.temporal_factor or h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(
                f"video codec {self.name}: {t} frames of {h}x{w} do not tile "
                f"(need frames = 1 + k * {self.temporal_factor}, sizes divisible by {self.spatial_factor})"
            )
        x = rearrange(frames.float() / 127.5 - 1.0, "b t h w c -> b c t h w")
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        x = self.vae.decode(latents.float()).sample
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return rearrange(x, "b c t h w -> b t h w c")
