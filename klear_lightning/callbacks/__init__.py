"""Lightning callbacks: validation / test benchmark (Verse-Bench metrics), EMA."""

from klear_lightning.callbacks.benchmark import BenchmarkCallback

__all__ = ["BenchmarkCallback"]
