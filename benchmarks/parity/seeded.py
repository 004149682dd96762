"""Seeded weights and inputs that the project and a run of the official code rebuild identically.

The official implementations that are not packages (Synchformer, syncnet_python, S3FD, RAFT) were run
once outside the project on weights made by `seeded_state_dict` from the same key names and shapes;
their outputs are the committed references in `references/`. The recipe uses numpy's PCG64 generator
(stable across numpy and torch versions) and visits keys in sorted order, so it depends only on the
names, shapes and dtypes of the state dict:
- integer tensors (e.g. `num_batches_tracked`): zeros;
- `running_var`: uniform in [0.5, 1.5);
- other 1-D `...weight` (norm scales): 1 + 0.1 N(0, 1); other 1-D tensors (biases, means): 0.1 N(0, 1);
- tensors of 2+ dims with a leading size of 1 (tokens, positional tables): 0.02 N(0, 1);
- other tensors of 2+ dims: N(0, 1) / sqrt(fan_in), fan_in = product of the trailing sizes;
- 0-dim floats: N(0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("running_var"):
        return rng.uniform(0.5, 1.5, size=shape)
    normal = rng.standard_normal(size=shape)
    if len(shape) == 0:
        return normal
    if len(shape) == 1:
        return 1.0 + 0.1 * normal if name.endswith("weight") else 0.1 * normal
    if shape[0] == 1:
        return 0.02 * normal
    return normal / math.sqrt(math.prod(shape[1:]))


def seeded_state_dict(template: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fresh tensors with `template`'s names, shapes and dtypes, drawn by the recipe above."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(template):
        ref = template[name]
        if not ref.is_floating_point():
            out[name] = torch.zeros_like(ref)
            continue
        out[name] = torch.from_numpy(_draw(rng, name, tuple(ref.shape))).to(ref.dtype)
    return out


def seeded_input(shape: tuple[int, ...], seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """A float32 tensor uniform in [low, high) from PCG64(seed)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(low, high, size=shape)).float()


def max_rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference| (relative to the reference's scale, so values near
    zero do not blow up the ratio)."""
    ours, reference = ours.double().flatten(), reference.double().flatten()
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
