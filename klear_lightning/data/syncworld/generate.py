"""Write SyncWorld to WebDataset shards: `out/<partition>/<split>/`, partitions train / val / test / ood.

Clip i of (partition, split) draws its randomness from `numpy.random.default_rng([seed, partition,
split, i])`, so every clip is a pure function of the seed and its position. Train, val and test
clips never match a hold-out combination (those are redrawn); the `ood` partition holds only them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from klear_lightning.data.schema import AVSample
from klear_lightning.data.shards import ShardWriter
from klear_lightning.data.syncworld import scenes, singing, speech
from klear_lightning.data.syncworld.clip import SPLITS, SceneScale, SyncClip, SyncWorldConfig
from klear_lightning.errors import ConfigError

PARTITIONS: tuple[str, ...] = ("train", "val", "test", "ood")
SPEECH_SPLITS: tuple[str, ...] = ("speech_single", "speech_multi")
MAKERS: dict[str, Callable[..., SyncClip]] = {
    "sound": scenes.make_sound_clip,
    "speech_single": speech.make_speech_single_clip,
    "speech_multi": speech.make_speech_multi_clip,
    "singing": singing.make_singing_clip,
}
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "sound": scenes.ATTRIBUTES,
    "speech_single": speech.SINGLE_ATTRIBUTES,
    "speech_multi": speech.MULTI_ATTRIBUTES,
    "singing": singing.ATTRIBUTES,
}
DEFAULT_HOLDOUT: tuple[dict[str, str], ...] = (
    {"split": "sound", "colour": "red", "size": "large", "event": "bounce"},
    {"split": "speech_single", "gender": "female", "pace": "fast"},
    {"split": "singing", "register": "high", "skin": "dark"},
)
MAX_REDRAWS = 100
SUMMARY = "syncworld.json"


@dataclass(frozen=True)
class HoldoutRule:
    """Attribute combinations withheld from train / val / test and gathered in the `ood` partition."""

    combos: tuple[dict[str, str], ...] = DEFAULT_HOLDOUT

    def __post_init__(self) -> None:
        for combo in self.combos:
            if combo.get("split") not in SPLITS or len(combo) < 2:
                raise ConfigError(
                    f"holdout: combination {combo} needs a 'split' in {SPLITS} and at least one attribute"
                )
            known = ATTRIBUTES[combo["split"]]
            for name, value in combo.items():
                if name != "split" and value not in known.get(name, ()):
                    raise ConfigError(
                        f"holdout: combination {combo}: {name}={value!r} is not an attribute of split "
                        f"{combo['split']!r}; its attributes: {known}"
                    )

    def for_split(self, split: str) -> list[dict[str, str]]:
        return [{k: v for k, v in c.items() if k != "split"} for c in self.combos if c["split"] == split]

    def matches(self, split: str, attributes: dict[str, Any]) -> bool:
        return any(all(attributes.get(k) == v for k, v in c.items()) for c in self.for_split(split))


def partition_sizes(clips_per_split: int) -> dict[str, int]:
    """train gets `clips_per_split`; val, test and ood each an eighth of it (at least one)."""
    small = max(1, clips_per_split // 8)
    return {"train": clips_per_split, "val": small, "test": small, "ood": small}


def make_clip(
    split: str, partition: str, index: int, seed: int, cfg: SyncWorldConfig, holdout: HoldoutRule
) -> SyncClip:
    """Clip `index` of (partition, split): deterministic in all five arguments."""
    rng = np.random.default_rng([seed, PARTITIONS.index(partition), SPLITS.index(split), index])
    make = MAKERS[split]
    if partition == "ood":
        combos = holdout.for_split(split)
        if not combos:
            raise ValueError(f"split {split!r} has no hold-out combination, so it has no ood partition")
        return make(rng, cfg, forced=combos[index % len(combos)])
    for _ in range(MAX_REDRAWS):
        clip = make(rng, cfg)
        if not holdout.matches(split, clip.attributes):
            return clip
    raise ValueError(f"split {split!r}: {MAX_REDRAWS} draws all hit the hold-out rule {holdout.for_split(split)}")


def to_sample(clip: SyncClip, key: str, partition: str, seed: int) -> AVSample:
    """The shard sample: captions and transcript, the annotation with attributes, partition, seed
    and the frame size its pixel boxes refer to."""
    annotation = {
        **clip.annotation,
        "attributes": clip.attributes,
        "partition": partition,
        "seed": seed,
        "frame_size": [int(clip.video.shape[1]), int(clip.video.shape[2])],
    }
    meta = {
        "video_caption": clip.video_caption,
        "audio_caption": clip.audio_caption,
        "transcript": clip.transcript,
        "split": clip.split,
        "annotation": annotation,
        "source": "syncworld",
    }
    return AVSample(key, clip.video, float(clip.fps), clip.audio, clip.sample_rate, meta)


def check_splits(splits: Sequence[str]) -> list[str]:
    """The chosen splits, validated; the speech splits fail here without flite."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"splits: must be a non-empty subset of {SPLITS}, got {list(splits)}")
    if any(s in SPEECH_SPLITS for s in splits):
        speech.flite_binary()
    return list(splits)


