"""Verse-Bench's KL protocol over PaSST (`metrics.nets.passt`): 10 s windows with a 5 s hop of a
peak-normalised wave, softmax of the mean logits, and the KL divergence between two such distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from klear_lightning.metrics.nets.passt import SAMPLE_RATE, PasstTagger


def versebench_windows(wave: Tensor, window_s: float = 10.0, hop_s: float = 5.0) -> list[Tensor]:
    """Verse-Bench's KL windows (`kl/kld_inferencer.py:return_probabilities`, after audiocraft): starts
    0, hop, ... below max(hop, N - hop); a window shorter than 10 s is zero-padded to 10 s when it holds
    more than 15 % of one, else kept as it is."""
    size, step = int(window_s * SAMPLE_RATE), int((window_s - hop_s) * SAMPLE_RATE)
    out = []
    for start in range(0, max(step, wave.shape[0] - step), step):
        window = wave[start : start + size]
        if window.shape[0] < size and window.shape[0] > int(size * 0.15):
            window = F.pad(window, (0, size - window.shape[0]))
        out.append(window)
    return out


def versebench_probabilities(model: PasstTagger, wave: Tensor) -> Tensor:
    """Softmax of the mean PaSST logits over Verse-Bench's windows of a peak-normalised (-1 dBFS) wave."""
    peak = float(wave.abs().max())
    wave = wave * (10.0 ** (-1.0 / 20.0) / peak) if peak > 0 else wave
    device = next(model.parameters()).device
    logits = torch.stack([model(w[None].to(device))[0] for w in versebench_windows(wave)])
    return torch.softmax(logits.mean(0).double(), dim=0).cpu()


def versebench_kl(reference: Tensor, generated: Tensor) -> Tensor:
    """Verse-Bench's `F.kl_div((p_gen + 1e-6).log(), p_ref, reduction="sum")` = sum p_ref (log p_ref - log(p_gen + 1e-6))."""
    return (torch.xlogy(reference, reference) - reference * torch.log(generated + 1e-6)).sum(-1)
