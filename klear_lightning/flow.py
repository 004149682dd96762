"""Flow matching in the paper's convention, the masked per-modality loss and caption dropout.

Convention: t = 0 is noise x0 ~ N(0, I), t = 1 is data x1; x_t = (1 - t) x0 + t x1 and the
target velocity is x1 - x0. Per sample, each stream is generated (noised with the sample's t,
supervised), a condition (clean, t = 1, never supervised) or absent (content zeroed, t = 1 and
masked out of the attention). TI2V / TI2AV keep the first latent frame of the generated video
clean with t = 1 and exclude it from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from klear_lightning.errors import ConfigError
from klear_lightning.streams import AVBatch, ModelInputs, ModelOutputs
from klear_lightning.tasks import Role, TaskBatch

TIMESTEP_KINDS = ("uniform", "logit_normal")


def shift_time(t: Tensor, shift: float | Tensor) -> Tensor:
    """SD3's resolution shift written in our convention (t = 1 data).

    SD3 shifts its noise level s = 1 - t as s' = shift * s / (1 + (shift - 1) * s); in our
    convention that is t' = t / (shift - (shift - 1) * t). It keeps 0 -> 0 and 1 -> 1, is
    increasing, and shift > 1 moves every t towards noise (larger clips need more noise).
    """
    if isinstance(shift, float) and shift == 1.0:
        return t
    return t / (shift - (shift - 1.0) * t)


@dataclass(frozen=True)
class TimestepSampler:
    """Draws training times t in [0, 1], then applies `shift_time(t, shift)`.

    Args:
        kind: `uniform` (the paper) or `logit_normal` (t = sigmoid(N(mean, std))).
        mean: logit_normal: mean of the normal.
        std: logit_normal: standard deviation of the normal (> 0).
        shift: SD3's resolution shift, t' = t / (shift - (shift - 1) t); 1 = off, > 1 = noisier.
        split_shift: a shift of its own for the samples of a data split (a project addition), e.g.
            `{sound: 1.0}` with `shift: 3.0` keeps `sound` clips unshifted; other splits use `shift`.
    """

    kind: Literal["uniform", "logit_normal"] = "uniform"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0
    split_shift: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TIMESTEP_KINDS:
            raise ConfigError(f"model.timesteps.kind: must be one of {TIMESTEP_KINDS}, got {self.kind!r}")
        if not self.std > 0:
            raise ConfigError(f"model.timesteps.std: must be > 0, got {self.std}")
        if not self.shift > 0:
            raise ConfigError(f"model.timesteps.shift: must be > 0, got {self.shift}")
        for split, shift in self.split_shift.items():
            if not shift > 0:
                raise ConfigError(f"model.timesteps.split_shift.{split}: must be > 0, got {shift}")

    def sample(
        self, n: int, generator: torch.Generator | None = None, splits: list[str | None] | None = None
    ) -> Tensor:
        """(n,) float32 times on the generator's device (CPU without one); `splits` (n,) names each
        sample's data split for `split_shift`."""
        device = generator.device if generator is not None else torch.device("cpu")
        if self.kind == "uniform":
            t = torch.rand(n, generator=generator, device=device)
        else:
            t = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=device))
        if not self.split_shift or splits is None:
            return shift_time(t, self.shift)
        if len(splits) != n:
            raise ValueError(f"TimestepSampler.sample: {len(splits)} splits for {n} samples")
        shifts = [self.split_shift.get(s, self.shift) if s is not None else self.shift for s in splits]
        return shift_time(t, torch.tensor(shifts, dtype=t.dtype, device=device))


@dataclass
class FrameRoles:
    """Per latent frame, before padding: generated (noised, supervised) or condition (clean).

    Shapes (B, T_v) for video and (B, T_a) for audio, bool. A frame that is neither is absent.
    """

    video_generate: Tensor
    video_condition: Tensor
    audio_generate: Tensor
    audio_condition: Tensor

    @classmethod
    def of(cls, batch: AVBatch, tasks: TaskBatch) -> FrameRoles:
        if len(tasks.names) != batch.batch_size:
            raise ValueError(f"TaskBatch has {len(tasks.names)} tasks for a batch of {batch.batch_size} samples")
        for stream in ("video_text", "audio_text"):
            if tasks.is_(stream, Role.GENERATE).any():
                raise ValueError(f"task recipes cannot generate the text stream {stream!r}")
        device = batch.video.device
        n_v, n_a = batch.video.shape[2], batch.audio.shape[2]
        gen_v = tasks.is_("video", Role.GENERATE).to(device)
        first = (torch.arange(n_v, device=device) == 0)[None, :] & (tasks.first_frame_condition.to(device) & gen_v)[
            :, None
        ]
        gen_a = tasks.is_("audio", Role.GENERATE).to(device)
        return cls(
            video_generate=gen_v[:, None].expand(-1, n_v) & ~first,
            video_condition=tasks.is_("video", Role.CONDITION).to(device)[:, None].expand(-1, n_v) | first,
            audio_generate=gen_a[:, None].expand(-1, n_a),
            audio_condition=tasks.is_("audio", Role.CONDITION).to(device)[:, None].expand(-1, n_a),
        )

    def loss_masks(self, batch: AVBatch) -> tuple[Tensor, Tensor]:
        """Supervised frames: generated and not padding. (B, T_v), (B, T_a) bool."""
        return self.video_generate & batch.video_mask, self.audio_generate & batch.audio_mask


