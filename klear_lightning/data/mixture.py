"""The resumable training stream: a weighted mixture over split folders.

Every batch of an epoch is a pure function of (seed, epoch, rank, logical worker, batch index) and
of the split-weight schedule. A logical worker owns batches `lw, lw + W, lw + 2W, ...` of its
rank's epoch (W DataLoader workers); it draws samples from per-split endless streams over
resampled shards (shards drawn with replacement, then a shuffle buffer), each sample's split drawn
by the weights in force for the batch being built, and buckets them into batches.

Resuming at batch `start` of an epoch: DataLoader worker `w` plays logical worker `(w + start) % W`
(the loader hands batches out round-robin from worker 0, so the order is the uninterrupted one)
and regenerates, without collating or counting skips, the batches before `start`.

Split-weight changes are scheduled by batch index: a change made when the loader has handed out
`taken` batches of the epoch applies from batch `taken + lookahead`, where `lookahead` is how far
DataLoader workers can be ahead (prefetch_factor * workers). No worker can have started that batch
yet, so the switch point does not depend on timing and a resumed run replays it exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from klear_lightning.data.collate import LatentSample, collate
from klear_lightning.data.pipeline import SampleLoader, SkipCounter, bucketed_groups, load_or_skip, records
from klear_lightning.data.shards import ShardInfo
from klear_lightning.streams import AVBatch

MAX_CONSECUTIVE_SKIPS = 1000
MAX_WEIGHT_CHANGES = 1024  # split-weight changes within one epoch
PREFETCH_FACTOR = 2


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


class WeightSchedule:
    """Split weights by batch index within the current epoch, in shared memory (read by running workers).

    Rows are (first batch index, weight per split), first indices increasing; the weights of batch b
    are those of the last row whose first index is <= b.
    """

    def __init__(self, splits: list[str]) -> None:
        self.splits = list(splits)
        self.rows = torch.zeros(MAX_WEIGHT_CHANGES, 1 + len(splits), dtype=torch.float64).share_memory_()
        self.count = torch.zeros(1, dtype=torch.int64).share_memory_()

    def weights_at(self, batch: int) -> list[float]:
        rows = self.rows[: int(self.count)]
        index = int((rows[:, 0] <= batch).sum()) - 1
        return rows[max(index, 0), 1:].tolist()

    def latest(self) -> list[float]:
        return self.rows[int(self.count) - 1, 1:].tolist()

    def change(self, weights: list[float], first_batch: int) -> None:
        """Schedule `weights` from `first_batch` on (the first call sets the weights from batch 0)."""
        n = int(self.count)
        if n and weights == self.latest():
            return
        if n >= MAX_WEIGHT_CHANGES:
            raise RuntimeError(
                f"more than {MAX_WEIGHT_CHANGES} split-weight changes within one epoch; lower data.epoch_samples"
            )
        first = float(max(first_batch, self.rows[n - 1, 0].item())) if n else 0.0
        self.rows[n] = torch.tensor([first, *weights], dtype=torch.float64)
        self.count[0] = n + 1  # written after the row: a worker never reads a half-written row

    def restart(self) -> None:
        """At an epoch start (no worker running): the latest weights from batch 0."""
        self.load([[0.0, *self.latest()]])

    def state(self) -> list[list[float]]:
        return self.rows[: int(self.count)].tolist()

    def load(self, rows: list[list[float]]) -> None:
        if not rows or len(rows) > MAX_WEIGHT_CHANGES or any(len(r) != 1 + len(self.splits) for r in rows):
            raise ValueError(
                f"a weight schedule has 1 to {MAX_WEIGHT_CHANGES} rows of {1 + len(self.splits)} numbers, got {rows}"
            )
        self.rows[: len(rows)] = torch.tensor(rows, dtype=torch.float64)
        self.count[0] = len(rows)


@dataclass
class StreamPosition:
    """Main-process position of the train stream: the epoch being read and the batches handed out
    in it; `resume_at` (from a checkpoint) makes the next iterator continue that epoch there."""

    epoch: int = -1
    taken: int = 0
    resume_at: int | None = None


class MixtureDataset(IterableDataset):
    """Weighted mixture over splits; one iteration is one epoch of `batches_per_epoch` AVBatches per rank."""

    def __init__(
        self,
        shards: dict[str, list[ShardInfo]],
        schedule: WeightSchedule,
        loader: SampleLoader,
        skips: SkipCounter,
        batch_size: int,
        epoch_samples: int,
        shuffle_buffer: int,
        duration_bucket: int,
        seed: int,
        placement: Placement,
        workers: int,
    ) -> None:
        self.splits = list(shards)
        self.shards, self.schedule, self.loader, self.skips = shards, schedule, loader, skips
        self.batch_size, self.shuffle_buffer, self.duration_bucket = batch_size, shuffle_buffer, duration_bucket
        self.seed, self.placement, self.workers = seed, placement, max(workers, 1)
        per_worker = max(1, epoch_samples // (batch_size * placement.world * self.workers))
        self.batches_per_epoch = per_worker * self.workers
        self.cursor = torch.zeros(2, dtype=torch.int64).share_memory_()  # (epoch, start batch), set by the main process

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
                raise RuntimeError(
                    f"split {split!r}: no readable sample in {empty_shards} shard reads; skipped so far: {self.skips.as_dict()}"
                )

    def draws(self, rng: random.Random, weights: Callable[[], list[float]]) -> Iterator[Any]:
        """Endless raw records, each from a split drawn with `weights()` at the time of the draw."""
        streams = {s: self._split_stream(s, random.Random(rng.random())) for s in self.splits}
        while True:
            split = rng.choices(self.splits, weights=weights())[0]
            yield next(streams[split])

    def _samples(self, rng: random.Random, weights: Callable[[], list[float]]) -> Iterator[LatentSample]:
        failures = 0
        for rec in self.draws(rng, weights):
            sample = load_or_skip(self.loader, rec, self.skips)
            if sample is not None:
                failures = 0
                yield sample
            elif (failures := failures + 1) >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(
                    f"{failures} samples in a row were skipped; the data is unusable: {self.skips.as_dict()}"
                )

    def __iter__(self) -> Iterator[AVBatch]:
        wid, nw = self.placement.worker()
        epoch, start = self.cursor.tolist()
        logical = (wid + start) % nw
        rng = random.Random(hash((self.seed, self.placement.rank * nw + logical, epoch)))
        building = [logical]  # index of the batch whose samples are being drawn
        groups = bucketed_groups(
            self._samples(rng, lambda: self.schedule.weights_at(building[0])),
            self.batch_size,
            self.duration_bucket,
            drop_last=True,
        )
        try:
            for index in range(logical, self.batches_per_epoch, nw):
                building[0] = index
                self.skips.quiet = index < start  # replayed batches were counted before the checkpoint
                group = next(groups)
                if index >= start:
                    yield collate(group)
        finally:
            self.skips.quiet = False


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


class MixtureLoader(DataLoader):
    """DataLoader over a MixtureDataset that starts each epoch (or the resumed one) and counts the
    batches it hands out, in the main process."""

    def __init__(self, dataset: MixtureDataset, position: StreamPosition, num_workers: int) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            worker_init_fn=worker_init,
            persistent_workers=num_workers > 0,
            prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
        )
        self.position = position

    def _begin_epoch(self) -> None:
        dataset, p = self.dataset, self.position
        if p.resume_at is not None and p.resume_at < dataset.batches_per_epoch:
            start = p.resume_at
        else:
            p.epoch, start = p.epoch + 1, 0
            dataset.schedule.restart()
        p.resume_at, p.taken = None, start
        dataset.cursor.copy_(torch.tensor([p.epoch, start]))

    def __iter__(self) -> Iterator[AVBatch]:
        self._begin_epoch()
        for batch in super().__iter__():
            self.position.taken += 1
            yield batch


def lookahead(num_workers: int) -> int:
    """How many batches beyond those handed out DataLoader workers may already be building."""
    return PREFETCH_FACTOR * num_workers
