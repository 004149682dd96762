"""AVDataModule: a weighted mixture over split folders for training, deterministic val / test.

Train: per DataLoader worker, an endless stream per split over resampled shards (shards drawn
with replacement by a per-rank, per-worker, per-epoch RNG, then a shuffle buffer), mixed by split
weights read at every draw from a shared-memory tensor, so `set_split_weights` reaches running
workers. An epoch is `epoch_samples` samples over all ranks and workers (WebDataset's
`with_epoch`). Val / test: every sample of every listed split once, in order, sample i going to
global worker i mod (world * workers); batches are bucketed so shapes match.
"""

from __future__ import annotations

import logging
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from klear_lightning.codecs import (
    AudioCodec, AudioCodecConfig, LatentStats, StatsAccumulator, TextEncoderConfig, VideoCodec, VideoCodecConfig,
    build_audio_codec, build_text_encoder, build_video_codec, latent_geometry, load_stats,
)
from klear_lightning.codecs.text import HFTextEncoder
from klear_lightning.data.collate import LatentSample
from klear_lightning.data.pipeline import LoaderLimits, SampleLoader, SkipCounter, bucketed_batches
from klear_lightning.data.schema import SampleError
from klear_lightning.data.shards import ShardInfo, iter_tar, parse_sample, read_index
from klear_lightning.sequence import ClipSpec, SequenceSpec
from klear_lightning.streams import AVBatch

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_SKIPS = 1000


@dataclass(frozen=True)
class Placement:
    """Where a dataset copy runs: distributed rank / world and the DataLoader worker."""

    rank: int = 0
    world: int = 1

    def worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def global_worker(self) -> tuple[int, int]:
        wid, nw = self.worker()
        return self.rank * nw + wid, self.world * nw


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


def load_or_skip(loader: SampleLoader, rec: Any, skips: SkipCounter) -> LatentSample | None:
    try:
        return loader.load(rec)
    except SampleError as e:
        skips.add(e.reason, str(e))
        return None


