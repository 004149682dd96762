"""Seeded random weights that do not depend on torch's RNG, the model's construction order or the
machine: every tensor is drawn from numpy's PCG64 seeded with (seed, crc32(key)), so the official code
(run outside the project) and the project's network get bit-identical values for the same key.

This file has no project imports, so a scratch run of the official code can import it as it is.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int, std: float = 0.02) -> Tensor:
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(key.encode())]))
    if key.endswith("running_var"):
        values = rng.uniform(0.5, 1.5, size=shape)
    elif len(shape) == 1 and key.endswith(".weight") and any(n in key for n in ("norm", "bn", "ln")):
        values = 1.0 + std * rng.standard_normal(size=shape)
    else:
        values = std * rng.standard_normal(size=shape)
    return torch.from_numpy(np.array(values, dtype=np.float32))


def seeded_state_dict(
    template: Mapping[str, Tensor],
    seed: int,
    std: float = 0.02,
    keep: Callable[[str], bool] = lambda key: False,
) -> dict[str, Tensor]:
    """A state dict with `template`'s keys, shapes and dtypes: floating tensors seeded per key (see the
    module doc), integer tensors (indices, counters) and keys where `keep(key)` is true (fixed front
    ends such as DFT kernels and mel filters) copied from `template`."""
    out: dict[str, Tensor] = {}
    for key in sorted(template):
        value = template[key]
        if keep(key) or not value.is_floating_point():
            out[key] = value.detach().clone()
        else:
            out[key] = seeded_tensor(key, tuple(value.shape), seed, std).to(value.dtype)
    return out


def seeded_fan_in_state_dict(template: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """`seeded_state_dict` for deep networks whose activations would vanish at std 0.02 (S3FD's VGG,
    SyncNet, Synchformer, RAFT): the same per-key generator, but weights of 2+ dims with a leading size
    above 1 (convolutions, linear layers) are N(0, 1) / sqrt(fan_in), fan_in = product of the trailing
    sizes; every other 1-D `...weight` (norm scales, whatever their module is called) 1 + 0.1 N(0, 1);
    `running_var` U(0.5, 1.5); other tensors (biases, tokens, positional tables) 0.1 N(0, 1) in 1-D and
    0.02 N(0, 1) otherwise; integer tensors copied."""
    out: dict[str, Tensor] = {}
    for key in sorted(template):
        value = template[key]
        if not value.is_floating_point():
            out[key] = value.detach().clone()
            continue
        shape = tuple(value.shape)
        rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(key.encode())]))
        normal = rng.standard_normal(size=shape) if not key.endswith("running_var") else None
        if normal is None:
            values = rng.uniform(0.5, 1.5, size=shape)
        elif len(shape) >= 2 and shape[0] > 1:
            values = normal / np.sqrt(np.prod(shape[1:]))
        elif len(shape) == 1:
            values = 1.0 + 0.1 * normal if key.endswith("weight") else 0.1 * normal
        else:
            values = 0.02 * normal
        out[key] = torch.from_numpy(values.astype(np.float32)).to(value.dtype)
    return out


def seeded_input(shape: tuple[int, ...], seed: int, low: float = 0.0, high: float = 1.0) -> Tensor:
    """A float32 input uniform in [low, high) from PCG64(seed)."""
    return torch.from_numpy(np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32))
