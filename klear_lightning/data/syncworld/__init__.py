"""SyncWorld: procedural audio-video clips whose sound and picture share ground-truth timing.

Splits: sound, speech_single, speech_multi, singing. `generate_syncworld` writes shards to
`out/<partition>/<split>/` with partitions train, val, test and ood (hold-out attribute
combinations only), plus `out/syncworld.json` (config, counts, digest).
"""

from klear_lightning.data.syncworld.clip import SPLITS, SceneScale, SyncClip, SyncWorldConfig
from klear_lightning.data.syncworld.generate import (
    DEFAULT_HOLDOUT,
    PARTITIONS,
    HoldoutRule,
    generate_syncworld,
    make_clip,
    partition_sizes,
    to_sample,
)
from klear_lightning.data.syncworld.speech import FliteMissingError

__all__ = [
    "DEFAULT_HOLDOUT",
    "PARTITIONS",
    "SPLITS",
    "FliteMissingError",
    "SceneScale",
    "HoldoutRule",
    "SyncClip",
    "SyncWorldConfig",
    "generate_syncworld",
    "make_clip",
    "partition_sizes",
    "to_sample",
]