class MixtureDataset(IterableDataset):
    """Endless weighted mixture over splits; yields `batches_per_worker` AVBatches per iteration."""

    def __init__(self, shards: dict[str, list[ShardInfo]], weights: torch.Tensor, loader: SampleLoader, skips: SkipCounter,
                 batch_size: int, epoch_samples: int, shuffle_buffer: int, duration_bucket: int, seed: int,
                 placement: Placement) -> None:
        self.splits = list(shards)
        self.shards, self.weights, self.loader, self.skips = shards, weights, loader, skips
        self.batch_size, self.epoch_samples, self.shuffle_buffer = batch_size, epoch_samples, shuffle_buffer
        self.duration_bucket, self.seed, self.placement = duration_bucket, seed, placement
        self.iterations = torch.zeros(1024, dtype=torch.int64).share_memory_()

    def _split_stream(self, split: str, rng: random.Random) -> Iterator[Any]:
        buffer: list[Any] = []
        empty_shards = 0
        while True:
            shard = rng.choice(self.shards[split])
            found = False
            for rec in records(shard, self.skips):
                found = True
                buffer.append(rec)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            empty_shards = 0 if found else empty_shards + 1
            if empty_shards > 10 * len(self.shards[split]):
                raise RuntimeError(f"split {split!r}: no readable sample in {empty_shards} shard reads; skipped so far: {self.skips.as_dict()}")

    def draws(self, rng: random.Random) -> Iterator[Any]:
        """Endless raw records, each from a split drawn by the current shared weights."""
        streams = {s: self._split_stream(s, random.Random(rng.random())) for s in self.splits}
        while True:
            split = rng.choices(self.splits, weights=self.weights.tolist())[0]
            yield next(streams[split])

    def _samples(self, rng: random.Random) -> Iterator[LatentSample]:
        failures = 0
        for rec in self.draws(rng):
            sample = load_or_skip(self.loader, rec, self.skips)
            if sample is not None:
                failures = 0
                yield sample
            elif (failures := failures + 1) >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{failures} samples in a row were skipped; the data is unusable: {self.skips.as_dict()}")

    def batches_per_worker(self, workers: int) -> int:
        return max(1, self.epoch_samples // (self.batch_size * self.placement.world * workers))

    def __iter__(self) -> Iterator[AVBatch]:
        wid, nw = self.placement.worker()
        gid, _ = self.placement.global_worker()
        epoch = int(self.iterations[wid])
        self.iterations[wid] += 1
        rng = random.Random(hash((self.seed, gid, epoch)))
        batches = bucketed_batches(self._samples(rng), self.batch_size, self.duration_bucket, drop_last=True)
        for _ in range(self.batches_per_worker(nw)):
            yield next(batches)


class OrderedDataset(IterableDataset):
    """Every sample of the given shards once, in order, split across ranks and workers."""

    def __init__(self, shards: list[ShardInfo], loader: SampleLoader, skips: SkipCounter, batch_size: int,
                 duration_bucket: int, placement: Placement) -> None:
        self.shards, self.loader, self.skips = shards, loader, skips
        self.batch_size, self.duration_bucket, self.placement = batch_size, duration_bucket, placement

    def _samples(self) -> Iterator[LatentSample]:
        gid, total = self.placement.global_worker()
        i = 0
        for shard in self.shards:
            for rec in records(shard, self.skips):
                mine, i = i % total == gid, i + 1
                if mine and (sample := load_or_skip(self.loader, rec, self.skips)) is not None:
                    yield sample

    def __iter__(self) -> Iterator[AVBatch]:
        return bucketed_batches(self._samples(), self.batch_size, self.duration_bucket, drop_last=False)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class AVDataModule(L.LightningDataModule):
    """Shards under `root/<partition>/<split>/` (as `klear syncworld` and `klear prepare` write them).

    Args:
        root: dataset folder; latent statistics live in `root/stats/`.
        train_splits: split name -> mixture weight, read from `root/<train_partition>/`.
        val_splits / test_splits: splits read in order from `root/<val_partition>/` / `root/<test_partition>/`.
        clip: the clip every sample is cut to (longest duration, largest resolution, fps, sample rate).
        resolutions: extra (height, width) buckets; a video is fit to the bucket nearest its aspect ratio.
        epoch_samples: training samples per epoch over all ranks and workers.
        duration_bucket: latent video frames per duration bucket (same bucket -> same batch).
        stats_samples: train samples used to compute latent statistics when `root/stats/` lacks them.
    """

    def __init__(
        self,
        root: Path,
        train_splits: dict[str, float],
        val_splits: list[str] | None = None,
        test_splits: list[str] | None = None,
        train_partition: str = "train",
        val_partition: str = "val",
        test_partition: str = "test",
        clip: ClipSpec = ClipSpec(),
        resolutions: list[tuple[int, int]] | None = None,
        video_codec: VideoCodecConfig = VideoCodecConfig(),
        audio_codec: AudioCodecConfig = AudioCodecConfig(),
        text_encoder: TextEncoderConfig = TextEncoderConfig(),
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        epoch_samples: int = 1024,
        shuffle_buffer: int = 64,
        duration_bucket: int = 4,
        normalize: bool = True,
        stats_samples: int = 64,
        limits: LoaderLimits = LoaderLimits(),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.clip, self.limits, self.seed = clip, limits, seed
        self.video_codec_cfg, self.audio_codec_cfg, self.text_encoder_cfg = video_codec, audio_codec, text_encoder
        self.train_partition, self.val_partition, self.test_partition = train_partition, val_partition, test_partition
        self.val_splits = list(val_splits) if val_splits is not None else list(train_splits)
        self.test_splits = list(test_splits) if test_splits is not None else list(self.val_splits)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.epoch_samples, self.shuffle_buffer = num_workers, epoch_samples, shuffle_buffer
        self.duration_bucket, self.normalize, self.stats_samples = duration_bucket, normalize, stats_samples
        resolutions = list(resolutions or [])
        self._check_config(train_splits, resolutions)
        self.split_names = list(train_splits)
        self.weights = torch.zeros(len(self.split_names), dtype=torch.float64).share_memory_()
        self.set_split_weights(train_splits)
        self.resolutions = [(clip.height, clip.width)] + [tuple(r) for r in resolutions if tuple(r) != (clip.height, clip.width)]
        self.skips = SkipCounter()
        self.video_stats: LatentStats | None = None
        self.audio_stats: LatentStats | None = None
        self._train_dataset: MixtureDataset | None = None

    def _check_config(self, train_splits: dict[str, float], resolutions: Any) -> None:
        if not train_splits:
            raise ValueError("data.train_splits is empty: give at least one split with a positive weight")
        for name, value in (("batch_size", self.batch_size), ("val_batch_size", self.val_batch_size), ("epoch_samples", self.epoch_samples),
                            ("shuffle_buffer", self.shuffle_buffer), ("duration_bucket", self.duration_bucket)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.audio_codec_cfg.name == "logmel" and self.audio_codec_cfg.sample_rate != self.clip.sample_rate:
            raise ValueError(f"data.audio_codec.sample_rate = {self.audio_codec_cfg.sample_rate} must equal data.clip.sample_rate = {self.clip.sample_rate}")
        for r in resolutions:
            if len(r) != 2 or r[0] < 1 or r[1] < 1:
                raise ValueError(f"data.resolutions: {r!r} is not a (height, width) pair")

    # ------------------------------------------------------------- codecs and geometry
    @cached_property
    def video_codec(self) -> VideoCodec:
        return build_video_codec(self.video_codec_cfg)

    @cached_property
    def audio_codec(self) -> AudioCodec:
        codec = build_audio_codec(self.audio_codec_cfg)
        if codec.sample_rate != self.clip.sample_rate:
            raise ValueError(f"data.clip.sample_rate = {self.clip.sample_rate} differs from the audio codec's {codec.sample_rate} Hz")
        return codec

    @cached_property
    def text_encoder(self) -> HFTextEncoder:
        return build_text_encoder(self.text_encoder_cfg)

    @property
    def sequence(self) -> SequenceSpec:
        """Stream lengths of the longest clip (checks that every resolution bucket tiles)."""
        geometry = latent_geometry(self.video_codec, self.audio_codec)
        for h, w in self.resolutions:
            SequenceSpec(ClipSpec(self.clip.duration, self.clip.fps, h, w, self.clip.sample_rate), geometry)
        return SequenceSpec(self.clip, geometry)

    @property
    def text_dim(self) -> int:
        return self.text_encoder.dim

    def decoders(self) -> Any:
        """What KlearModule.generate needs to turn normalised latents into media."""
        from klear_lightning.module import Decoders

        def stats(s: LatentStats | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            return (torch.tensor(s.mean), torch.tensor(s.std)) if s is not None else (None, None)

        vm, vs = stats(self.video_stats)
        am, as_ = stats(self.audio_stats)
        return Decoders(video_codec=self.video_codec, audio_codec=self.audio_codec, fps=self.clip.fps,
                        sample_rate=self.clip.sample_rate, video_mean=vm, video_std=vs, audio_mean=am, audio_std=as_)

    # ------------------------------------------------------------- curriculum and skip counts
    def set_split_weights(self, weights: dict[str, float]) -> None:
        """Change the train mixture (also inside running workers); unknown splits are an error."""
        unknown = set(weights) - set(self.split_names)
        if unknown:
            raise ValueError(f"set_split_weights: unknown splits {sorted(unknown)}; train splits are {self.split_names}")
        values = [float(weights.get(s, 0.0)) for s in self.split_names]
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"split weights must be >= 0 with a positive sum, got {weights}")
        self.weights.copy_(torch.tensor(values, dtype=torch.float64) / sum(values))

    def split_weights(self) -> dict[str, float]:
        return dict(zip(self.split_names, self.weights.tolist()))

    def skipped_counts(self) -> dict[str, int]:
        """Skipped samples by reason, summed over every worker of this process."""
        return self.skips.as_dict()

    # ------------------------------------------------------------- setup and loaders
    def _placement(self) -> Placement:
        if self.trainer is not None:
            return Placement(self.trainer.global_rank, self.trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return Placement(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return Placement()

    def _shards(self, partition: str, split: str) -> list[ShardInfo]:
        shards = read_index(self.root / partition, split)
        if not shards:
            raise ValueError(f"split {split!r} in {self.root / partition} has no shards")
        return shards

    def _stats(self, codec: Any) -> LatentStats | None:
        if not self.normalize:
            return None
        return load_stats(self.root, codec.name, codec.version)

    def setup(self, stage: str | None = None) -> None:
        self.sequence  # every resolution bucket must tile with the codecs before any data is read
        self.video_stats, self.audio_stats = self._stats(self.video_codec), self._stats(self.audio_codec)
        if self.normalize and (self.video_stats is None or self.audio_stats is None):
            self._compute_stats()

    def _compute_stats(self) -> None:
        """Latent statistics from the first `stats_samples` train samples, saved to root/stats/."""
        loader = self._loader(None, None)
        video = StatsAccumulator(self.video_codec.name, self.video_codec.version)
        audio = StatsAccumulator(self.audio_codec.name, self.audio_codec.version)
        seen = 0
        for split in self.split_names:
            for shard in self._shards(self.train_partition, split):
                for rec in records(shard, self.skips):
                    if seen >= self.stats_samples:
                        break
                    if (s := load_or_skip(loader, rec, self.skips)) is not None:
                        video.update(s.video)
                        audio.update(s.audio)
                        seen += 1
        self.video_stats = self.video_stats or video.result()
        self.audio_stats = self.audio_stats or audio.result()
        if self.trainer is None or self.trainer.is_global_zero:
            self.video_stats.save(self.root)
            self.audio_stats.save(self.root)
        log.info("computed latent statistics from %d samples into %s", seen, self.root / "stats")

    def _loader(self, video_stats: LatentStats | None, audio_stats: LatentStats | None) -> SampleLoader:
        return SampleLoader(self.clip, self.resolutions, self.video_codec, self.audio_codec, self.text_encoder,
                            video_stats, audio_stats, self.limits)

    def train_dataset(self) -> MixtureDataset:
        if self._train_dataset is None:
            shards = {s: self._shards(self.train_partition, s) for s in self.split_names}
            self._train_dataset = MixtureDataset(
                shards, self.weights, self._loader(self.video_stats, self.audio_stats), self.skips, self.batch_size,
                self.epoch_samples, self.shuffle_buffer, self.duration_bucket, self.seed, self._placement(),
            )
        return self._train_dataset

    def _dataloader(self, dataset: IterableDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, worker_init_fn=_worker_init,
                          persistent_workers=self.num_workers > 0, prefetch_factor=2 if self.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader(self.train_dataset())

    def _ordered(self, partition: str, splits: list[str]) -> DataLoader:
        shards = [s for split in splits for s in self._shards(partition, split)]
        dataset = OrderedDataset(shards, self._loader(self.video_stats, self.audio_stats), self.skips,
                                 self.val_batch_size, self.duration_bucket, self._placement())
        return self._dataloader(dataset)

    def val_dataloader(self) -> DataLoader:
        return self._ordered(self.val_partition, self.val_splits)

    def test_dataloader(self) -> DataLoader:
        return self._ordered(self.test_partition, self.test_splits)
