"""Fréchet distances between generated and reference audio features.

`fd_panns_avbench` (av-benchmark protocol): PANNs Cnn14 at 16 kHz, 2048-d fc1 features of every
generated and every reference clip; Gaussians with the sample mean and the unbiased covariance;
FD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)). States are running sums and sums of
outer products in float64, so they reduce exactly across ranks.

`fd_clap_versebench`: Verse-Bench's FD, in the one reading its published code admits. Verse-Bench
(`calculate_metrics.py` + `fd/clap_inferencer.py:infer_fd`) calls its Fréchet distance on ONE generated
and ONE reference clip of set2 at a time: each "distribution" is a single 512-d CLAP embedding, so
`np.cov` of one sample divides by N - 1 = 0 and returns NaN, and every per-clip FD, hence the mean, is
NaN: the code cannot run as written. A Gaussian fitted to one point is that point with zero
covariance, and the Fréchet distance between two such point masses is |mu_g - mu_r|^2. So we compute,
per generated / reference pair, the squared Euclidean distance between their L2-normalised CLAP audio
embeddings (LAION CLAP, Verse-Bench's audio preparation, see `metrics/clap.py`), averaged over pairs
(Verse-Bench averages its per-clip FDs). It lies in [0, 4] (Verse-Bench's normalisation bound is 3).
This is the only place that states this reading; the README points here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric

FeatureFn = Callable[[Sequence[MediaClip]], Tensor]


def _sqrt_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """FD between N(mu1, sigma1) and N(mu2, sigma2), float64.

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2.
    """
    mu1, mu2, sigma1, sigma2 = (x.double() for x in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0)
    diff = mu1 - mu2
    return diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * eig.sqrt().sum()


class FrechetDistance(ClipMetric):
    """Corpus Fréchet distance of generated vs reference features from `features(clips) -> (B, D)`."""

    needs_reference = True

    def __init__(
        self, features: FeatureFn, dim: int, column: Column, protocol: str, modalities: tuple[str, ...] = ("audio",)
    ) -> None:
        self.columns = (column,)
        self.protocol = protocol
        self.modalities = modalities
        super().__init__()
        self.features = features
        self.dim = dim
        for side in ("gen", "ref"):
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_ref", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, side: str, feats: Tensor) -> None:
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"{self.name}: features must be (B, {self.dim}), got {tuple(feats.shape)}")
        feats = feats.double().to(self.device)
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        assert reference is not None
        self._accumulate("gen", self.features(generated))
        self._accumulate("ref", self.features(reference))
        self.n += len(generated)
        self.n_ref += len(reference)

    def _gaussian(self, side: str, n: Tensor) -> tuple[Tensor, Tensor]:
        mu = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov

    def compute(self) -> Tensor:
        self.require(self.n >= 2, f"Fréchet distance needs at least 2 generated clips, got {int(self.n)}")
        self.require(self.n_ref >= 2, f"Fréchet distance needs at least 2 reference clips, got {int(self.n_ref)}")
        mu_g, cov_g = self._gaussian("gen", self.n.double())
        mu_r, cov_r = self._gaussian("ref", self.n_ref.double())
        return frechet_distance(mu_g, cov_g, mu_r, cov_r)


class PairwiseEmbeddingDistance(ClipMetric):
    """Mean over clips of |e_g - e_r|^2 between L2-normalised embeddings of each pair."""

    needs_reference = True

    def __init__(self, features: FeatureFn, column: Column, protocol: str) -> None:
        self.columns = (column,)
        self.protocol = protocol
        super().__init__()
        self.features = features
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        assert reference is not None
        g = torch.nn.functional.normalize(self.features(generated).double(), dim=-1)
        r = torch.nn.functional.normalize(self.features(reference).double(), dim=-1)
        self.total += ((g - r) ** 2).sum(-1).sum().to(self.device)
        self.n += len(generated)

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


@register_metric(
    "fd_panns_avbench", group="audio", description="Fréchet distance, PANNs Cnn14 16 kHz fc1 (av-benchmark)"
)
def build_fd_panns_avbench(ctx: BuildContext) -> ClipMetric:
    from klear_lightning.metrics.nets.cnn14 import EMBED_DIM
    from klear_lightning.metrics.panns import panns_extractor

    extractor = panns_extractor(ctx)
    return FrechetDistance(
        features=lambda clips: extractor(clips).embedding,
        dim=EMBED_DIM,
        column=Column("fd_panns_avbench", "FD", higher_is_better=False),
        protocol="av-benchmark: PANNs Cnn14 16 kHz, 2048-d fc1, corpus Fréchet vs reference (unbiased cov)",
    )


@register_metric(
    "fd_clap_versebench", group="audio", description="Verse-Bench FD: per-pair distance of CLAP audio embeddings"
)
def build_fd_clap_versebench(ctx: BuildContext) -> ClipMetric:
    from klear_lightning.metrics.clap import clap_extractor

    extractor = clap_extractor(ctx)
    return PairwiseEmbeddingDistance(
        features=extractor.audio_embeddings,
        column=Column("fd_clap_versebench", "FD", higher_is_better=False),
        protocol=(
            "Verse-Bench (our reading, metrics/fd.py): LAION CLAP audio embeddings with Verse-Bench's preparation, "
            "Fréchet distance of each generated / reference pair as point masses = squared L2 of unit vectors, mean"
        ),
    )
