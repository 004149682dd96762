"""The demo's self-bootstrap: generate SyncWorld into an empty data root, then cache its latents."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from klear_lightning.codecs import AudioCodecConfig, TextEncoderConfig, VideoCodecConfig
from klear_lightning.data.cache import cache_latents
from klear_lightning.data.syncworld.clip import SPLITS, SceneScale
from klear_lightning.data.syncworld.generate import SUMMARY, generate_syncworld
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import ClipSpec


def bootstrap_syncworld(
    root: Path,
    clips_per_split: int,
    splits: list[str],
    clip: ClipSpec,
    resolutions: list[tuple[int, int]],
    video_codec: VideoCodecConfig,
    audio_codec: AudioCodecConfig,
    text_encoder: TextEncoderConfig,
    seed: int = 0,
    workers: int = 1,
    scene: SceneScale | None = None,
) -> None:
    """Generate SyncWorld into `root` when asked (`clips_per_split` > 0) and absent (no `root/train`):
    `splits` (all four when empty) at the clip's duration, fps, sample rate and (square clips) size,
    drawn at `scene`; a root that already holds SyncWorld generated with another geometry, scene or
    clip count is an error (never silently trained on);
    then cache latents and caption embeddings for train / val / test / ood with the given codecs, so
    training and testing read the cached path. Single-process runs such as the demo; multi-process runs should
    run `klear syncworld` first."""
    root = Path(root)
    if clips_per_split <= 0:
        return
    scene = scene or SceneScale()
    size = {"size": clip.height} if clip.height == clip.width else {}
    wanted = {
        "duration": clip.duration,
        "fps": int(clip.fps),
        "sample_rate": clip.sample_rate,
        **size,
        "scene": asdict(scene),
    }
    if (root / "train").is_dir():
        _check_existing_syncworld(root, wanted, clips_per_split)
        return
    splits = list(splits) or list(SPLITS)
    print(f"SyncWorld not found in {root}: generating {clips_per_split} clips per split (once)", flush=True)
    generate_syncworld(
        root,
        clips_per_split=clips_per_split,
        seed=seed,
        splits=splits,
        duration=clip.duration,
        fps=int(clip.fps),
        sample_rate=clip.sample_rate,
        scene=scene,
        **size,
    )
    print(f"caching latents and caption embeddings in {root}", flush=True)
    cache_latents(
        root,
        splits,
        partitions=["train", "val", "test", "ood"],
        clip=clip,
        resolutions=resolutions,
        video_codec=video_codec,
        audio_codec=audio_codec,
        text_encoder=text_encoder,
        workers=workers,
    )


def _check_existing_syncworld(root: Path, wanted: dict[str, Any], clips: int) -> None:
    """The SyncWorld summary in `root` must match the requested geometry, scene and train clip count."""
    path = root / SUMMARY
    if not path.is_file():
        return  # not SyncWorld (e.g. `klear prepare` shards): nothing to compare
    summary = json.loads(path.read_text())
    have = {**summary["config"]}
    have["scene"] = {**asdict(SceneScale()), **have.get("scene", {})}  # summaries from before the scene knobs
    have = {k: have.get(k) for k in wanted}
    train_clips = max(summary.get("clips", {}).get("train", {}).values(), default=None)
    if have != wanted or train_clips != clips:
        raise ConfigError(
            f"data.init_args.root: {root} holds SyncWorld generated with {have} and {train_clips} train clips per "
            f"split, but this config asks for {wanted} and syncworld_clips_per_split = {clips}: delete {root} (it is "
            "regenerated) or point data.init_args.root elsewhere"
        )
