"""Parity of the project's metric extractors with the official implementations, on identical weights.

One module per extractor (`benchmarks/parity/<name>.py`) exposes `check() -> ParityResult`:
- where the official implementation is a registry package that installs here, `check()` builds the
  official model with seeded random weights (`seeded.seeded_state_dict`), writes them in the official
  checkpoint layout, loads that file through the project's real loading path (`strict=True`), runs both
  on the same input and returns the largest relative difference of their outputs;
- where it is not (or cannot be installed here), the official code was run once outside the project on
  the same seeded weights and input recipe, and only its output numbers are committed, as
  `references/<name>.json`; `check()` rebuilds the weights, runs the project's code and compares with
  those numbers (`reference` then names the official code, its version and the recipe);
- where neither is possible, `check()` returns a result with `skipped` saying why and naming the package.

Tests call the same `check()` (`tests/unit/test_parity_audio.py`, `test_synchformer.py`, `test_video_metrics.py`); `python -m benchmarks metric_parity`
runs them all and writes `benchmarks/results/metric_parity.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

TOLERANCE = 1e-4
REFERENCES = Path(__file__).resolve().parent / "references"


@dataclass(frozen=True)
class ParityResult:
    """One extractor's parity check.

    extractor: the project's extractor (e.g. "panns_cnn14_16k").
    reference: what it was compared against (package and version, or committed reference numbers of
        named official code, with the seed and input recipe).
    max_rel_diff: max over compared outputs of max|ours - theirs| / max|theirs|; None when not run.
    checkpoint_format: the official file layouts the project's loader accepts for this extractor.
    skipped: why the comparison could not run here (names the missing package), else None.
    details: per-output relative differences and anything else worth recording.
    """

    extractor: str
    reference: str
    max_rel_diff: float | None
    checkpoint_format: tuple[str, ...]
    skipped: str | None = None
    details: dict[str, Any] | None = None
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.max_rel_diff is not None and self.max_rel_diff <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["checkpoint_format"] = list(self.checkpoint_format)
        out["passed"] = self.passed
        return out


def rel_diff(ours: Any, theirs: Any) -> float:
    """max|ours - theirs| / max|theirs| over all elements (float64); inf on a shape mismatch or when
    the reference output is all zeros (a degenerate comparison proves nothing)."""
    a = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    b = np.asarray(theirs.detach().cpu() if isinstance(theirs, torch.Tensor) else theirs, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.abs(b).max()) if b.size else 0.0
    if scale == 0.0 or not np.isfinite(a).all() or not np.isfinite(b).all():
        return float("inf")
    return float(np.abs(a - b).max() / scale)


def compare(pairs: Iterable[tuple[str, Any, Any]]) -> tuple[float, dict[str, float]]:
    """(max relative difference, per-output relative difference) over (name, ours, theirs) triples."""
    per = {name: rel_diff(ours, theirs) for name, ours, theirs in pairs}
    return (max(per.values()) if per else float("inf")), per


def load_reference(name: str) -> dict[str, Any]:
    """The committed reference numbers `references/<name>.json` (outputs of the official code)."""
    return json.loads((REFERENCES / f"{name}.json").read_text())


def skipped(extractor: str, reference: str, formats: tuple[str, ...], why: str) -> ParityResult:
    return ParityResult(
        extractor=extractor, reference=reference, max_rel_diff=None, checkpoint_format=formats, skipped=why
    )
