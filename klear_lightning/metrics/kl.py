"""KL divergence of AudioSet class distributions, reference vs generated, per clip.

`kl_panns_avbench`: p = softmax(PANNs Cnn14 logits of the reference clip), q = softmax(logits of the
generated clip) over the 527 AudioSet classes; KL(p || q) = sum p (log p - log q) per pair,
averaged over pairs (av-benchmark's softmax variant).

`kl_passt_versebench` (Verse-Bench, `kl/kld_inferencer.py`): each wave at 32 kHz peak-normalised to
-1 dBFS, PaSST-S logits over 10 s windows with 5 s hop (short tail windows padded, see
`metrics.passt.versebench_windows`), mean logits, softmax; KL = sum p_ref (log p_ref - log(p_gen + 1e-6))
per pair (Verse-Bench's `F.kl_div` call), mean over pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric

LogitFn = Callable[[Sequence[MediaClip]], Tensor]


def kl_from_logits(reference_logits: Tensor, generated_logits: Tensor) -> Tensor:
    """Per-row KL(softmax(reference) || softmax(generated)), float64, shape (B,)."""
    log_p = torch.log_softmax(reference_logits.double(), dim=-1)
    log_q = torch.log_softmax(generated_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class PairedKL(ClipMetric):
    needs_reference = True

    def __init__(self, logits: LogitFn, column: Column, protocol: str) -> None:
        self.columns = (column,)
        self.protocol = protocol
        super().__init__()
        self.logits = logits
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        assert reference is not None
        kl = kl_from_logits(self.logits(reference), self.logits(generated))
        self.total += kl.sum().to(self.device)
        self.n += len(generated)

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clip pairs scored")
        return self.total / self.n


class VerseBenchKL(ClipMetric):
    needs_reference = True
    columns = (Column("kl_passt_versebench", "KL", higher_is_better=False),)
    protocol = (
        "Verse-Bench: PaSST-S (passt_s_swa_p16_128_ap476) at 32 kHz, peak -1 dBFS, 10 s windows hop 5 s, "
        "mean logits, softmax, sum p_ref (log p_ref - log(p_gen + 1e-6)) per pair, mean"
    )

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.inference_mode()
    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        from klear_lightning.metrics.audio_prep import clip_audio
        from klear_lightning.metrics.nets.passt import SAMPLE_RATE
        from klear_lightning.metrics.passt import versebench_kl, versebench_probabilities

        assert reference is not None
        for gen, ref in zip(generated, reference):
            p_gen = versebench_probabilities(self.model, clip_audio(gen, SAMPLE_RATE, self.name))
            p_ref = versebench_probabilities(self.model, clip_audio(ref, SAMPLE_RATE, self.name))
            self.total += versebench_kl(p_ref, p_gen).to(self.device)
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clip pairs scored")
        return self.total / self.n


@register_metric(
    "kl_passt_versebench",
    group="audio",
    description="Verse-Bench KL: PaSST AudioSet distributions, reference vs generated",
)
def build_kl_passt(ctx: BuildContext) -> ClipMetric:
    from klear_lightning.metrics.nets.passt import load_passt

    return VerseBenchKL(
        ctx.load(
            "passt",
            "the PaSST weights (passt-s-f128-p16-s10-ap.476-swa.pt)",
            lambda path: load_passt(path).to(ctx.device),
        )
    )


@register_metric(
    "kl_panns_avbench", group="audio", description="KL(reference || generated), softmax over PANNs AudioSet logits"
)
def build_kl_panns(ctx: BuildContext) -> ClipMetric:
    from klear_lightning.metrics.panns import panns_extractor

    extractor = panns_extractor(ctx)
    return PairedKL(
        logits=lambda clips: extractor(clips).logits,
        column=Column("kl_panns_avbench", "KL", higher_is_better=False),
        protocol="av-benchmark: PANNs Cnn14 16 kHz, softmax over 527 AudioSet logits, KL(ref || gen) per clip, mean",
    )