def compose_inputs(
    batch: AVBatch, tasks: TaskBatch, roles: FrameRoles, video: Tensor, audio: Tensor, t_video: Tensor, t_audio: Tensor
) -> ModelInputs:
    """Model inputs from a current state of the generated latents and one t per sample (B,).

    Generated frames take `video` / `audio` and the sample's t; condition frames take the clean
    latents from `batch` (bit-exact) and t = 1; absent frames are zeroed with t = 1 and masked.
    Text streams are passed through where they are conditions and masked out where absent.
    """
    v_in = torch.where(frame_broadcast(roles.video_generate, 5), video.to(batch.video.dtype), batch.video)
    v_in = torch.where(frame_broadcast(roles.video_condition | roles.video_generate, 5), v_in, torch.zeros_like(v_in))
    a_in = torch.where(frame_broadcast(roles.audio_generate, 3), audio.to(batch.audio.dtype), batch.audio)
    a_in = torch.where(frame_broadcast(roles.audio_condition | roles.audio_generate, 3), a_in, torch.zeros_like(a_in))
    ones_v = torch.ones_like(roles.video_generate, dtype=torch.float32)
    ones_a = torch.ones_like(roles.audio_generate, dtype=torch.float32)
    text: dict[str, Tensor] = {}
    for stream in ("video_text", "audio_text"):
        present = tasks.is_(stream, Role.CONDITION).to(batch.video.device)
        emb, mask = getattr(batch, stream), getattr(batch, f"{stream}_mask")
        text[stream] = torch.where(present[:, None, None], emb, torch.zeros_like(emb))
        text[f"{stream}_mask"] = mask & present[:, None]
    return ModelInputs(
        video=v_in,
        audio=a_in,
        video_t=torch.where(roles.video_generate, t_video.float()[:, None] * ones_v, ones_v),
        audio_t=torch.where(roles.audio_generate, t_audio.float()[:, None] * ones_a, ones_a),
        video_mask=(roles.video_generate | roles.video_condition) & batch.video_mask,
        audio_mask=(roles.audio_generate | roles.audio_condition) & batch.audio_mask,
        **text,
    )


def frame_broadcast(frame_mask: Tensor, ndim: int) -> Tensor:
    """(B, T) frame mask -> broadcastable against (B, C, T) or (B, C, T, H, W) latents."""
    if ndim == 5:
        return rearrange(frame_mask, "b t -> b 1 t 1 1")
    return rearrange(frame_mask, "b t -> b 1 t")


@dataclass
class FlowSample:
    """One training example set: model inputs, velocity targets, supervised-frame masks and times.

    video_loss_mask (B, T_v) / audio_loss_mask (B, T_a) are True on generated, non-padding,
    non-conditioned latent frames (broadcast over channels and space). t_video / t_audio (B,)
    are each sample's drawn times (equal unless `independent`; drawn for every sample, used only
    where the modality is generated).
    """

    inputs: ModelInputs
    targets: ModelOutputs
    video_loss_mask: Tensor
    audio_loss_mask: Tensor
    t_video: Tensor
    t_audio: Tensor


def whole_audio_tokens(batch: AVBatch, audio_patch: int) -> AVBatch:
    """`batch` with the audio frames of a partial token (some of its `audio_patch` frames padding)
    marked as padding too: the model sees an audio token only when all its frames are real, so such
    frames are never predicted, supervised or sampled."""
    n = batch.audio_mask.shape[1]
    if audio_patch == 1:
        return batch
    if n % audio_patch:
        raise ValueError(f"audio length {n} is not divisible by model.audio_patch = {audio_patch}")
    tokens = rearrange(batch.audio_mask, "b (n p) -> b n p", p=audio_patch).all(-1)
    return replace(batch, audio_mask=repeat(tokens, "b n -> b (n p)", p=audio_patch))


