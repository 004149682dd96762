"""Lightning callbacks: validation / test benchmark (Verse-Bench metrics), EMA of the weights,
generated media at validation, the stage-II task / split rebalancing, and the synchronisation probe."""

from klear_lightning.callbacks.benchmark import BenchmarkCallback
from klear_lightning.callbacks.ema import EMA
from klear_lightning.callbacks.media_logger import MediaLogger
from klear_lightning.callbacks.rebalance import Rebalance
from klear_lightning.callbacks.sync_probe import SyncProbe

__all__ = ["EMA", "BenchmarkCallback", "MediaLogger", "Rebalance", "SyncProbe"]
