"""The metric framework: one torchmetrics `Metric` per benchmark metric, a registry, results.

Every metric
- is a `ClipMetric` fed decoded `MediaClip`s: `update(generated, reference=None)`;
- carries a sum-reduced count state `n` (clips it scored), logged beside its value;
- names its protocol in its result keys (`fd_panns_avbench`, `clap_score_versebench`, `wer_whisper_tiny_en_seedtts`, ...);
- refuses with `MetricUndefined` where its formula is undefined (no clips, Fréchet with N < 2).

Metrics are built by name through the registry (`register_metric`). A builder receives a
`BuildContext` and raises `MetricUnavailable` (one line saying which config field to set) when an
extractor checkpoint is not configured; the suite collects those as skipped, never as zeros.
To plug a new metric in: subclass `ClipMetric`, decorate a builder with `register_metric(...)`
in its module, and list the module in `klear_lightning.metrics.suite.METRIC_MODULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric

from klear_lightning.errors import ConfigError
from klear_lightning.media import MediaClip
from klear_lightning.tasks import Role, TaskRecipe

Group = Literal["video", "audio", "tts", "av"]
GROUPS: tuple[Group, ...] = ("video", "audio", "tts", "av")
T = TypeVar("T")


class MetricUnavailable(RuntimeError):
    """A metric cannot be built here; the message is one line saying what to set or install."""


class MetricUndefined(ValueError):
    """The metric's formula is undefined for what it has seen (e.g. no clips, N < 2)."""


@dataclass(frozen=True)
class MetricResult:
    value: float
    n: int
    protocol: str


@dataclass(frozen=True)
class Column:
    """One reported value: result key (protocol in the name), table label, direction."""

    key: str
    label: str
    higher_is_better: bool


class ClipMetric(Metric):
    """Base class. Subclasses set `protocol`, `modalities`, `needs_reference`, `columns`,
    implement `_update` (and increment `self.n`) and `compute` (a scalar tensor for a single
    column, else a dict keyed by column key), and call `self.require(...)` to refuse."""

    full_state_update = False
    is_differentiable = False

    protocol: str = ""
    modalities: tuple[str, ...] = ("audio",)
    needs_reference: bool = False
    columns: tuple[Column, ...] = ()

    n: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.columns:
            raise TypeError(f"{type(self).__name__} declares no columns")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def name(self) -> str:
        return self.columns[0].key

    def applies_to(self, task: TaskRecipe) -> bool:
        """True when the task's clips carry every modality this metric reads and it generates one."""
        roles = [task.role(m) for m in self.modalities]
        return all(r is not Role.ABSENT for r in roles) and any(r is Role.GENERATE for r in roles)

    def update(self, generated: Sequence[MediaClip], reference: Sequence[MediaClip] | None = None) -> None:
        generated = list(generated)
        if self.needs_reference:
            if reference is None:
                raise ValueError(f"{self.name}: needs reference clips, got none")
            reference = list(reference)
            if len(reference) != len(generated):
                raise ValueError(f"{self.name}: {len(generated)} generated clips but {len(reference)} reference clips")
        for i, clip in enumerate(generated):
            for m in self.modalities:
                if getattr(clip, m) is None:
                    raise ValueError(f"{self.name}: generated clip {i} ({_key(clip)}) has no {m}")
        self._update(generated, list(reference) if reference is not None else None)

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        raise NotImplementedError

    def require(self, condition: bool, why: str) -> None:
        if not condition:
            raise MetricUndefined(f"{self.name}: {why}")

    def results(self) -> dict[str, MetricResult]:
        """Compute and wrap every column as a `MetricResult` with this metric's N and protocol."""
        values = self.compute()
        if isinstance(values, Tensor):
            values = {self.columns[0].key: values}
        n = int(self.n)
        return {k: MetricResult(value=float(v), n=n, protocol=self.protocol) for k, v in values.items()}


@dataclass
class BuildContext:
    """What builders read: checkpoint paths by extractor key, the device, and a shared cache so
    two metrics on one extractor (fd_panns_avbench, kl_panns_avbench) load it once."""

    checkpoints: Mapping[str, str | None]
    device: torch.device
    _cache: dict[str, Any]

    @classmethod
    def create(cls, checkpoints: Mapping[str, str | None], device: torch.device | str = "cpu") -> BuildContext:
        return cls(checkpoints=dict(checkpoints), device=torch.device(device), _cache={})

    def checkpoint(self, key: str, what: str) -> Path:
        """The configured local path for `key`; `MetricUnavailable` if unset, `FileNotFoundError` if wrong."""
        value = self.checkpoints.get(key)
        if not value:
            raise MetricUnavailable(f"set metrics.checkpoints.{key} to {what}")
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"metrics.checkpoints.{key}: {path} does not exist (expected {what})")
        return path

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = factory()
        return self._cache[key]

    def load(self, key: str, what: str, loader: Callable[[Path], T]) -> T:
        """`loader(path)` for the configured `key`, once (shared). A file that fails to load (refused
        by the allow-list reader, another layout, missing or mis-shaped tensors) raises
        `MetricUnavailable` naming the field, the file and the reason, so the metric is reported as
        not computed instead of crashing the run; the failure is remembered too."""
        path = self.checkpoint(key, what)
        failed = f"{key}: failed"
        if failed in self._cache:
            raise self._cache[failed]
        try:
            return self.shared(key, lambda: loader(path))
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self._cache[failed] = MetricUnavailable(f"metrics.checkpoints.{key}: could not load {path}: {reason}")
            raise self._cache[failed] from err


@dataclass(frozen=True)
class MetricSpec:
    name: str
    group: Group
    build: Callable[[BuildContext], ClipMetric]
    description: str


REGISTRY: dict[str, MetricSpec] = {}


def register_metric(
    name: str, group: Group, description: str
) -> Callable[[Callable[[BuildContext], ClipMetric]], Callable[[BuildContext], ClipMetric]]:
    """Decorator: register a builder under a config name (e.g. "fd_panns_avbench")."""
    if group not in GROUPS:
        raise ValueError(f"metric {name!r}: group must be one of {GROUPS}, got {group!r}")

    def decorate(build: Callable[[BuildContext], ClipMetric]) -> Callable[[BuildContext], ClipMetric]:
        if name in REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        REGISTRY[name] = MetricSpec(name=name, group=group, build=build, description=description)
        return build

    return decorate


def _key(clip: MediaClip) -> str:
    return str(clip.meta.get("key", "?"))
