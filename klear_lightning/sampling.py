"""ODE sampling of the flow from t = 0 (noise) to t = 1 (data) with classifier-free and modality guidance.

Every generated latent frame follows the same time grid t_k = shift_time(k / steps, shift);
condition frames carry t = 1 and are reset to the clean input before every model call and in
the result, so they stay bit-exactly equal to the input. With per-modality scales s_m and a
modality scale w, the guided velocity of modality m is

    v_m = v_uncond + s_m * (v_cond - v_uncond) + w * (v_cond - v_isolated)

where v_uncond has both captions replaced by the model's null captions and v_isolated is the
prediction without cross-modal attention (what `model(..., isolate_modalities=True)` computes).
The passes that are needed (unconditional when any s_m != 1, isolated when w != 0) run in one
forward, stacked along the batch. Because `isolate_modalities` is one flag per forward, the
isolated pass is written as data: each sample holding both a video-side (V, VT) and an
audio-side (AT, A) stream is added twice, once with the audio side masked out (its video
velocity is v_isolated for video) and once with the video side masked out (for audio); for a
sample with one side only, v_isolated = v_cond. Scales 1 and w = 0 give the plain conditional
velocity.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor, nn

from klear_lightning.errors import ConfigError
from klear_lightning.flow import (
    FrameRoles,
    compose_inputs,
    frame_broadcast,
    null_captions,
    shift_time,
    whole_audio_tokens,
)
from klear_lightning.streams import AVBatch, ModelInputs, ModelOutputs
from klear_lightning.tasks import TaskBatch

SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class SamplerConfig:
    """How generated latents are sampled from noise (validation, `klear generate`, `klear test`).

    Args:
        solver: `euler` (one model call per step) or `heun` (two).
        steps: ODE steps from t = 0 (noise) to t = 1 (data).
        video_guidance: classifier-free guidance scale of the video (1 = off).
        audio_guidance: classifier-free guidance scale of the audio (1 = off).
        modality_guidance: w in v += w (v_cond - v_isolated), v_isolated without cross-modal
            attention (0 = off).
        seed: the initial noise is drawn on the CPU from this seed (same seed, same samples).
        shift: resolution shift of the time grid (see `flow.shift_time`; 1 = off).
    """

    solver: Literal["euler", "heun"] = "euler"
    steps: int = 25
    video_guidance: float = 1.0
    audio_guidance: float = 1.0
    modality_guidance: float = 0.0
    seed: int = 0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"sampler.solver: must be one of {SOLVERS}, got {self.solver!r}")
        if self.steps < 1:
            raise ConfigError(f"sampler.steps: must be >= 1, got {self.steps}")
        for name in ("video_guidance", "audio_guidance", "modality_guidance"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ConfigError(f"sampler.{name}: must be finite and >= 0, got {value}")
        if not self.shift > 0:
            raise ConfigError(f"sampler.shift: must be > 0, got {self.shift}")

    @property
    def uses_uncond(self) -> bool:
        return self.video_guidance != 1.0 or self.audio_guidance != 1.0

    @property
    def uses_isolated(self) -> bool:
        return self.modality_guidance != 0.0

    def time_grid(self) -> list[float]:
        """steps + 1 increasing times from 0 to 1."""
        grid = shift_time(torch.linspace(0.0, 1.0, self.steps + 1, dtype=torch.float64), self.shift)
        return grid.tolist()


@torch.no_grad()
def sample(model: nn.Module, batch: AVBatch, tasks: TaskBatch, cfg: SamplerConfig) -> ModelOutputs:
    """Clean latents for `batch` under `tasks`: generated frames integrated from seeded noise,
    condition frames equal to the input, absent streams and padding frames zero.

    The model's train/eval mode is left as the caller set it.
    """
    batch = whole_audio_tokens(batch, model.config.audio_patch)
    roles = FrameRoles.of(batch, tasks)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    x_v = torch.randn(batch.video.shape, generator=generator, dtype=torch.float32).to(batch.video.device)
    x_a = torch.randn(batch.audio.shape, generator=generator, dtype=torch.float32).to(batch.audio.device)
    grid = cfg.time_grid()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        v_v, v_a = _velocity(model, batch, tasks, roles, x_v, x_a, t0, cfg)
        if cfg.solver == "euler":
            x_v, x_a = x_v + h * v_v, x_a + h * v_a
            continue
        e_v, e_a = _velocity(model, batch, tasks, roles, x_v + h * v_v, x_a + h * v_a, t1, cfg)
        x_v, x_a = x_v + 0.5 * h * (v_v + e_v), x_a + 0.5 * h * (v_a + e_a)
    return ModelOutputs(
        video=_finish(x_v, batch.video, roles.video_generate & batch.video_mask, roles.video_condition),
        audio=_finish(x_a, batch.audio, roles.audio_generate & batch.audio_mask, roles.audio_condition),
    )


def _finish(state: Tensor, clean: Tensor, generated: Tensor, condition: Tensor) -> Tensor:
    out = torch.where(frame_broadcast(generated, clean.ndim), state.to(clean.dtype), torch.zeros_like(clean))
    return torch.where(frame_broadcast(condition, clean.ndim), clean, out)


def _velocity(
    model: nn.Module,
    batch: AVBatch,
    tasks: TaskBatch,
    roles: FrameRoles,
    x_v: Tensor,
    x_a: Tensor,
    t: float,
    cfg: SamplerConfig,
) -> tuple[Tensor, Tensor]:
    """Guided velocity (float32) at time t, all needed passes stacked into one forward."""
    b = batch.batch_size
    t_b = torch.full((b,), t, dtype=torch.float32, device=batch.video.device)
    cond = compose_inputs(batch, tasks, roles, x_v, x_a, t_b, t_b)
    passes = [cond]
    if cfg.uses_uncond:
        passes.append(null_captions(cond, model, torch.ones(b, dtype=torch.bool)))
    both = _both_modalities(cond).nonzero().squeeze(1)
    isolating = cfg.uses_isolated and both.numel() > 0
    if isolating:
        both_inputs = _select(cond, both)
        passes.append(
            replace(
                both_inputs, audio_mask=_none(cond.audio_mask, both), audio_text_mask=_none(cond.audio_text_mask, both)
            )
        )
        passes.append(
            replace(
                both_inputs, video_mask=_none(cond.video_mask, both), video_text_mask=_none(cond.video_text_mask, both)
            )
        )
    out: ModelOutputs = model(_cat(passes))
    sizes = [p.batch_size for p in passes]
    video, audio = out.video.float().split(sizes), out.audio.float().split(sizes)
    v_v = _guide(video[0], video[1] if cfg.uses_uncond else None, cfg.video_guidance)
    v_a = _guide(audio[0], audio[1] if cfg.uses_uncond else None, cfg.audio_guidance)
    if isolating:
        v_v = v_v.index_add(0, both, video[0][both] - video[-2], alpha=cfg.modality_guidance)
        v_a = v_a.index_add(0, both, audio[0][both] - audio[-1], alpha=cfg.modality_guidance)
    return v_v, v_a


def _guide(v_cond: Tensor, v_uncond: Tensor | None, scale: float) -> Tensor:
    if v_uncond is None:
        return v_cond
    return v_uncond + scale * (v_cond - v_uncond)


def _both_modalities(inputs: ModelInputs) -> Tensor:
    """(B,) samples in which a video-side stream (V, VT) and an audio-side stream (AT, A) are present."""
    video_side = inputs.video_mask.any(1) | inputs.video_text_mask.any(1)
    audio_side = inputs.audio_mask.any(1) | inputs.audio_text_mask.any(1)
    return video_side & audio_side


def _none(mask: Tensor, index: Tensor) -> Tensor:
    return torch.zeros_like(mask[index])


def _select(inputs: ModelInputs, index: Tensor) -> ModelInputs:
    return ModelInputs(**{f.name: getattr(inputs, f.name)[index] for f in fields(ModelInputs)})


def _cat(parts: list[ModelInputs]) -> ModelInputs:
    if len(parts) == 1:
        return parts[0]
    return ModelInputs(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(ModelInputs)})