def generate_syncworld(
    out: Path,
    clips_per_split: int,
    seed: int = 0,
    splits: list[str] | None = None,
    duration: float = 2.0,
    fps: int = 8,
    size: int = 64,
    sample_rate: int = 16000,
    holdout: list[dict[str, str]] | None = None,
    maxcount: int = 256,
    scene: SceneScale | None = None,
) -> dict[str, Any]:
    """Generate SyncWorld shards into `out/<partition>/<split>/` and a summary `out/syncworld.json`.

    Args:
        out: output folder; must not hold SyncWorld already.
        clips_per_split: train clips per split; val, test and ood get an eighth of it (at least 1).
        seed: every clip is a pure function of the seed and its position (same seed, same bytes).
        splits: subset of sound, speech_single, speech_multi, singing (default: all four; the
            speech splits need flite on PATH).
        duration: clip length in seconds.
        fps: video frame rate.
        size: frame height and width in pixels (a multiple of 16).
        sample_rate: audio sample rate in Hz.
        holdout: attribute combinations withheld from train/val/test and put in `ood`, each a dict
            with "split" and attribute values, e.g. {"split": "sound", "colour": "red", "size":
            "large", "event": "bounce"} (default: DEFAULT_HOLDOUT; [] for none).
        maxcount: clips per tar shard.
        scene: how large faces, mouths and `sound` objects are drawn (default: SceneScale(), the
            original drawing).

    Returns the summary: config, clip counts {partition: {split: n}} and "digest", a sha256 over
    every clip's video, audio and JSON record (equal digests mean equal data).
    """
    if clips_per_split < 1:
        raise ConfigError(f"clips_per_split: must be >= 1, got {clips_per_split}")
    cfg = SyncWorldConfig(duration=duration, fps=fps, size=size, sample_rate=sample_rate, scene=scene or SceneScale())
    rule = HoldoutRule(DEFAULT_HOLDOUT if holdout is None else tuple(holdout))
    chosen = check_splits(list(splits) if splits is not None else list(SPLITS))
    out = Path(out)
    if (out / SUMMARY).exists() or any((out / p).exists() for p in PARTITIONS):
        raise FileExistsError(f"{out} already holds SyncWorld shards; choose another --out or delete it first")
    sizes = partition_sizes(clips_per_split)
    jobs = [(p, s) for p in PARTITIONS for s in chosen if p != "ood" or rule.for_split(s)]
    digest = hashlib.sha256()
    counts: dict[str, dict[str, int]] = {}
    with tqdm(total=sum(sizes[p] for p, _ in jobs), desc="SyncWorld", unit="clip") as bar:
        for partition, split in jobs:
            with ShardWriter(out / partition, split, maxcount=maxcount) as writer:
                for i in range(sizes[partition]):
                    clip = make_clip(split, partition, i, seed, cfg, rule)
                    sample = to_sample(clip, f"{split}-{partition}-{i:06d}", partition, seed)
                    writer.write(sample)
                    record = json.dumps(sample.record(), sort_keys=True).encode()
                    digest.update(sample.video.tobytes() + sample.audio.tobytes() + record)
                    bar.update()
            counts.setdefault(partition, {})[split] = sizes[partition]
    summary = {
        "seed": seed,
        "config": asdict(cfg),
        "holdout": [dict(c) for c in rule.combos],
        "clips": counts,
        "digest": digest.hexdigest(),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary
