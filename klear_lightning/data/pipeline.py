"""Per-sample work of the loader: shard record -> checked, encoded, normalised LatentSample.

Cached latents / embeddings are used when their codec or encoder name and version match, else the
media is decoded and encoded here. Every problem raises SampleError with a reason; `SkipCounter`
counts reasons in shared memory so counts from all worker processes add up in the main process.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from klear_lightning.codecs import AudioCodec, LatentStats, VideoCodec
from klear_lightning.codecs.text import HFTextEncoder
from klear_lightning.data.collate import LatentSample, collate
from klear_lightning.data.media import fit_video, nearest_resolution, retime
from klear_lightning.data.schema import SampleError, embedding_name, latent_name, stream_texts
from klear_lightning.data.shards import ShardInfo, ShardRecord, iter_tar, parse_sample
from klear_lightning.sequence import ClipSpec
from klear_lightning.streams import AVBatch

log = logging.getLogger(__name__)

SKIP_REASONS: tuple[str, ...] = (
    "truncated",
    "truncated_shard",
    "wrong_sample_rate",
    "nan_latent",
    "missing_caption",
    "empty_audio",
    "mislabelled_container",
    "oversize",
    "too_short",
    "unknown_entry",
    "missing_entry",
    "bad_meta",
    "bad_array",
    "bad_video",
    "invalid",
)

TEXT_MEMO = 4096  # captions embedded per worker and kept (synthetic captions repeat often)


class SkipCounter:
    """Skipped-sample counts by reason in a shared-memory tensor (visible across DataLoader workers).

    While `quiet` (a per-process flag: a resumed stream replaying batches counted before its
    checkpoint) `add` neither counts nor logs.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self.quiet = False

    def add(self, reason: str, message: str) -> None:
        if self.quiet:
            return
        index = SKIP_REASONS.index(reason) if reason in SKIP_REASONS else SKIP_REASONS.index("invalid")
        self.counts[index] += 1
        log.warning("skipped sample (%s): %s", reason, message)

    def as_dict(self) -> dict[str, int]:
        return {r: int(c) for r, c in zip(SKIP_REASONS, self.counts.tolist()) if c}

    def load(self, counts: dict[str, int]) -> None:
        unknown = set(counts) - set(SKIP_REASONS)
        if unknown:
            raise ValueError(f"unknown skip reasons {sorted(unknown)}; known: {SKIP_REASONS}")
        self.counts.copy_(torch.tensor([int(counts.get(r, 0)) for r in SKIP_REASONS], dtype=torch.int64))


@dataclass(frozen=True)
class LoaderLimits:
    """Samples beyond these are skipped as `oversize`; shorter than `min_duration` as `too_short`.

    Args:
        max_duration: longest accepted source media, in seconds.
        max_side: largest accepted source frame side, in pixels.
        min_duration: shortest accepted source media, in seconds.
    """

    max_duration: float = 600.0
    max_side: int = 4096
    min_duration: float = 0.25


