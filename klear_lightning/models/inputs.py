"""Random `ModelInputs` that honour per-sample task roles: for tests, benchmarks and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from klear_lightning.models.config import ModelConfig
from klear_lightning.streams import ModelInputs
from klear_lightning.tasks import Role, TaskBatch


@dataclass(frozen=True)
class InputShape:
    """Latent / token extents of one batch (before padding)."""

    video_frames: int = 3
    video_hw: tuple[int, int] = (4, 4)
    audio_frames: int = 12
    text_tokens: int = 6


def random_inputs(
    cfg: ModelConfig,
    tasks: TaskBatch,
    shape: InputShape,
    generator: torch.Generator,
    pad: bool = True,
) -> ModelInputs:
    """Gaussian latents and text; absent streams fully masked; with `pad`, random trailing padding.

    Generated streams get one t ~ U(0, 1) per sample, conditions t = 1, and a conditioned first
    frame (TI2V / TI2AV) t = 1 inside the generated video.
    """
    b = len(tasks.names)
    h, w = shape.video_hw
    g = generator

    def lengths(n: int, unit: int) -> Tensor:
        if not pad:
            return torch.full((b,), n)
        return n - unit * torch.randint(0, max(n // unit // 2, 0) + 1, (b,), generator=g)

    def mask(stream: str, n: int, unit: int = 1) -> Tensor:
        present = tasks.roles[stream] != int(Role.ABSENT)
        return (torch.arange(n)[None, :] < lengths(n, unit)[:, None]) & present[:, None]

    def times(stream: str, n: int) -> Tensor:
        t = torch.rand(b, 1, generator=g).expand(b, n).clone()
        t[tasks.roles[stream] != int(Role.GENERATE)] = 1.0
        return t

    video_t = times("video", shape.video_frames)
    video_t[tasks.first_frame_condition, 0] = 1.0
    return ModelInputs(
        video=torch.randn(b, cfg.video_channels, shape.video_frames, h, w, generator=g),
        audio=torch.randn(b, cfg.audio_channels, shape.audio_frames, generator=g),
        video_text=torch.randn(b, shape.text_tokens, cfg.text_dim, generator=g),
        audio_text=torch.randn(b, shape.text_tokens, cfg.text_dim, generator=g),
        video_t=video_t,
        audio_t=times("audio", shape.audio_frames),
        video_mask=mask("video", shape.video_frames),
        audio_mask=mask("audio", shape.audio_frames, cfg.audio_patch),
        video_text_mask=mask("video_text", shape.text_tokens),
        audio_text_mask=mask("audio_text", shape.text_tokens),
    )
