"""Verse-Bench metrics as torchmetrics `Metric`s fed decoded `MediaClip`s (see `base`)."""

from klear_lightning.metrics.base import (
    REGISTRY,
    BuildContext,
    ClipMetric,
    Column,
    MetricResult,
    MetricSpec,
    MetricUnavailable,
    MetricUndefined,
    register_metric,
)

__all__ = [
    "REGISTRY",
    "BuildContext",
    "ClipMetric",
    "Column",
    "MetricResult",
    "MetricSpec",
    "MetricUnavailable",
    "MetricUndefined",
    "register_metric",
]
