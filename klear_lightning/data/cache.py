"""Add cached latents and caption embeddings to existing shards (e.g. SyncWorld's), in place.

Each shard is read, every sample lacking the configured codecs' latents or the encoder's
embeddings is encoded exactly as the DataModule would (same clip cut, resolution bucket and
codecs; unnormalised), and the shard is rewritten atomically with the new `.npy` entries. Latent
statistics for the codecs are (re)computed over every cached sample and saved to `root/stats/`.
Use the same clip and codecs as training: cached latents are keyed by codec name and version only.
"""

from __future__ import annotations

import io
import multiprocessing
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from klear_lightning.codecs import (
    AudioCodecConfig,
    StatsAccumulator,
    TextEncoderConfig,
    VideoCodecConfig,
    build_audio_codec,
    build_text_encoder,
    build_video_codec,
)
from klear_lightning.data.pipeline import LoaderLimits, SampleLoader
from klear_lightning.data.schema import SampleError, embedding_name
from klear_lightning.data.shards import iter_tar, npy_bytes, parse_sample, read_index
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import ClipSpec


@dataclass
class CacheSettings:
    clip: ClipSpec
    resolutions: list[tuple[int, int]]
    video_codec: VideoCodecConfig
    audio_codec: AudioCodecConfig
    text_encoder: TextEncoderConfig


@dataclass
class ShardResult:
    shard: str
    cached: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)
    video: StatsAccumulator | None = None
    audio: StatsAccumulator | None = None


@dataclass
class CacheReport:
    root: str
    shards: int = 0
    cached: int = 0
    already_cached: int = 0
    failed: list[str] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)


_LOADER: SampleLoader | None = None


def _init(settings: CacheSettings) -> None:
    global _LOADER
    torch.set_num_threads(1)
    v, a = build_video_codec(settings.video_codec), build_audio_codec(settings.audio_codec)
    _LOADER = SampleLoader(
        settings.clip, settings.resolutions, v, a, build_text_encoder(settings.text_encoder), None, None, LoaderLimits()
    )


def _wanted(loader: SampleLoader) -> tuple[str, str, str, str]:
    t = loader.text_encoder
    return (
        loader.video_key,
        loader.audio_key,
        embedding_name("video_text", t.name, t.version),
        embedding_name("audio_text", t.name, t.version),
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    tar.addfile(info, io.BytesIO(data))


def cache_shard(path: Path) -> ShardResult:
    """Rewrite one shard with cached arrays added (in the worker that called `_init`)."""
    loader = _LOADER
    wanted = _wanted(loader)
    result = ShardResult(
        path.name,
        video=StatsAccumulator(loader.video_codec.name, loader.video_codec.version),
        audio=StatsAccumulator(loader.audio_codec.name, loader.audio_codec.version),
    )
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for raw in iter_tar(path):
            key = raw["__key__"]
            extra: dict[str, np.ndarray] = {}
            try:
                rec = parse_sample(raw, path.name)
                if all(w in rec.arrays for w in wanted):
                    result.already += 1
                    video, audio = torch.from_numpy(rec.arrays[wanted[0]]), torch.from_numpy(rec.arrays[wanted[1]])
                else:
                    s = loader.load(rec)
                    video, audio = s.video, s.audio
                    extra = dict(
                        zip(wanted, (s.video.numpy(), s.audio.numpy(), s.video_text.numpy(), s.audio_text.numpy()))
                    )
                    result.cached += 1
                result.video.update(video)
                result.audio.update(audio)
            except SampleError as e:
                result.failed.append(f"{e.reason}: {e}")
            replaced = {f"{name}.npy" for name in extra}
            for ext in sorted(k for k in raw if not k.startswith("__") and k not in replaced):
                _add(out, f"{key}.{ext}", raw[ext])
            for name, arr in sorted(extra.items()):
                _add(out, f"{key}.{name}.npy", npy_bytes(arr.astype(np.float32)))
    tmp.replace(path)
    return result


def cache_latents(
    root: Path,
    splits: list[str],
    partitions: list[str] | None = None,
    clip: ClipSpec = ClipSpec(),
    resolutions: list[tuple[int, int]] | None = None,
    video_codec: VideoCodecConfig = VideoCodecConfig(),
    audio_codec: AudioCodecConfig = AudioCodecConfig(),
    text_encoder: TextEncoderConfig = TextEncoderConfig(),
    workers: int = 2,
) -> CacheReport:
    """Cache latents and caption embeddings in `root/<partition>/<split>/` shards; stats from the train partition."""
    root = Path(root)
    partitions = partitions or ["train", "val", "test"]
    buckets = [(clip.height, clip.width)] + [
        tuple(r) for r in (resolutions or []) if tuple(r) != (clip.height, clip.width)
    ]
    settings = CacheSettings(clip, buckets, video_codec, audio_codec, text_encoder)
    shards = [
        (p, s.url)
        for p in partitions
        for split in splits
        if (root / p / split / "index.json").exists()
        for s in read_index(root / p, split)
    ]
    if not shards:
        raise ConfigError(f"splits: no shards for splits {splits} in partitions {partitions} under {root}")
    report = CacheReport(str(root), shards=len(shards))
    video = audio = None
    if workers <= 1:
        _init(settings)
        results = map(cache_shard, (s for _, s in shards))
    else:
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(settings,)
        )
        results = pool.map(cache_shard, (s for _, s in shards))
    try:
        for (partition, _), r in tqdm(zip(shards, results), total=len(shards), desc="cache latents"):
            report.cached += r.cached
            report.already_cached += r.already
            report.failed += [f"{partition}/{r.shard}: {f}" for f in r.failed]
            if partition == "train":
                video = video or StatsAccumulator(r.video.codec, r.video.version)
                audio = audio or StatsAccumulator(r.audio.codec, r.audio.version)
                video.merge(r.video)
                audio.merge(r.audio)
    finally:
        if workers > 1:
            pool.shutdown()
    for acc in (video, audio):
        if acc is not None and acc.n:
            report.stats.append(str(acc.result().save(root)))
    return report
