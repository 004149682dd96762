"""Per-channel latent statistics, computed at prepare time and stored beside the shards.

File: `<root>/stats/<codec>-<version>.json` with `{"codec", "version", "count", "mean", "std"}`
(one value per latent channel; channel is dim 0 of an unbatched latent). Normalised latents are
(x - mean) / std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass
class LatentStats:
    codec: str
    version: str
    count: int
    mean: list[float]
    std: list[float]

    @cached_property
    def _tensors(self) -> tuple[Tensor, Tensor]:
        return torch.tensor(self.mean, dtype=torch.float64), torch.tensor(self.std, dtype=torch.float64)

    def normalize(self, latent: Tensor) -> Tensor:
        """Unbatched latent (C, ...) -> normalised."""
        if latent.shape[0] != len(self.mean):
            raise ValueError(
                f"stats {self.codec}-{self.version}: {len(self.mean)} channels, latent has {latent.shape[0]}"
            )
        shape = (-1,) + (1,) * (latent.ndim - 1)
        mean, std = (t.to(latent.dtype).view(shape) for t in self._tensors)
        return (latent - mean) / std

    def denormalize(self, latent: Tensor) -> Tensor:
        """Batched latent (B, C, ...) -> codec scale, for decoding generated latents."""
        shape = (1, -1) + (1,) * (latent.ndim - 2)
        mean = torch.tensor(self.mean, dtype=latent.dtype, device=latent.device).view(shape)
        std = torch.tensor(self.std, dtype=latent.dtype, device=latent.device).view(shape)
        return latent * std + mean

    def save(self, root: Path) -> Path:
        path = stats_path(root, self.codec, self.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, indent=1))
        tmp.replace(path)
        return path


def stats_path(root: Path, codec: str, version: str) -> Path:
    return Path(root) / "stats" / f"{codec}-{version}.json"


def load_stats(root: Path, codec: str, version: str) -> LatentStats | None:
    path = stats_path(root, codec, version)
    if not path.exists():
        return None
    return LatentStats(**json.loads(path.read_text()))


class StatsAccumulator:
    """Streaming per-channel mean / std in float64 (sums of x and x**2 over all positions)."""

    def __init__(self, codec: str, version: str) -> None:
        self.codec, self.version = codec, version
        self.n, self.s1, self.s2 = 0, None, None

    def update(self, latent: np.ndarray | Tensor) -> None:
        x = np.asarray(latent, dtype=np.float64).reshape(latent.shape[0], -1)
        if self.s1 is None:
            self.s1, self.s2 = np.zeros(x.shape[0]), np.zeros(x.shape[0])
        self.n += x.shape[1]
        self.s1 += x.sum(1)
        self.s2 += (x * x).sum(1)

    def merge(self, other: StatsAccumulator) -> None:
        if other.s1 is None:
            return
        if self.s1 is None:
            self.s1, self.s2 = np.zeros_like(other.s1), np.zeros_like(other.s2)
        self.n += other.n
        self.s1 += other.s1
        self.s2 += other.s2

    def result(self, floor: float = 1e-4) -> LatentStats:
        if self.s1 is None or self.n == 0:
            raise ValueError(f"stats {self.codec}-{self.version}: no latents were seen")
        mean = self.s1 / self.n
        std = np.sqrt(np.maximum(self.s2 / self.n - mean * mean, 0.0))
        return LatentStats(self.codec, self.version, self.n, mean.tolist(), np.maximum(std, floor).tolist())
