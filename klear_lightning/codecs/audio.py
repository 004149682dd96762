"""Weight-free audio codec: log-mel spectrogram latents, with a Griffin-Lim inverse for listening.

Latents are log(max(mel magnitude, 1e-5)), shape (B, n_mels, N // hop): one frame per hop
samples (default 16 kHz, hop 320 -> 50 Hz, 64 mels, n_fft 1024). Decoding first finds a linear
magnitude spectrogram whose mel projection matches the latents (`mel_inverse`: "nnls", the
non-negative least-squares solution by projected gradient, default; or "pinv", the pseudo-inverse
clipped at zero, which leaves each mel band's energy smeared and partly negative), then a phase
for it by fast Griffin-Lim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.errors import ConfigError

LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class AudioCodecConfig:
    """The audio codec (waveform <-> latents).

    Args:
        name: `logmel` (weight-free log-mel with a Griffin-Lim inverse) or `oobleck` (diffusers'
            AutoencoderOobleck read from `path`).
        sample_rate: logmel: input sample rate in Hz (must equal data.clip.sample_rate).
        hop: logmel: samples per latent frame (16 kHz / 320 = 50 latent frames per second).
        n_mels: logmel: mel bands, the latent channels.
        n_fft: logmel: STFT size (>= hop).
        griffin_lim_iters: logmel: Griffin-Lim iterations when decoding.
        mel_inverse: logmel decoder: `nnls` (non-negative least squares) or `pinv` mel inverse; the
            latents (and their cache) do not depend on it.
        nnls_iters: logmel decoder: iterations of the NNLS mel inverse.
        path: oobleck: a local diffusers VAE folder (e.g. stable-audio-open-1.0/vae).
    """

    name: str = "logmel"
    sample_rate: int = 16000
    hop: int = 320
    n_mels: int = 64
    n_fft: int = 1024
    griffin_lim_iters: int = 32
    mel_inverse: str = "nnls"
    nnls_iters: int = 100
    path: str | None = None


def _hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """Triangular HTK-scale filters with area (Slaney) normalisation, shape (n_mels, n_fft // 2 + 1)."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(0.0, float(_hz_to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64)
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    return (fb * (2.0 / (hi - lo))).float()


class LogMelCodec(nn.Module):
    def __init__(self, cfg: AudioCodecConfig) -> None:
        super().__init__()
        if cfg.n_fft < cfg.hop:
            raise ConfigError(f"audio_codec.n_fft: {cfg.n_fft} must be >= audio_codec.hop = {cfg.hop}")
        if cfg.n_mels > cfg.n_fft // 2 + 1:
            raise ConfigError(f"audio_codec.n_mels: {cfg.n_mels} exceeds n_fft // 2 + 1 = {cfg.n_fft // 2 + 1}")
        if cfg.mel_inverse not in ("nnls", "pinv"):
            raise ConfigError(f"audio_codec.mel_inverse: must be 'nnls' or 'pinv', got {cfg.mel_inverse!r}")
        self.cfg = cfg
        self.name = "logmel"
        self.version = f"v1-sr{cfg.sample_rate}-h{cfg.hop}-m{cfg.n_mels}-f{cfg.n_fft}"
        self.channels, self.sample_rate, self.hop = cfg.n_mels, cfg.sample_rate, cfg.hop
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("fb_pinv", torch.linalg.pinv(fb), persistent=False)
        self.nnls_step = 1.0 / float(torch.linalg.matrix_norm(fb.double(), 2) ** 2)  # 1 / Lipschitz constant
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def _stft(self, wave: Tensor) -> Tensor:
        return torch.stft(wave, self.cfg.n_fft, self.hop, window=self.window, center=True, return_complex=True)

    def _istft(self, spec: Tensor, length: int) -> Tensor:
        return torch.istft(spec, self.cfg.n_fft, self.hop, window=self.window, center=True, length=length)

    @torch.no_grad()
    def encode(self, wave: Tensor) -> Tensor:
        """(B, N) float audio at `sample_rate` -> (B, n_mels, N // hop)."""
        if wave.ndim != 2:
            raise ValueError(f"audio codec: expected (B, N) audio, got {tuple(wave.shape)}")
        frames = wave.shape[1] // self.hop
        mag = self._stft(wave.float()).abs()[..., :frames]
        return torch.log(torch.clamp(torch.einsum("mf,bft->bmt", self.fb, mag), min=LOG_FLOOR))

    def magnitude(self, mel: Tensor) -> Tensor:
        """(B, n_mels, T) mel magnitudes -> (B, n_fft // 2 + 1, T) linear magnitudes >= 0 whose mel
        projection matches them: the clipped pseudo-inverse, refined for "nnls" by projected
        gradient descent on ||fb x - mel||^2 subject to x >= 0."""
        x = torch.clamp(torch.einsum("fm,bmt->bft", self.fb_pinv, mel), min=0.0)
        if self.cfg.mel_inverse == "nnls":
            for _ in range(self.cfg.nnls_iters):
                residual = torch.einsum("mf,bft->bmt", self.fb, x) - mel
                x = torch.clamp(x - self.nnls_step * torch.einsum("mf,bmt->bft", self.fb, residual), min=0.0)
        return x

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, T * hop) audio: linear magnitudes (`magnitude`), then fast Griffin-Lim
        (momentum 0.99)."""
        lat = latents.float()
        mag = self.magnitude(torch.exp(lat))
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        length = lat.shape[-1] * self.hop
        gen = torch.Generator(device="cpu").manual_seed(0)
        # one fixed initial phase shared by every item, so a clip decodes the same in any batch
        phase = torch.exp(2j * math.pi * torch.rand(mag.shape[1:], generator=gen)).to(mag.device).expand_as(mag)
        angles, previous = phase, torch.zeros_like(phase)
        for _ in range(self.cfg.griffin_lim_iters):
            rebuilt = self._stft(self._istft(mag * angles, length))
            accelerated = rebuilt - 0.99 * previous
            angles = accelerated / accelerated.abs().clamp(min=1e-8)
            previous = rebuilt
        wave = self._istft(mag * angles, length)
        return torch.clamp(wave, -1.0, 1.0)


def spectral_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute log-mel difference per batch item (for comparing audio, e.g. round trips)."""
    return rearrange((a - b).abs(), "b c t -> b (c t)").mean(-1)
