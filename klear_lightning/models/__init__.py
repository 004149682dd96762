"""Denoisers: the single-tower MM-DiT (KLEAR) and the dual-tower baseline, built from a ModelConfig."""

from __future__ import annotations

from torch import nn

from klear_lightning.models.config import ModelConfig
from klear_lightning.models.mmdit import MMDiT

__all__ = ["ModelConfig", "build_model", "MMDiT"]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by `cfg.architecture`, initialised (on the current default device)."""
    if cfg.architecture == "single_tower":
        return MMDiT(cfg)
    if cfg.architecture == "dual_tower":
        from klear_lightning.models.dual_tower import DualTower

        return DualTower(cfg)
    raise ValueError(f"model.architecture = {cfg.architecture!r} is not one of ['single_tower', 'dual_tower']")
