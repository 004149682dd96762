"""Logs generated media at validation: for a fixed set of validation clips (the first `clips`
as they arrive, at most `clips_per_split` of each `meta["split"]` when set) and each configured
task, `pl_module.generate` with a fixed seed, written as mp4 (with audio), wav and spectrogram png,
and logged to MLflow under `media/step_<global step>/<task>/` (also kept in `<run_dir>/media/`), with
`panel.png`: per clip, frames and spectrogram of the generated clip beside the ground truth's.
The same clips' ground truth (decoded from their latents) is logged once, under `media/reference/`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L

from klear_lightning.callbacks.benchmark import keep_clips
from klear_lightning.errors import ConfigError
from klear_lightning.logging import KlearMLFlowLogger
from klear_lightning.media import MediaClip, write_clip, write_panel
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import get_task


class MediaLogger(L.Callback):
    """Generate and log a few clips at the end of every validation (never in the sanity check),
    with the weights validation runs with (the EMA weights when the EMA callback validates with them).

    Args:
        tasks: tasks to generate (each is sampled for the same clips).
        clips: how many validation clips (the first ones, in loader order).
        clips_per_split: at most this many of them per `meta["split"]` (None: no bound), so a
            SyncWorld demo shows sound, speech and singing side by side.
        sampler: sampling settings (fixed seed, so samples differ only by the weights).
        every_n_val_epochs: log on every n-th validation run.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        clips: int = 2,
        clips_per_split: int | None = None,
        sampler: SamplerConfig | None = None,
        every_n_val_epochs: int = 1,
    ) -> None:
        self.tasks = list(tasks or ["t2av"])
        for task in self.tasks:
            get_task(task)
        if clips < 1 or every_n_val_epochs < 1 or (clips_per_split is not None and clips_per_split < 1):
            raise ConfigError("MediaLogger.clips: clips, clips_per_split and every_n_val_epochs must be >= 1")
        self.clips = clips
        self.clips_per_split = clips_per_split
        self.sampler = sampler or SamplerConfig(steps=10)
        self.every_n_val_epochs = every_n_val_epochs
        self._kept: list[AVBatch] = []
        self._runs = 0
        self._reference: list[MediaClip] | None = None

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx != 0 or not isinstance(batch, AVBatch):
            return
        if batch_idx == 0:
            self._kept = []
        keep_clips(self._kept, batch, self.clips, self.clips_per_split)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Epoch end, not `on_validation_end`: the EMA callback swaps its weights in at validation
        # start and out at validation end, so here they are in the model whatever the callback order.
        if trainer.sanity_checking or not self._kept:
            return
        self._runs += 1
        if (self._runs - 1) % self.every_n_val_epochs:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, KlearMLFlowLogger)), None)
        root = logger.run_dir / "media" if logger is not None else Path(tempfile.mkdtemp())
        step = trainer.global_step
        if self._reference is None and trainer.is_global_zero:  # the kept clips are the same every time
            self._reference = [c for b in self._kept for c in pl_module.reference_media(b)]
            self._write(self._reference, root, "reference", "reference", logger)
        for task in self.tasks:
            clips = [c for b in self._kept for c in pl_module.generate(b, task, self.sampler)]
            if trainer.is_global_zero:
                sub = f"step_{step:07d}/{task}"
                self._write(clips, root, sub, task, logger)
                panel = write_panel(clips, self._reference, root / sub / "panel.png", title=f"{task}, step {step}")
                if logger is not None:
                    logger.log_file(panel, f"media/{sub}")

    @staticmethod
    def _write(clips: list, root: Path, sub: str, stem: str, logger: KlearMLFlowLogger | None) -> None:
        for i, clip in enumerate(clips):
            for path in write_clip(clip, root / sub, f"{stem}_{i}"):
                if logger is not None:
                    logger.log_file(path, f"media/{sub}")