@dataclass(frozen=True)
class FlowMatching:
    """Rectified-flow objective: one t per sample shared by video and audio unless `independent`.
    `audio_patch` is the model's: frames of a partial audio token count as padding."""

    timesteps: TimestepSampler = TimestepSampler()
    independent: bool = False
    audio_patch: int = 1

    def make_inputs(
        self, batch: AVBatch, tasks: TaskBatch, generator: torch.Generator | None = None, t: Tensor | None = None
    ) -> FlowSample:
        """Noise the generated streams of `batch` as `tasks` says. Random draws use `generator`
        (its device; CPU without one) and are then moved to the batch's device. `t` (B,) fixes every
        sample's time for both modalities instead of drawing it (evaluation probes)."""
        device = batch.video.device
        batch = whole_audio_tokens(batch, self.audio_patch)
        roles = FrameRoles.of(batch, tasks)
        b = batch.batch_size
        if t is not None:
            if t.shape != (b,):
                raise ValueError(f"make_inputs: t must have shape ({b},), got {tuple(t.shape)}")
            t_video = t_audio = t.to(device=device, dtype=torch.float32)
        else:
            splits = [m.get("split") for m in batch.meta] if len(batch.meta) == b else None
            t_video = self.timesteps.sample(b, generator, splits).to(device)
            t_audio = self.timesteps.sample(b, generator, splits).to(device) if self.independent else t_video
        noise_v = _randn_like(batch.video, generator)
        noise_a = _randn_like(batch.audio, generator)
        x_v = (1 - t_video[:, None, None, None, None]) * noise_v + t_video[:, None, None, None, None] * batch.video
        x_a = (1 - t_audio[:, None, None]) * noise_a + t_audio[:, None, None] * batch.audio
        inputs = compose_inputs(batch, tasks, roles, x_v, x_a, t_video, t_audio)
        loss_v, loss_a = roles.loss_masks(batch)
        targets = ModelOutputs(video=batch.video - noise_v, audio=batch.audio - noise_a)
        return FlowSample(inputs, targets, loss_v, loss_a, t_video, t_audio)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


@dataclass
class LossTerms:
    """total = lambda_video * video + lambda_audio * audio (scalars, float32).

    video / audio are mean squared errors over all supervised latent values of the batch (0 when
    the batch supervises none). *_per_sample (B,) are each sample's own mean (0 where it has no
    supervised values) and *_count (B,) the number of supervised latent values per sample, so
    sum(per_sample * count) / sum(count) over any subset of samples (a task, a t-bucket) is that
    subset's loss.
    """

    total: Tensor
    video: Tensor
    audio: Tensor
    video_per_sample: Tensor
    audio_per_sample: Tensor
    video_count: Tensor
    audio_count: Tensor


def flow_loss(
    pred: ModelOutputs, sample: FlowSample, lambda_video: float = 1.0, lambda_audio: float = 1.0
) -> LossTerms:
    """Per-modality masked MSE of the predicted velocity over generated latent frames only."""
    v_sum, v_count = _masked_sq_error(pred.video, sample.targets.video, frame_broadcast(sample.video_loss_mask, 5))
    a_sum, a_count = _masked_sq_error(pred.audio, sample.targets.audio, frame_broadcast(sample.audio_loss_mask, 3))
    video = v_sum.sum() / v_count.sum().clamp(min=1)
    audio = a_sum.sum() / a_count.sum().clamp(min=1)
    return LossTerms(
        total=lambda_video * video + lambda_audio * audio,
        video=video,
        audio=audio,
        video_per_sample=v_sum / v_count.clamp(min=1),
        audio_per_sample=a_sum / a_count.clamp(min=1),
        video_count=v_count,
        audio_count=a_count,
    )


def _masked_sq_error(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample sum of squared errors over masked values, and the number of masked values."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    mask = mask.expand_as(target)
    err = torch.where(mask, (pred.float() - target.float()).square(), torch.zeros((), device=pred.device))
    return err.flatten(1).sum(1), mask.flatten(1).sum(1).float()


def null_captions(inputs: ModelInputs, model: nn.Module, drop: Tensor) -> ModelInputs:
    """Replace the captions of samples where `drop` (B,) is True by the model's learned null captions.

    A dropped caption becomes exactly one valid token, the null embedding (`model.null_video_text`
    or `model.null_audio_text`, shape (text_dim,)), at position 0; every other position is zeroed
    and masked. So the dropped stream is the same whatever the caption's length or content. A text
    stream with no valid token (absent for that sample) stays absent. Gradients reach the null
    embeddings.
    """
    out: dict[str, Tensor] = {}
    for stream in ("video_text", "audio_text"):
        emb, mask = getattr(inputs, stream), inputs.mask(stream)
        null: Tensor = getattr(model, f"null_{stream}")
        if null.shape != (emb.shape[-1],):
            raise ValueError(f"model.null_{stream} has shape {tuple(null.shape)}, expected ({emb.shape[-1]},)")
        hit = drop.to(mask.device) & mask.any(dim=1)
        first = torch.arange(emb.shape[1], device=emb.device) == 0
        null_tokens = torch.where(
            first[:, None], null.to(emb.dtype), torch.zeros((), dtype=emb.dtype, device=emb.device)
        )
        out[stream] = torch.where(hit[:, None, None], null_tokens[None], emb)
        out[f"{stream}_mask"] = torch.where(hit[:, None], first[None], mask)
    return replace(inputs, **out)


def drop_captions(
    inputs: ModelInputs, model: nn.Module, p_drop: float, generator: torch.Generator | None = None
) -> ModelInputs:
    """Classifier-free caption dropout: with probability p_drop per sample, both captions of the
    sample are replaced by the null captions (see `null_captions`), matching the unconditional
    pass of `sampling.sample`."""
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1], got {p_drop}")
    device = generator.device if generator is not None else torch.device("cpu")
    drop = torch.rand(inputs.batch_size, generator=generator, device=device) < p_drop
    return null_captions(inputs, model, drop)
