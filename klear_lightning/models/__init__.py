"""Denoisers: the single-tower MM-DiT (KLEAR) and the dual-tower baseline, built from a ModelConfig."""

from __future__ import annotations

import torch
from torch import nn

from klear_lightning.models.config import ModelConfig
from klear_lightning.models.mmdit import MMDiT

__all__ = ["ModelConfig", "build_model", "materialize", "MMDiT"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by `cfg.architecture`, initialised (on the current default device; on the
    meta device it holds no memory until `materialize`)."""
    if cfg.architecture == "single_tower":
        return MMDiT(cfg)
    if cfg.architecture == "dual_tower":
        from klear_lightning.models.dual_tower import DualTower

        return DualTower(cfg)
    raise ValueError(f"model.architecture = {cfg.architecture!r} is not one of ['single_tower', 'dual_tower']")


def materialize(model: nn.Module, device: torch.device | str) -> None:
    """Give a model built on the meta device (and possibly sharded since) real storage on `device`
    and the initial weights `build_model` gives on CPU from the same random state.

    Built directly, each `nn.Linear` constructor draws its default init from the global CPU
    generator before `reset_parameters` draws the model's own; those draws are repeated here (and
    discarded, one layer at a time) so the generator is in the same state when `reset_parameters`
    runs. `reset_parameters` then fills one whole parameter at a time on CPU and keeps only this
    rank's part of a sharded one, so no rank ever holds more than its shard plus one parameter.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="cpu", dtype=m.weight.dtype)
    model.to_empty(device=device)
    model.reset_parameters()
