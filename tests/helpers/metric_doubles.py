"""Small, hand-checkable metrics registered for the framework, report and callback tests."""

from __future__ import annotations

import torch

from klear_lightning.metrics.base import ClipMetric, Column


class MeanPeak(ClipMetric):
    """Mean over clips of max |audio|."""

    columns = (Column("peak_test", "Peak", higher_is_better=True),)
    protocol = "test: mean max |audio|"
    modalities = ("audio",)

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated, reference):
        for c in generated:
            self.total += c.audio.abs().max().double()
        self.n += len(generated)

    def compute(self):
        self.require(self.n >= 1, "no clips")
        return self.total / self.n


class MeanAbsGap(ClipMetric):
    """Mean over clip pairs of mean |generated audio - reference audio| (needs the reference)."""

    columns = (Column("gap_test", "Gap", higher_is_better=False),)
    protocol = "test: mean |gen - ref|"
    modalities = ("audio",)
    needs_reference = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated, reference):
        for g, r in zip(generated, reference):
            self.total += (g.audio - r.audio).abs().mean().double()
        self.n += len(generated)

    def compute(self):
        self.require(self.n >= 1, "no clips")
        return self.total / self.n


class AVPair(ClipMetric):
    columns = (Column("av_a_test", "A", False), Column("av_b_test", "B", True))
    protocol = "test: two values"
    modalities = ("video", "audio")
    needs_reference = True

    def _update(self, generated, reference):
        self.n += len(generated)

    def compute(self):
        return {"av_a_test": torch.tensor(1.0), "av_b_test": torch.tensor(2.0)}


def needs_weights(ctx):
    ctx.checkpoint("fake_net", "a fake checkpoint")
    raise AssertionError("unreachable without a checkpoint")
