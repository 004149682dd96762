"""The demo's self-bootstrap: generate SyncWorld into an empty data root, then cache its latents."""

from __future__ import annotations

from pathlib import Path

from klear_lightning.codecs import AudioCodecConfig, TextEncoderConfig, VideoCodecConfig
from klear_lightning.data.cache import cache_latents
from klear_lightning.data.syncworld.clip import SPLITS
from klear_lightning.data.syncworld.generate import generate_syncworld
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
) -> None:
    """Generate SyncWorld into `root` when asked (`clips_per_split` > 0) and absent (no `root/train`):
    `splits` (all four when empty) at the clip's duration, fps, sample rate and (square clips) size;
    then cache latents and caption embeddings for train / val / test / ood with the given codecs, so
    training and testing read the cached path. Single-process runs such as the demo; multi-process runs should
    run `klear syncworld` first."""
    root = Path(root)
    if clips_per_split <= 0 or (root / "train").is_dir():
        return
    splits = list(splits) or list(SPLITS)
    size = {"size": clip.height} if clip.height == clip.width else {}
    print(f"SyncWorld not found in {root}: generating {clips_per_split} clips per split (once)", flush=True)
    generate_syncworld(root, clips_per_split=clips_per_split, seed=seed, splits=splits, duration=clip.duration,
                       fps=int(clip.fps), sample_rate=clip.sample_rate, **size)
    print(f"caching latents and caption embeddings in {root}", flush=True)
    cache_latents(root, splits, partitions=["train", "val", "test", "ood"], clip=clip, resolutions=resolutions,
                  video_codec=video_codec, audio_codec=audio_codec, text_encoder=text_encoder, workers=workers)
