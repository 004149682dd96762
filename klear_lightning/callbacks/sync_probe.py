"""Synchronisation probe: does the model's prediction of one modality use the *timing* of the other?

At every validation, on every validation batch, the T2AV flow loss is measured with the same noise and
the same fixed times t three times: on the clip as it is, with its audio circularly shifted in time
by `shift_fraction` of its length, and with its video shifted the same way (same content, out of
sync). A model that ignores when things happen in the other stream predicts each stream equally well
either way; one that has learned synchronisation predicts the video better from the aligned audio and
the audio better from the aligned video. Logged, with the number of samples beside each:

    val/sync_probe/video = 1 - L_video(aligned) / L_video(audio shifted)
    val/sync_probe/audio = 1 - L_audio(aligned) / L_audio(video shifted)
    val/sync_probe/video/<split>, val/sync_probe/audio/<split>   (each validation split, e.g. SyncWorld's)

0 means no use of the other stream's timing; the gain is the fraction of the loss that aligned timing
removes. Only the *other* stream is shifted for each gain, so a stream's own target never changes
and the splice a circular shift makes can only matter through cross-modal attention. Unlike the
sampled-media metrics it needs no sampling, no decoding and no extractor, and it moves as soon as
the cross-modal attention starts to carry timing, long before generated clips can be scored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch import Tensor

from klear_lightning.errors import ConfigError
from klear_lightning.flow import flow_loss
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import TaskBatch


def shift_in_time(x: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Circularly shift each sample's valid frames along dim 2 of x (B, C, T, ...) by
    round(fraction * its valid length); padding (mask (B, T) False, at the end) stays in place."""
    b, t = mask.shape
    lengths = mask.sum(dim=1).clamp(min=1)
    shift = torch.round(lengths.float() * fraction).long()
    frames = torch.arange(t, device=x.device).expand(b, t)
    source = torch.where(frames < lengths[:, None], (frames + shift[:, None]) % lengths[:, None], frames)
    index = source.reshape(b, 1, t, *([1] * (x.ndim - 3))).expand_as(x)
    return torch.gather(x, 2, index)


class SyncProbe(L.Callback):
    """Log the T2AV loss reduction that the other stream's aligned (vs time-shifted) timing brings.

    Args:
        times: flow times t at which the loss is measured (both modalities share t); averaged.
        shift_fraction: the shifted stream moves by this fraction of each clip's length (0.5: as
            far out of sync as a circular shift can put it).
        seed: seed of the noise (the same noise for the aligned and the shifted passes).
    """

    def __init__(
        self, times: tuple[float, ...] = (0.25, 0.5, 0.75), shift_fraction: float = 0.5, seed: int = 0
    ) -> None:
        if not times or not all(0.0 < t < 1.0 for t in times):
            raise ConfigError(f"SyncProbe.times: must be non-empty and inside (0, 1), got {times}")
        if not 0.0 < shift_fraction < 1.0:
            raise ConfigError(f"SyncProbe.shift_fraction: must be inside (0, 1), got {shift_fraction}")
        self.times = tuple(times)
        self.shift_fraction = shift_fraction
        self.seed = seed
        self._sums: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "flow", None) is None or not hasattr(pl_module, "model"):
            raise TypeError(f"SyncProbe needs {type(pl_module).__name__}.flow and .model (KlearModule has them)")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        self._splits = sorted(set(getattr(dm, "val_splits", None) or []))
        # per group (all clips, then each validation split): squared-error sums and value counts of
        # video aligned, video with audio shifted, audio aligned, audio with video shifted
        self._sums = torch.zeros(1 + len(self._splits), 4, 2, dtype=torch.float64, device=pl_module.device)
        self._samples = torch.zeros(1 + len(self._splits), dtype=torch.float64, device=pl_module.device)

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(batch, AVBatch) or self._sums is None:
            return
        tasks = TaskBatch.from_names(["t2av"] * batch.batch_size, device=pl_module.device)
        audio_shifted = replace(batch, audio=shift_in_time(batch.audio, batch.audio_mask, self.shift_fraction))
        video_shifted = replace(batch, video=shift_in_time(batch.video, batch.video_mask, self.shift_fraction))
        groups = torch.zeros(batch.batch_size, 1 + len(self._splits), dtype=torch.float64, device=pl_module.device)
        groups[:, 0] = 1.0
        for i, meta in enumerate(batch.meta):
            if meta.get("split") in self._splits:
                groups[i, 1 + self._splits.index(meta["split"])] = 1.0
        for k, t in enumerate(self.times):
            time = torch.full((batch.batch_size,), t, device=pl_module.device)
            terms = []
            for clip in (batch, audio_shifted, video_shifted):
                generator = torch.Generator(device=pl_module.device).manual_seed(
                    self.seed * 1_000_003 + batch_idx * 97 + k
                )
                fs = pl_module.flow.make_inputs(clip, tasks, generator, t=time)
                terms.append(flow_loss(pl_module.model(fs.inputs), fs))
            aligned, audio_moved, video_moved = terms
            for row, (per_sample, count) in enumerate(
                (
                    (aligned.video_per_sample, aligned.video_count),
                    (audio_moved.video_per_sample, audio_moved.video_count),
                    (aligned.audio_per_sample, aligned.audio_count),
                    (video_moved.audio_per_sample, video_moved.audio_count),
                )
            ):
                self._sums[:, row, 0] += groups.T @ (per_sample * count).double()
                self._sums[:, row, 1] += groups.T @ count.double()
        self._samples += groups.sum(dim=0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._sums is None:
            return
        sums = trainer.strategy.reduce(self._sums, reduce_op="sum")
        samples = trainer.strategy.reduce(self._samples, reduce_op="sum")
        mean = sums[..., 0] / sums[..., 1].clamp(min=1)
        for g, group in enumerate([""] + [f"/{split}" for split in self._splits]):
            for name, aligned, shifted in (("video", mean[g, 0], mean[g, 1]), ("audio", mean[g, 2], mean[g, 3])):
                if samples[g] > 0 and shifted > 0:
                    key = f"val/sync_probe/{name}{group}"
                    pl_module.log(key, float(1.0 - aligned / shifted), on_epoch=True, sync_dist=False)
                    pl_module.log(f"{key}_n", float(samples[g]), on_epoch=True, sync_dist=False)
        self._sums = None
