"""The optimizer and its learning-rate schedule: AdamW, linear warmup, then constant / cosine / linear."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then `schedule` down to `min_lr_ratio * lr` at `total_steps`.

    Args:
        lr: peak learning rate (reached at the end of the warmup).
        betas: AdamW's (beta1, beta2).
        weight_decay: AdamW's decoupled weight decay.
        eps: AdamW's epsilon.
        warmup_steps: optimizer steps of linear warmup from lr / warmup_steps to lr.
        schedule: after the warmup: `constant`, `cosine` or `linear` decay to min_lr_ratio * lr.
        min_lr_ratio: the learning rate at total_steps, as a fraction of lr.
        total_steps: the step at which the decay ends; None means the trainer's estimated number of
            optimizer steps (trainer.max_steps).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int | None = None


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` and its per-step schedule (`lr_factor`) ending at `total_steps`."""
    opt = torch.optim.AdamW(list(params), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        return lr_factor(step, cfg, total_steps)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
