"""Logs generated media at validation: for a fixed set of validation clips and each configured
task, `pl_module.generate` with a fixed seed, written as mp4 (with audio), wav and spectrogram png,
and logged to MLflow under `media/step_<global step>/<task>/` (also kept in `<run_dir>/media/`).
The same clips' ground truth (decoded from their latents) is logged once, under `media/reference/`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L

from klear_lightning.callbacks.benchmark import head
from klear_lightning.generate import write_clip
from klear_lightning.logging import KlearMLFlowLogger
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import get_task


class MediaLogger(L.Callback):
    """Generate and log a few clips at the end of every validation (never in the sanity check).

    Args:
        tasks: tasks to generate (each is sampled for the same clips).
        clips: how many clips of the first validation batch.
        sampler: sampling settings (fixed seed, so samples differ only by the weights).
        every_n_val_epochs: log on every n-th validation run.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        clips: int = 2,
        sampler: SamplerConfig | None = None,
        every_n_val_epochs: int = 1,
    ) -> None:
        self.tasks = list(tasks or ["t2av"])
        for task in self.tasks:
            get_task(task)
        if clips < 1 or every_n_val_epochs < 1:
            raise ValueError("MediaLogger: clips and every_n_val_epochs must be >= 1")
        self.clips = clips
        self.sampler = sampler or SamplerConfig(steps=10)
        self.every_n_val_epochs = every_n_val_epochs
        self._batch: AVBatch | None = None
        self._runs = 0

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, AVBatch):
            self._batch = head(batch, self.clips)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        self._runs += 1
        if (self._runs - 1) % self.every_n_val_epochs:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, KlearMLFlowLogger)), None)
        root = logger.run_dir / "media" if logger is not None else Path(tempfile.mkdtemp())
        step = trainer.global_step
        if self._runs == 1 and trainer.is_global_zero:
            self._write(pl_module.reference_media(self._batch), root, "reference", "reference", logger)
        for task in self.tasks:
            clips = pl_module.generate(self._batch, task, self.sampler)
            if trainer.is_global_zero:
                self._write(clips, root, f"step_{step:07d}/{task}", task, logger)

    @staticmethod
    def _write(clips: list, root: Path, sub: str, stem: str, logger: KlearMLFlowLogger | None) -> None:
        for i, clip in enumerate(clips):
            for path in write_clip(clip, root / sub, f"{stem}_{i}"):
                if logger is not None:
                    logger.log_file(path, f"media/{sub}")