class SampleLoader:
    """Turns ShardRecords into LatentSamples for one clip spec and a set of allowed resolutions."""

    def __init__(
        self,
        clip: ClipSpec,
        resolutions: list[tuple[int, int]],
        video_codec: VideoCodec,
        audio_codec: AudioCodec,
        text_encoder: HFTextEncoder,
        video_stats: LatentStats | None,
        audio_stats: LatentStats | None,
        limits: LoaderLimits,
    ) -> None:
        self.clip, self.resolutions, self.limits = clip, resolutions, limits
        self.video_codec, self.audio_codec, self.text_encoder = video_codec, audio_codec, text_encoder
        self.video_stats, self.audio_stats = video_stats, audio_stats
        self._text_memo: dict[str, Tensor] = {}
        self.video_key = latent_name(video_codec.name, video_codec.version)
        self.audio_key = latent_name(audio_codec.name, audio_codec.version)

    def _frames_for(self, seconds: float) -> int:
        """Video frames of a clip of `seconds`, cut to what the video codec tiles."""
        n = min(int(round(seconds * self.clip.fps)), self.clip.frames)
        tf = self.video_codec.temporal_factor
        return 1 + (n - 1) // tf * tf if self.video_codec.causal else n // tf * tf

    def check(self, rec: ShardRecord) -> None:
        r = rec.record
        if int(r.get("sample_rate", -1)) != self.clip.sample_rate:
            raise SampleError(
                "wrong_sample_rate",
                f"{rec.where}: sample rate {r.get('sample_rate')} != clip.sample_rate {self.clip.sample_rate}",
            )
        duration = float(r.get("duration", 0.0))
        if duration > self.limits.max_duration:
            raise SampleError(
                "oversize", f"{rec.where}: duration {duration:.1f} s > max_duration {self.limits.max_duration}"
            )
        if duration < self.limits.min_duration:
            raise SampleError(
                "too_short", f"{rec.where}: duration {duration:.3f} s < min_duration {self.limits.min_duration}"
            )

    def _video_latent(self, rec: ShardRecord, seconds: float) -> Tensor:
        frames = self._frames_for(seconds)
        if frames < 1:
            raise SampleError("too_short", f"{rec.where}: too short for one latent video frame")
        cached = rec.arrays.get(self.video_key)
        if cached is not None:
            lat = torch.from_numpy(np.ascontiguousarray(cached, dtype=np.float32))
            t_lat = (
                1 + (frames - 1) // self.video_codec.temporal_factor
                if self.video_codec.causal
                else frames // self.video_codec.temporal_factor
            )
            f = self.video_codec.spatial_factor
            if (
                lat.ndim != 4
                or lat.shape[0] != self.video_codec.channels
                or (lat.shape[2] * f, lat.shape[3] * f) not in self.resolutions
            ):
                raise SampleError(
                    "bad_array",
                    f"{rec.where}: cached {self.video_key} has shape {tuple(lat.shape)}, not a configured bucket",
                )
            return lat[:, :t_lat]
        video, fps = rec.video()
        if max(video.shape[1:3]) > self.limits.max_side:
            raise SampleError(
                "oversize", f"{rec.where}: frame size {video.shape[1:3]} > max_side {self.limits.max_side}"
            )
        times = np.arange(video.shape[0]) / (fps or self.clip.fps)
        video = retime(video, times, self.clip.fps, frames)
        h, w = nearest_resolution(video.shape[1], video.shape[2], self.resolutions)
        if video.shape[1:3] != (h, w):
            video = fit_video(video, h, w)
        return _finite(self.video_codec.encode(torch.from_numpy(video)[None])[0], rec, "video")

    def _audio_latent(self, rec: ShardRecord, seconds: float) -> Tensor:
        hop = self.audio_codec.hop
        n_lat = int(round(min(seconds, self.clip.duration) * self.clip.sample_rate)) // hop
        cached = rec.arrays.get(self.audio_key)
        if cached is not None:
            lat = torch.from_numpy(np.ascontiguousarray(cached, dtype=np.float32))
            if lat.ndim != 2 or lat.shape[0] != self.audio_codec.channels:
                raise SampleError("bad_array", f"{rec.where}: cached {self.audio_key} has shape {tuple(lat.shape)}")
            return lat[:, :n_lat]
        wave, sr = rec.audio()
        if sr != self.clip.sample_rate:
            raise SampleError(
                "wrong_sample_rate", f"{rec.where}: FLAC is {sr} Hz, clip.sample_rate is {self.clip.sample_rate}"
            )
        if wave.size == 0 or not np.any(wave):
            raise SampleError("empty_audio", f"{rec.where}: audio is empty or all zeros (a failed extraction)")
        wave = wave[: n_lat * hop]
        return _finite(self.audio_codec.encode(torch.from_numpy(wave)[None])[0], rec, "audio")

    def _text(self, rec: ShardRecord, stream: str, text: str) -> Tensor:
        cached = rec.arrays.get(embedding_name(stream, self.text_encoder.name, self.text_encoder.version))
        if cached is not None:
            if cached.ndim != 2 or cached.shape[1] != self.text_encoder.dim or cached.shape[0] == 0:
                raise SampleError("bad_array", f"{rec.where}: cached {stream} embedding has shape {cached.shape}")
            return torch.from_numpy(np.ascontiguousarray(cached, dtype=np.float32))
        if text not in self._text_memo:
            if len(self._text_memo) >= TEXT_MEMO:
                self._text_memo.clear()
            emb, mask = self.text_encoder.encode([text])
            self._text_memo[text] = emb[0, mask[0]].cpu()
        return self._text_memo[text]

    def load(self, rec: ShardRecord) -> LatentSample:
        self.check(rec)
        seconds = min(float(rec.record["duration"]), self.clip.duration)
        video = self._video_latent(rec, seconds)
        audio = self._audio_latent(rec, seconds)
        for name, lat in (("video", video), ("audio", audio)):
            if lat.numel() == 0 or lat.shape[1] == 0:
                raise SampleError("too_short", f"{rec.where}: {name} latent is empty")
        if self.video_stats is not None:
            video = self.video_stats.normalize(video)
        if self.audio_stats is not None:
            audio = self.audio_stats.normalize(audio)
        texts = stream_texts(rec.record)
        return LatentSample(
            rec.key,
            video.float(),
            audio.float(),
            self._text(rec, "video_text", texts["video_text"]),
            self._text(rec, "audio_text", texts["audio_text"]),
            {**rec.record, "shard": rec.shard},
        )


