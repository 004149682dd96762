"""The configured set of metrics, per task: `MetricsConfig` -> `MetricSuite`.

`MetricSuite.update(task, generated, reference)` feeds every metric that applies to the task
(the task's clips carry the modalities it reads and generate at least one). With
`ground_truth`, the suite has one more row, `ground_truth`, fed with the decoded ground truth in
place of generated clips and scored like T2AV: the ceiling a model can reach through the codecs.
Metrics whose extractor is not configured are in `skipped` (name -> one line saying what to set);
values whose formula is undefined for what was seen are in `undefined` ((task, key) -> reason).
Nothing is ever reported as a silent zero.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from klear_lightning.errors import ConfigError
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import (
    REGISTRY,
    BuildContext,
    ClipMetric,
    Column,
    MetricResult,
    MetricSpec,
    MetricUnavailable,
    MetricUndefined,
)
from klear_lightning.tasks import PAPER_TASKS, TaskRecipe, get_task

GROUND_TRUTH = "ground_truth"

# Modules whose import registers metrics (`register_metric`); new metric modules go here.
METRIC_MODULES: tuple[str, ...] = (
    "klear_lightning.metrics.fd",
    "klear_lightning.metrics.kl",
    "klear_lightning.metrics.clap",
    "klear_lightning.metrics.wer",
    "klear_lightning.metrics.synchformer",
    "klear_lightning.metrics.syncnet",
    "klear_lightning.metrics.imagebind",
    "klear_lightning.metrics.motion",
    "klear_lightning.metrics.aesthetic",
    "klear_lightning.metrics.identity",
    "klear_lightning.metrics.syncworld",
)


def load_registry() -> dict[str, MetricSpec]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return REGISTRY


@dataclass
class MetricsConfig:
    """Which metrics to compute and with which extractor weights.

    Args:
        metrics: registered metric names (e.g. fd_clap_versebench, kl_passt_versebench, clap_score_versebench, wer_whisper_seedtts);
            default: every registered metric (those without weights are reported as skipped).
        checkpoints: extractor key -> local path (panns, clap, whisper, ...). An unset key skips
            the metrics that need it with one line saying what to set.
        tasks: tasks to generate and score.
        clips_per_task: validation clips generated per task (the cost bound).
        clips_per_split: in validation, at most this many of those clips per `meta["split"]`
            (SyncWorld's sound, speech_single, ...) so each split's metrics see clips; None: the
            first clips as they come.
        sampling_steps: sampler steps for the benchmark generations.
        seed: sampler seed, so every evaluation sees the same noise.
        test_clips_per_task: clips per task in `klear test` (None: the whole test split).
        ground_truth: also score the decoded ground truth of the same clips, as the row
            `ground_truth` (validation: scored at the first evaluation, logged at every one).
    """

    metrics: list[str] = field(default_factory=lambda: list(load_registry()))
    checkpoints: dict[str, str] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    clips_per_task: int = 8
    clips_per_split: int | None = None
    sampling_steps: int = 25
    seed: int = 0
    test_clips_per_task: int | None = None
    ground_truth: bool = True

    def __post_init__(self) -> None:
        known = load_registry()
        for name in self.metrics:
            if name not in known:
                raise ConfigError(f"metrics.metrics: unknown metric {name!r}; known: {sorted(known)}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics.metrics: duplicate names in {self.metrics}")
        for key, value in self.checkpoints.items():
            if value and not Path(value).expanduser().exists():
                raise ConfigError(f"metrics.checkpoints.{key}: {value} does not exist")
        for task in self.tasks:
            get_task(task)
        if not self.tasks:
            raise ConfigError("metrics.tasks: at least one task is needed")
        if self.clips_per_task < 1:
            raise ConfigError(f"metrics.clips_per_task: must be >= 1, got {self.clips_per_task}")
        if self.clips_per_split is not None and self.clips_per_split < 1:
            raise ConfigError(f"metrics.clips_per_split: must be >= 1 or null, got {self.clips_per_split}")
        if self.test_clips_per_task is not None and self.test_clips_per_task < 1:
            raise ConfigError(f"metrics.test_clips_per_task: must be >= 1 or null, got {self.test_clips_per_task}")
        if self.sampling_steps < 1:
            raise ConfigError(f"metrics.sampling_steps: must be >= 1, got {self.sampling_steps}")


class MetricSuite:
    """One metric instance per (row, metric name), a row per task plus `ground_truth` when
    configured; extractors shared through one `BuildContext`."""

    def __init__(self, cfg: MetricsConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.specs = {name: REGISTRY[name] for name in cfg.metrics}
        self.ctx = BuildContext.create(cfg.checkpoints, self.device)
        self.skipped: dict[str, str] = {}
        self.metrics: dict[str, dict[str, ClipMetric]] = {}
        self.missing_reference: dict[tuple[str, str], str] = {}
        self.columns: dict[str, tuple[Column, ...]] = {}
        self.rows: list[str] = list(cfg.tasks) + ([GROUND_TRUTH] if cfg.ground_truth else [])
        for row in self.rows:
            self.metrics[row] = {}
            for name, spec in self.specs.items():
                if name in self.skipped:
                    continue
                try:
                    metric = spec.build(self.ctx)
                except MetricUnavailable as err:
                    self.skipped[name] = str(err)
                    continue
                self.columns.setdefault(name, metric.columns)
                if metric.applies_to(row_recipe(row)):
                    self.metrics[row][name] = metric.to(self.device)

    def update(self, task: str, generated: list[MediaClip], reference: list[MediaClip] | None = None) -> None:
        """Feed one row (a task, or `ground_truth` with the ground truth as `generated`)."""
        if task not in self.metrics:
            raise ValueError(f"task {task!r} is not in metrics.tasks {self.cfg.tasks}")
        for name, metric in self.metrics[task].items():
            if metric.needs_reference and reference is None:
                self.missing_reference[(task, name)] = "no reference clips (ground truth) to compare with"
                continue
            metric.update(generated, reference if metric.needs_reference else None)

    def update_metric(
        self, row: str, name: str, generated: list[MediaClip], reference: list[MediaClip] | None = None
    ) -> None:
        """Feed one metric of one row (a routed benchmark such as Verse-Bench feeds each metric its own
        subset of clips); a metric that needs references and gets none is reported as not computed."""
        metric = self.metrics[row][name]
        if metric.needs_reference and reference is None:
            self.missing_reference[(row, name)] = "no reference clips to compare with"
            return
        metric.update(generated, reference if metric.needs_reference else None)

    def compute(self) -> tuple[dict[str, dict[str, MetricResult]], dict[tuple[str, str], str]]:
        """(row -> result key -> result, (row, metric name) -> why not computed)."""
        results: dict[str, dict[str, MetricResult]] = {}
        undefined: dict[tuple[str, str], str] = dict(self.missing_reference)
        for task, metrics in self.metrics.items():
            results[task] = {}
            for name, metric in metrics.items():
                if (task, name) in undefined:
                    continue
                if not metric.update_called:
                    undefined[(task, name)] = f"{name}: no clips were scored"
                    continue
                try:
                    results[task].update(metric.results())
                except MetricUndefined as err:
                    undefined[(task, name)] = str(err)
        return results, undefined

    def reset(self) -> None:
        self.missing_reference.clear()
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.reset()


def row_recipe(row: str) -> TaskRecipe:
    """The task a row is scored as: its own, T2AV for `ground_truth` (every modality present)."""
    return get_task("t2av" if row == GROUND_TRUTH else row)
