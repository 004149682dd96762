import math

import pytest
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import Column, MetricUndefined
from klear_lightning.metrics.kl import PairedKL, kl_from_logits


def test_kl_matches_hand_computed_value():
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    # KL(p || q) = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln 1 = 0.25 ln 2
    kl = kl_from_logits(p.log() + 3.0, q.log() - 1.0)  # softmax is shift invariant
    assert float(kl[0]) == pytest.approx(0.25 * math.log(2), rel=1e-12)
    # the direction matters: KL(reference || generated) differs from KL(generated || reference)
    a, b = torch.tensor([[0.9, 0.1]], dtype=torch.float64), torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    backward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(kl_from_logits(a.log(), b.log())[0]) == pytest.approx(forward, rel=1e-12)
    assert float(kl_from_logits(b.log(), a.log())[0]) == pytest.approx(backward, rel=1e-12)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    logits = torch.randn(5, 527)
    assert torch.allclose(kl_from_logits(logits, logits), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert (kl_from_logits(logits, torch.randn(5, 527)) > 0).all()


def _clip(logits: list[float]) -> MediaClip:
    return MediaClip(video=None, fps=8.0, audio=torch.tensor(logits), sample_rate=16000)


def test_paired_kl_averages_per_clip_pairs_in_reference_to_generated_direction():
    metric = PairedKL(lambda clips: torch.stack([c.audio for c in clips]).double(), Column("kl_t", "KL", False), "test")
    half = math.log(0.5)
    metric.update([_clip([half, half])], [_clip([math.log(0.9), math.log(0.1)])])
    metric.update([_clip([half, half])], [_clip([half, half])])
    expected = (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5) + 0.0) / 2
    result = metric.results()["kl_t"]
    assert result.n == 2 and result.value == pytest.approx(expected, rel=1e-6)


def test_paired_kl_refuses_without_pairs():
    metric = PairedKL(lambda clips: torch.zeros(len(clips), 3), Column("kl_t", "KL", False), "test")
    with pytest.raises(MetricUndefined, match="no clip pairs"):
        metric.compute()
