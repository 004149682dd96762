"""PaSST (Koutini et al. 2022), the AudioSet tagger Verse-Bench's KL uses (`hear21passt`'s
`get_basic_model(mode="logits")`: architecture `passt_s_swa_p16_128_ap476`).

The module tree matches the official weights (`passt-s-f128-p16-s10-ap.476-swa.pt`, the network's state
dict; a `PasstBasicWrapper` state dict with `net.` keys is accepted too): `patch_embed.proj` (16 x 16
patches, stride 10 over a 128-bin log-mel), `cls_token`, `dist_token`, `new_pos_embed` (C / D tokens),
`freq_new_pos_embed` and `time_new_pos_embed` (separate frequency and time position tables, the time
table cut to the input length), `blocks.*` (pre-norm ViT blocks, LayerNorm eps 1e-6), `norm`, `head`
(LayerNorm + Linear on the mean of the C and D tokens; `head_dist` is loaded but, as in the official
forward, unused). Sizes are read from the weights (heads = width // 64, as PaSST-S).

The front end is `hear21passt`'s `AugmentMelSTFT` in eval mode, rebuilt here: pre-emphasis [-0.97, 1],
1024-point STFT of an 800-sample symmetric Hann window, hop 320 at 32 kHz, power, 128 Kaldi mel bins
from 0 to 15 kHz, log(x + 1e-5), then (x + 4.5) / 5.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.metrics.nets.layers import Mlp
from klear_lightning.safe_pickle import load_torch_file

SAMPLE_RATE = 32000
N_FFT = 1024
WIN = 800
HOP = 320
N_MELS = 128
F_MIN = 0.0
F_MAX = 15000.0  # hear21passt: sr // 2 - fmax_aug_range // 2 with fmax_aug_range 2000
CHECKPOINT_FORMATS = (
    "hear21passt / PaSST release weights (passt-s-f128-p16-s10-ap.476-swa.pt): the PaSST state dict",
    "PasstBasicWrapper state dict ('net.' prefixed; 'mel.' / 'device_proxy' ignored)",
    "{'state_dict' | 'model': ...} of either",
)


def kaldi_mel_banks(n_mels: int, n_fft: int, sr: float, fmin: float, fmax: float) -> Tensor:
    """Kaldi's triangular mel filters (`torchaudio.compliance.kaldi.get_mel_banks`, no VTLN warp),
    (n_mels, n_fft // 2 + 1) with a zero Nyquist column, as hear21passt pads them."""

    def mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log(1.0 + f / 700.0)

    bins = n_fft // 2
    low, high = mel(torch.tensor(fmin, dtype=torch.float64)), mel(torch.tensor(fmax, dtype=torch.float64))
    delta = (high - low) / (n_mels + 1)
    b = torch.arange(n_mels, dtype=torch.float64)[:, None]
    left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
    freqs = mel(sr / n_fft * torch.arange(bins, dtype=torch.float64))[None, :]
    up, down = (freqs - left) / (center - left), (right - freqs) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1)).float()


class PasstMel(nn.Module):
    """hear21passt's AugmentMelSTFT in eval mode: (B, N) wave at 32 kHz -> (B, 128, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN, periodic=False), persistent=False)
        self.register_buffer("preemphasis", torch.tensor([[[-0.97, 1.0]]]), persistent=False)
        self.register_buffer("mel_basis", kaldi_mel_banks(N_MELS, N_FFT, SAMPLE_RATE, F_MIN, F_MAX), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        x = F.conv1d(wave[:, None], self.preemphasis)[:, 0]
        spec = torch.stft(
            x,
            N_FFT,
            hop_length=HOP,
            win_length=WIN,
            window=self.window,
            center=True,
            normalized=False,
            return_complex=True,
        )
        power = spec.real**2 + spec.imag**2
        return (torch.log(self.mel_basis @ power + 1e-5) + 4.5) / 5.0


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
        return self.proj(rearrange(attn @ v, "b h n d -> b n (h d)"))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=16, stride=10)


class PaSST(nn.Module):
    """PaSST-S (distilled: C and D tokens), eval forward: (B, 128, frames) log-mel -> (B, classes) logits."""

    def __init__(
        self,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_hidden: int = 3072,
        f_grid: int = 12,
        t_grid: int = 99,
        classes: int = 527,
    ) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, f_grid, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, t_grid))
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))
        self.head_dist = nn.Linear(dim, classes)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.patch_embed.proj(mel[:, None])  # (B, E, F, T)
        if x.shape[-1] > self.time_new_pos_embed.shape[-1]:
            raise ValueError(
                f"PaSST: {x.shape[-1]} time patches exceed the position table's {self.time_new_pos_embed.shape[-1]} "
                "(windows are at most 10 s)"
            )
        x = x + self.time_new_pos_embed[..., : x.shape[-1]] + self.freq_new_pos_embed
        x = rearrange(x, "b e f t -> b (f t) e")
        tokens = torch.cat(
            [self.cls_token + self.new_pos_embed[:, :1], self.dist_token + self.new_pos_embed[:, 1:]], dim=1
        )
        x = torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head((x[:, 0] + x[:, 1]) / 2)


class PasstTagger(nn.Module):
    """Front end + network: (B, N) wave at 32 kHz -> (B, classes) logits."""

    def __init__(self, net: PaSST) -> None:
        super().__init__()
        self.mel = PasstMel()
        self.net = net

    def forward(self, wave: Tensor) -> Tensor:
        return self.net(self.mel(wave))


def load_passt(path: Path) -> PasstTagger:
    """Load official PaSST weights (`CHECKPOINT_FORMATS`) through the allow-list reader, strictly."""
    raw = load_torch_file(path)
    state = raw
    if isinstance(raw, dict):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), dict):
                state = raw[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a PaSST checkpoint (expected a state dict)")
    if any(k.startswith("net.") for k in state):
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        dim = state["cls_token"].shape[-1]
        net = PaSST(
            dim=dim,
            depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            heads=max(1, dim // 64),
            mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
            f_grid=state["freq_new_pos_embed"].shape[2],
            t_grid=state["time_new_pos_embed"].shape[3],
            classes=state["head.1.weight"].shape[0],
        )
        net.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: not a PaSST (passt_s_swa_p16_128_ap476) checkpoint: {first}") from None
    return PasstTagger(net).eval()
