"""AVDataModule: a weighted mixture over split folders for training, deterministic val / test.

Train: the resumable mixture stream of `klear_lightning.data.mixture` (an epoch is `epoch_samples`
samples over all ranks and workers; `set_split_weights` reaches running workers). The module is
stateful: its `state_dict` (saved in Lightning checkpoints) holds the epoch, the batches consumed,
the split-weight schedule and the skip counts, so `--ckpt_path` continues the stream where it stopped.
Val / test: every sample of every listed split once, in order, sample i going to global worker
i mod (world * workers); batches are bucketed so shapes match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, IterableDataset

from klear_lightning.codecs import (
    AudioCodec,
    AudioCodecConfig,
    Decoders,
    LatentStats,
    StatsAccumulator,
    TextEncoderConfig,
    VideoCodec,
    VideoCodecConfig,
    build_audio_codec,
    build_text_encoder,
    build_video_codec,
    latent_geometry,
    load_stats,
)
from klear_lightning.codecs.text import HFTextEncoder
from klear_lightning.data.collate import LatentSample
from klear_lightning.data.mixture import (
    MixtureDataset,
    MixtureLoader,
    Placement,
    StreamPosition,
    WeightSchedule,
    lookahead,
    worker_init,
)
from klear_lightning.data.pipeline import (
    LoaderLimits,
    SampleLoader,
    SkipCounter,
    bucketed_batches,
    load_or_skip,
    records,
)
from klear_lightning.data.shards import INDEX, ShardInfo, read_index, split_dir
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec
from klear_lightning.streams import AVBatch

log = logging.getLogger(__name__)


class OrderedDataset(IterableDataset):
    """Every sample of the given shards once, in order, split across ranks and workers."""

    def __init__(
        self,
        shards: list[ShardInfo],
        loader: SampleLoader,
        skips: SkipCounter,
        batch_size: int,
        duration_bucket: int,
        placement: Placement,
    ) -> None:
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


class AVDataModule(L.LightningDataModule):
    """Shards under `root/<partition>/<split>/` (as `klear syncworld` and `klear prepare` write them).

    Args:
        root: dataset folder; latent statistics live in `root/stats/`.
        train_splits: split name -> mixture weight, read from `root/<train_partition>/`.
        val_splits: splits read in order from `root/<val_partition>/` (default: the train splits).
        test_splits: splits read in order from `root/<test_partition>/` (default: those of the val splits
            that the test partition has, e.g. SyncWorld's `ood` has no `speech_multi`; given: each must exist).
        train_partition: folder under `root` of the training shards.
        val_partition: folder under `root` of the validation shards.
        test_partition: folder under `root` of the test shards (`ood` for SyncWorld's held-out set).
        clip: the clip every sample is cut to (longest duration, largest resolution, fps, sample rate).
        resolutions: extra (height, width) buckets; a video is fit to the bucket nearest its aspect ratio.
        video_codec: frames <-> latents.
        audio_codec: waveform <-> latents.
        text_encoder: captions -> token embeddings.
        batch_size: training samples per batch and process.
        val_batch_size: validation / test samples per batch (default: batch_size).
        num_workers: loader worker processes per training process.
        epoch_samples: training samples per epoch over all ranks and workers.
        shuffle_buffer: samples in each worker's shuffle buffer.
        duration_bucket: latent video frames per duration bucket (same bucket -> same batch).
        normalize: normalise latents per channel with the statistics in `root/stats/`.
        stats_samples: train samples used to compute latent statistics when `root/stats/` lacks them.
        geometry: the codecs' latent geometry, declared so that the model's shape is known without
            loading them (`klear summary` of a config whose weights are not on this machine); checked
            against the codecs when they are loaded, a mismatch naming the field.
        text_dim: the caption encoder's width, declared and checked the same way.
        limits: source media beyond these bounds are skipped.
        seed: seed of the training mixture and shuffling (offset per rank, worker and epoch).
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
        geometry: LatentGeometry | None = None,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.declared_geometry, self.declared_text_dim = geometry, text_dim
        self.clip, self.limits, self.seed = clip, limits, seed
        self.video_codec_cfg, self.audio_codec_cfg, self.text_encoder_cfg = video_codec, audio_codec, text_encoder
        self.train_partition, self.val_partition, self.test_partition = train_partition, val_partition, test_partition
        self.val_splits = list(val_splits) if val_splits is not None else list(train_splits)
        self.test_splits = list(test_splits) if test_splits is not None else None
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.epoch_samples, self.shuffle_buffer = num_workers, epoch_samples, shuffle_buffer
        self.duration_bucket, self.normalize, self.stats_samples = duration_bucket, normalize, stats_samples
        resolutions = list(resolutions or [])
        self._check_config(train_splits, resolutions)
        self.split_names = list(train_splits)
        self.schedule = WeightSchedule(self.split_names)
        self.position = StreamPosition()
        self.set_split_weights(train_splits)
        self.resolutions = [(clip.height, clip.width)] + [
            tuple(r) for r in resolutions if tuple(r) != (clip.height, clip.width)
        ]
        self.skips = SkipCounter()
        self.video_stats: LatentStats | None = None
        self.audio_stats: LatentStats | None = None
        self._train_dataset: MixtureDataset | None = None

    def _check_config(self, train_splits: dict[str, float], resolutions: Any) -> None:
        if not train_splits:
            raise ConfigError("data.train_splits: empty; give at least one split with a positive weight")
        for name, value in (
            ("batch_size", self.batch_size),
            ("val_batch_size", self.val_batch_size),
            ("epoch_samples", self.epoch_samples),
            ("shuffle_buffer", self.shuffle_buffer),
            ("duration_bucket", self.duration_bucket),
        ):
            if value < 1:
                raise ConfigError(f"data.{name}: must be >= 1, got {value}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if self.audio_codec_cfg.name == "logmel" and self.audio_codec_cfg.sample_rate != self.clip.sample_rate:
            raise ConfigError(
                f"data.audio_codec.sample_rate: {self.audio_codec_cfg.sample_rate} must equal data.clip.sample_rate = {self.clip.sample_rate}"
            )
        for r in resolutions:
            if len(r) != 2 or r[0] < 1 or r[1] < 1:
                raise ConfigError(f"data.resolutions: {r!r} is not a (height, width) pair")

    # ------------------------------------------------------------- codecs and geometry
    @cached_property
    def video_codec(self) -> VideoCodec:
        codec = build_video_codec(self.video_codec_cfg)
        self._check_declared(
            "video_codec",
            {
                "video_channels": codec.channels,
                "video_temporal_factor": codec.temporal_factor,
                "video_spatial_factor": codec.spatial_factor,
                "video_causal": codec.causal,
            },
        )
        return codec

    @cached_property
    def audio_codec(self) -> AudioCodec:
        codec = build_audio_codec(self.audio_codec_cfg)
        if codec.sample_rate != self.clip.sample_rate:
            raise ConfigError(
                f"data.clip.sample_rate: {self.clip.sample_rate} differs from the audio codec's {codec.sample_rate} Hz"
            )
        self._check_declared("audio_codec", {"audio_channels": codec.channels, "audio_hop": codec.hop})
        return codec

    @cached_property
    def text_encoder(self) -> HFTextEncoder:
        encoder = build_text_encoder(self.text_encoder_cfg)
        if self.declared_text_dim is not None and self.declared_text_dim != encoder.dim:
            raise ValueError(f"data.text_dim = {self.declared_text_dim} but the text encoder gives {encoder.dim}")
        return encoder

    def _check_declared(self, what: str, actual: dict[str, Any]) -> None:
        if self.declared_geometry is None:
            return
        for name, value in actual.items():
            declared = getattr(self.declared_geometry, name)
            if declared != value:
                raise ValueError(f"data.geometry.{name} = {declared} but the {what} gives {value}")

    @property
    def sequence(self) -> SequenceSpec:
        """Stream lengths of the longest clip (checks that every resolution bucket tiles), from the
        declared `geometry` when there is one (no codec loaded), else from the codecs."""
        geometry = self.declared_geometry or latent_geometry(self.video_codec, self.audio_codec)
        for h, w in self.resolutions:
            SequenceSpec(ClipSpec(self.clip.duration, self.clip.fps, h, w, self.clip.sample_rate), geometry)
        return SequenceSpec(self.clip, geometry)

    @property
    def text_dim(self) -> int:
        """The caption encoder's width: declared (`text_dim`), else the loaded encoder's."""
        return self.declared_text_dim if self.declared_text_dim is not None else self.text_encoder.dim

    def decoders(self) -> Decoders:
        """What KlearModule.generate needs to turn normalised latents into media."""

        def stats(s: LatentStats | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            return (torch.tensor(s.mean), torch.tensor(s.std)) if s is not None else (None, None)

        vm, vs = stats(self.video_stats)
        am, as_ = stats(self.audio_stats)
        return Decoders(
            video_codec=self.video_codec,
            audio_codec=self.audio_codec,
            fps=self.clip.fps,
            sample_rate=self.clip.sample_rate,
            video_mean=vm,
            video_std=vs,
            audio_mean=am,
            audio_std=as_,
        )

    # ------------------------------------------------------------- curriculum and skip counts
    def set_split_weights(self, weights: dict[str, float]) -> None:
        """Change the train mixture; unknown splits are an error. Running workers switch at batch
        `handed out + 2 * num_workers` of the epoch (a fixed point, so a resumed run repeats it)."""
        unknown = set(weights) - set(self.split_names)
        if unknown:
            raise ValueError(
                f"set_split_weights: unknown splits {sorted(unknown)}; train splits are {self.split_names}"
            )
        values = [float(weights.get(s, 0.0)) for s in self.split_names]
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"split weights must be >= 0 with a positive sum, got {weights}")
        p = self.position
        taken = p.resume_at if p.resume_at is not None else p.taken
        self.schedule.change([v / sum(values) for v in values], taken + lookahead(self.num_workers))

    def split_weights(self) -> dict[str, float]:
        """The latest weights (those in force once a pending change is reached)."""
        return dict(zip(self.split_names, self.schedule.latest()))

    def skipped_counts(self) -> dict[str, int]:
        """Skipped samples by reason, summed over every worker of this process."""
        return self.skips.as_dict()

    # ------------------------------------------------------------- resume
    def _consumed(self) -> int:
        """Batches of the current epoch the training loop has taken (the loader may be one ahead)."""
        p = self.position
        if p.resume_at is not None:
            return p.resume_at
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING and p.epoch >= 0:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return p.taken

    def state_dict(self) -> dict[str, Any]:
        """Train-stream position (saved in every Lightning checkpoint)."""
        return {
            "epoch": self.position.epoch,
            "consumed": self._consumed(),
            "schedule": self.schedule.state(),
            "splits": list(self.split_names),
            "num_workers": self.num_workers,
            "world": self._placement().world,
            "skipped": self.skips.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the train stream where `state` was taken: same splits, workers and world size needed.
        Scoring a checkpoint (`klear test` / `validate`) reads no train stream: the state is not used."""
        if self.trainer is not None and self.trainer.state.fn != TrainerFn.FITTING:
            return
        for key, ours in (
            ("splits", self.split_names),
            ("num_workers", self.num_workers),
            ("world", self._placement().world),
        ):
            if state[key] != ours:
                field = {
                    "splits": "data.train_splits",
                    "num_workers": "data.num_workers",
                    "world": "the number of processes",
                }[key]
                raise ValueError(
                    f"cannot resume the train stream: the checkpoint has {key} = {state[key]}, this run has "
                    f"{ours}; resume with the same {field}"
                )
        self.schedule.load(state["schedule"])
        self.skips.load(state["skipped"])
        self.position.epoch, self.position.taken, self.position.resume_at = (
            int(state["epoch"]),
            0,
            int(state["consumed"]),
        )

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
        _ = self.sequence  # every resolution bucket must tile with the codecs before any data is read
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
        return SampleLoader(
            self.clip,
            self.resolutions,
            self.video_codec,
            self.audio_codec,
            self.text_encoder,
            video_stats,
            audio_stats,
            self.limits,
        )

    def train_dataset(self) -> MixtureDataset:
        if self._train_dataset is None:
            shards = {s: self._shards(self.train_partition, s) for s in self.split_names}
            self._train_dataset = MixtureDataset(
                shards,
                self.schedule,
                self._loader(self.video_stats, self.audio_stats),
                self.skips,
                self.batch_size,
                self.epoch_samples,
                self.shuffle_buffer,
                self.duration_bucket,
                self.seed,
                self._placement(),
                self.num_workers,
            )
        return self._train_dataset

    def _dataloader(self, dataset: IterableDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=worker_init,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> MixtureLoader:
        return MixtureLoader(self.train_dataset(), self.position, self.num_workers)

    def _ordered(self, partition: str, splits: list[str]) -> DataLoader:
        shards = [s for split in splits for s in self._shards(partition, split)]
        dataset = OrderedDataset(
            shards,
            self._loader(self.video_stats, self.audio_stats),
            self.skips,
            self.val_batch_size,
            self.duration_bucket,
            self._placement(),
        )
        return self._dataloader(dataset)

    def val_dataloader(self) -> DataLoader:
        return self._ordered(self.val_partition, self.val_splits)

    def test_dataloader(self) -> DataLoader:
        splits = self.test_splits
        if splits is None:
            folder = self.root / self.test_partition
            splits = [s for s in self.val_splits if (split_dir(folder, s) / INDEX).is_file()] or self.val_splits
        return self._ordered(self.test_partition, splits)