def records(shard: ShardInfo, skips: SkipCounter) -> Iterator[Any]:
    """Parsed records of one shard; bad samples and a truncated tar are counted and skipped."""
    try:
        for raw in iter_tar(shard.url):
            try:
                yield parse_sample(raw, shard.url.name)
            except SampleError as e:
                skips.add(e.reason, str(e))
    except (tarfile.TarError, OSError, EOFError) as e:
        skips.add("truncated_shard", f"shard {shard.url}: {e}")


def load_or_skip(loader: SampleLoader, rec: ShardRecord, skips: SkipCounter) -> LatentSample | None:
    try:
        return loader.load(rec)
    except SampleError as e:
        skips.add(e.reason, str(e))
        return None


def _finite(latent: Tensor, rec: ShardRecord, name: str) -> Tensor:
    """Computed latents are checked here; cached ones were checked when the shard entry was read."""
    if not torch.isfinite(latent).all():
        raise SampleError("nan_latent", f"{rec.where}: encoded {name} latent has NaN or inf")
    return latent


def bucket_key(s: LatentSample, duration_bucket: int) -> tuple[int, ...]:
    """Samples batch together when latent size and channels match and T_v falls in the same bucket."""
    c, t, h, w = s.video.shape
    return (c, h, w, t // max(duration_bucket, 1))


def bucketed_groups(
    samples: Iterable[LatentSample], batch_size: int, duration_bucket: int, drop_last: bool
) -> Iterator[list[LatentSample]]:
    """Group samples by bucket; yield a group when a bucket fills (leftovers last unless drop_last)."""
    buckets: dict[tuple[int, ...], list[LatentSample]] = {}
    for s in samples:
        group = buckets.setdefault(bucket_key(s, duration_bucket), [])
        group.append(s)
        if len(group) == batch_size:
            yield group
            buckets[bucket_key(s, duration_bucket)] = []
    if not drop_last:
        for group in buckets.values():
            if group:
                yield group


def bucketed_batches(
    samples: Iterable[LatentSample], batch_size: int, duration_bucket: int, drop_last: bool
) -> Iterator[AVBatch]:
    """`bucketed_groups`, collated."""
    return map(collate, bucketed_groups(samples, batch_size, duration_bucket, drop_last))
