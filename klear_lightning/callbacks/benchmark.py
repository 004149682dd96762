"""Verse-Bench metrics during validation and `klear test`.

Validation: every `every_n_val_epochs` validation epochs (never in the sanity check), the first
`metrics.clips_per_task` clips of the (unshuffled) validation loader are kept as they pass (at most
`metrics.clips_per_split` of each `meta["split"]` when set), then
for each task in `metrics.tasks` the module generates them with `metrics.sampling_steps` steps and
a fixed seed, the ground truth is decoded as reference, and the suite logs `val/<task>/<key>` and
`val/<task>/<key>_n`. With `metrics.ground_truth`, the decoded ground truth of the same clips is
scored too, once (the subset is the same at every validation), and logged at every validation as
`val/ground_truth/<key>`: the line the generated scores should climb towards. Test: the same over
the test split (up to `metrics.test_clips_per_task`), logged as `test/...`, plus `report.json` and
`report.md` in the trainer's log dir, also logged as MLflow artifacts when an MLFlowLogger is attached.
Another test partition of the data module (`test_partition: ood`) is logged as `ood/...` with
`report_ood.json` / `report_ood.md`.

The LightningModule must provide `generate(batch, task, sampler) -> list[MediaClip]` and
`reference_media(batch) -> list[MediaClip]` (KlearModule does).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger

from klear_lightning.errors import ConfigError
from klear_lightning.metrics.base import MetricResult
from klear_lightning.metrics.report import build_report, write_report
from klear_lightning.metrics.suite import GROUND_TRUTH, MetricsConfig, MetricSuite
from klear_lightning.sampling import SamplerConfig
from klear_lightning.streams import AVBatch

log = logging.getLogger(__name__)


def select(batch: AVBatch, rows: list[int]) -> AVBatch:
    """The samples `rows` of a batch, in that order, on the CPU."""
    index = torch.tensor(rows, dtype=torch.long)
    moved = {
        f.name: getattr(batch, f.name).cpu()[index]
        for f in fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return replace(batch, **moved, meta=[batch.meta[i] for i in rows])


def head(batch: AVBatch, n: int) -> AVBatch:
    """The first `n` samples of a batch, on the CPU."""
    return select(batch, list(range(min(n, batch.batch_size))))


def keep_clips(kept: list[AVBatch], batch: AVBatch, limit: int | None, per_split: int | None) -> None:
    """Append to `kept` the samples of `batch` that fit: at most `limit` in all (None: no bound)
    and at most `per_split` per `meta["split"]` (None: no bound), in arrival order."""
    have = sum(b.batch_size for b in kept)
    counts = Counter(m.get("split") for b in kept for m in b.meta)
    rows = []
    for i, meta in enumerate(batch.meta):
        if limit is not None and have + len(rows) >= limit:
            break
        if per_split is None or counts[meta.get("split")] < per_split:
            counts[meta.get("split")] += 1
            rows.append(i)
    if rows:
        kept.append(select(batch, rows))


class BenchmarkCallback(L.Callback):
    """Generate, decode and score a fixed validation subset; write the test report.

    Args:
        metrics: which metrics, extractor checkpoints, tasks and the cost bound (clips per task,
            sampling steps, seed).
        every_n_val_epochs: run on every n-th validation epoch (1 = every one).
        report_stem: file stem of the test report (`<stem>.json`, `<stem>.md`; `<stem>_<partition>.*`
            for a test partition other than `test`).
    """

    def __init__(
        self, metrics: MetricsConfig | None = None, every_n_val_epochs: int = 1, report_stem: str = "report"
    ) -> None:
        if every_n_val_epochs < 1:
            raise ConfigError(f"BenchmarkCallback.every_n_val_epochs: must be >= 1, got {every_n_val_epochs}")
        self.cfg = metrics or MetricsConfig()
        self.every_n_val_epochs = every_n_val_epochs
        self.report_stem = report_stem
        self.suite: MetricSuite | None = None
        self._val_epochs = 0
        self._active = False
        self._kept: list[AVBatch] = []
        self._ground_truth: dict[str, MetricResult] | None = None
        self._checkpoint_step: int | None = None
        self.last_report: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the module and load every extractor now, so a bad checkpoint fails before training."""
        for method in ("generate", "reference_media"):
            if not callable(getattr(pl_module, method, None)):
                raise TypeError(f"BenchmarkCallback needs {type(pl_module).__name__}.{method}(...)")
        if self.suite is None:
            self.suite = MetricSuite(self.cfg, device=trainer.strategy.root_device)
            for name, reason in self.suite.skipped.items():
                log.warning("metric %s not computed: %s", name, reason)

    def _keep(self, batch: Any, limit: int | None, per_split: int | None = None) -> None:
        if not isinstance(batch, AVBatch):
            raise TypeError(f"BenchmarkCallback expects AVBatch batches, got {type(batch).__name__}")
        keep_clips(self._kept, batch, limit, per_split)

    def _evaluate(self, pl_module: L.LightningModule, prefix: str, score_ground_truth: bool) -> MetricSuite:
        """Generate and score the kept clips for every task (and the ground truth when asked),
        log `<prefix>/<row>/<key>` and `<prefix>/<row>/<key>_n`."""
        suite = self.suite
        assert suite is not None, "setup() builds the suite"
        suite.reset()
        base = getattr(pl_module, "val_sampler", None) or SamplerConfig()
        sampler = replace(base, steps=self.cfg.sampling_steps, seed=self.cfg.seed)
        needs_reference = score_ground_truth or any(
            m.needs_reference for per_task in suite.metrics.values() for m in per_task.values()
        )
        for batch in self._kept:
            reference = pl_module.reference_media(batch) if needs_reference else None
            for task in self.cfg.tasks:
                suite.update(task, pl_module.generate(batch, task, sampler), reference)
            if score_ground_truth:
                suite.update(GROUND_TRUTH, reference, reference)
        self._kept = []
        results, _ = suite.compute()
        if prefix == "val" and self.cfg.ground_truth:
            if score_ground_truth:
                self._ground_truth = results.get(GROUND_TRUTH, {})
            results[GROUND_TRUTH] = self._ground_truth or {}
        for row, values in results.items():
            for key, result in values.items():
                pl_module.log(f"{prefix}/{row}/{key}", result.value, on_epoch=True, sync_dist=False)
                pl_module.log(f"{prefix}/{row}/{key}_n", float(result.n), on_epoch=True, sync_dist=False)
        return suite

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kept = []
        self._active = False
        if trainer.sanity_checking:
            return
        self._val_epochs += 1
        self._active = self._val_epochs % self.every_n_val_epochs == 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active:
            self._keep(batch, self.cfg.clips_per_task, self.cfg.clips_per_split)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active and self._kept:
            self._evaluate(pl_module, "val", self.cfg.ground_truth and self._ground_truth is None)
        self._active = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint's step: `trainer.test(ckpt_path=...)` does not restore `global_step`."""
        self._checkpoint_step = checkpoint.get("global_step")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kept = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._keep(batch, self.cfg.test_clips_per_task)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._kept:
            raise RuntimeError("BenchmarkCallback: the test split yielded no batches to score")
        # Named after the partition scored, as the module's test losses: `test/...`, `ood/...`.
        partition = getattr(trainer.datamodule, "test_partition", "test")
        suite = self._evaluate(pl_module, partition, self.cfg.ground_truth)
        context = {
            "partition": partition,
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else "(in-memory weights)",
            "global_step": max(trainer.global_step, self._checkpoint_step or 0),
            "sampling_steps": self.cfg.sampling_steps,
            "seed": self.cfg.seed,
            "clips_per_task": self.cfg.test_clips_per_task or "all",
        }
        self.last_report = build_report(suite, context)
        if trainer.is_global_zero:
            directory = Path(trainer.log_dir or trainer.default_root_dir)
            stem = self.report_stem if partition == "test" else f"{self.report_stem}_{partition}"
            paths = write_report(self.last_report, directory, stem)
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    for path in paths:
                        logger.experiment.log_artifact(logger.run_id, str(path))
            log.info("benchmark report written to %s", paths[1])
