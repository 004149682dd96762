"""PANNs Cnn14 (Kong et al. 2020), 16 kHz variant, as av-benchmark runs it for FD and KL.

The module tree matches the official checkpoint (`Cnn14_16k_mAP=0.438.pth`, a dict whose "model"
entry is the state dict; see `load_cnn14` for the file's other entries): `spectrogram_extractor.stft.conv_{real,imag}` (the windowed DFT as
conv1d kernels), `logmel_extractor.melW`, `bn0`, `conv_block1..6`, `fc1`, `fc_audioset`. The
front end is built here (Hann DFT, Slaney mel) and replaced by the checkpoint's tensors on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.safe_pickle import load_torch_file

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 160
N_MELS = 64
F_MIN = 50.0
F_MAX = 8000.0
EMBED_DIM = 2048
N_CLASSES = 527


def slaney_mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> Tensor:
    """Slaney-scale, Slaney-normalised triangular filters (librosa's default), shape (n_fft//2+1, n_mels)."""

    def hz_to_mel(f: Tensor) -> Tensor:
        lin = f / (200.0 / 3)
        log = 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(f >= 1000.0, log, lin)

    def mel_to_hz(m: Tensor) -> Tensor:
        lin = m * (200.0 / 3)
        log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return torch.where(m >= 15.0, log, lin)

    fft_freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(
        float(hz_to_mel(torch.tensor(fmin))), float(hz_to_mel(torch.tensor(fmax))), n_mels + 2, dtype=torch.float64
    )
    hz = mel_to_hz(mels)
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights = weights * (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.T.float().contiguous()


class _STFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        bins = N_FFT // 2 + 1
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / N_FFT
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        self.conv_real = nn.Conv1d(1, bins, N_FFT, stride=HOP, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, N_FFT, stride=HOP, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(angle) * window)[:, None, :].float())
            self.conv_imag.weight.copy_((-torch.sin(angle) * window)[:, None, :].float())


class _Spectrogram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft = _STFT()

    def forward(self, wave: Tensor) -> Tensor:
        x = F.pad(wave[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        power = self.stft.conv_real(x) ** 2 + self.stft.conv_imag(x) ** 2
        return rearrange(power, "b f t -> b 1 t f")


class _LogMel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.melW = nn.Parameter(slaney_mel_filters(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX))

    def forward(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, pool: int) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


@dataclass
class PannsOutput:
    embedding: Tensor  # (B, 2048) fc1 features
    logits: Tensor  # (B, 527) AudioSet logits (before the sigmoid)


class Cnn14(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram()
        self.logmel_extractor = _LogMel()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(EMBED_DIM, EMBED_DIM)
        self.fc_audioset = nn.Linear(EMBED_DIM, N_CLASSES)

    def forward(self, wave: Tensor) -> PannsOutput:
        """wave: (B, N) float at 16 kHz."""
        x = self.logmel_extractor(self.spectrogram_extractor(wave))
        x = rearrange(self.bn0(rearrange(x, "b 1 t m -> b m t 1")), "b m t 1 -> b 1 t m")
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return PannsOutput(embedding=embedding, logits=self.fc_audioset(embedding))


# The official training script (audioset_tagging_cnn) saves {"iteration", "model", "sampler"}, where
# "sampler" is the balanced sampler's state: lists of numpy index arrays. numpy arrays are not torch
# weights, so `weights_only` refuses those globals; they are read as inert records (nothing of numpy's
# runs, the sampler is never used) under both module paths numpy has pickled them with.
_NUMPY_RECORDS = tuple(
    f"{module}.{name}"
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) + ("numpy.ndarray", "numpy.dtype")
CHECKPOINT_FORMATS = (
    "audioset_tagging_cnn training checkpoint {'iteration', 'model', 'sampler' (numpy arrays, read as inert records)}, zip or legacy torch format",
    "{'model': state_dict}",
    "bare Cnn14 state dict",
)


def load_cnn14(path: Path, device: torch.device | str = "cpu") -> Cnn14:
    """Load an official checkpoint (`CHECKPOINT_FORMATS`) through the allow-list reader, strictly."""
    state = load_torch_file(path, opaque=_NUMPY_RECORDS)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a PANNs Cnn14 checkpoint (expected a state dict or a dict with 'model')")
    model = Cnn14()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a PANNs Cnn14 (16 kHz) checkpoint; missing keys {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
