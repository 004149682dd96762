"""`klear prepare`: real media files + captions -> shards in the project's format.

Inputs: a folder (every file is probed by content; captions come from a sidecar `<file>.json` with
`video_caption`, `audio_caption`, optional `transcript`, or `<file>.txt` used for both captions) or a
JSONL manifest (one object per line: `path` relative to the manifest, the caption fields, optional
`key`, optional `start` / `end` in seconds: that time range of the file, as `klear curate` writes).
Output: `out/<partition>/<split>/` shards. Resumable: keys in `done_keys.txt` are skipped.
Each bad file is listed with its reason in `out/<partition>/<split>/prepare_report.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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
    load_stats,
)
from klear_lightning.data.media import Decoded, MediaError, decode_media, fit_video, nearest_resolution, retime
from klear_lightning.data.schema import AVSample, SampleError, embedding_name, latent_name, stream_texts
from klear_lightning.data.shards import ShardWriter, read_done_keys, split_dir
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import ClipSpec

log = logging.getLogger(__name__)
SIDECARS = (".json", ".txt", ".jsonl")


@dataclass
class Job:
    """One file to prepare; `start` / `end` (s) select a time range of it (`klear curate`'s clips),
    `speaker` its speaker attributes (`klear curate`'s `attributes`; kept as `annotation.speaker`)."""

    path: str
    key: str
    captions: dict[str, str]
    start: float = 0.0
    end: float | None = None
    speaker: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    path: str
    reason: str
    message: str


@dataclass
class PrepareReport:
    out: str
    split: str
    written: int = 0
    already_done: int = 0
    failed: list[Failure] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PrepareSettings:
    clip: ClipSpec
    resolutions: tuple[tuple[int, int], ...]
    min_duration: float
    cache: bool
    video_codec: VideoCodecConfig
    audio_codec: AudioCodecConfig
    text_encoder: TextEncoderConfig


def make_key(rel: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(rel).stem)[:48]
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _captions(record: dict[str, Any], where: str) -> dict[str, str]:
    caps = {k: str(record.get(k, "")).strip() for k in ("video_caption", "audio_caption", "transcript")}
    if not caps["video_caption"] or not caps["audio_caption"]:
        raise SampleError("missing_caption", f"{where}: needs non-empty video_caption and audio_caption")
    return caps


def find_jobs(inputs: Path) -> tuple[list[Job], list[Failure]]:
    """Jobs from a folder (sidecar captions) or a JSONL manifest; files without captions fail here."""
    jobs, failures = [], []
    if inputs.is_file():
        for n, line in enumerate(inputs.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{inputs}:{n}"
            try:
                rec = json.loads(line)
                path = (inputs.parent / rec["path"]).resolve()
                start, end = float(rec.get("start", 0.0)), (float(rec["end"]) if rec.get("end") is not None else None)
                if start < 0 or (end is not None and end <= start):
                    raise ValueError(f"time range start {start} / end {end} is empty or negative")
                speaker = rec.get("attributes") or {}
                if not isinstance(speaker, dict) or not all(isinstance(v, str) for v in speaker.values()):
                    raise ValueError(f"attributes must map names to labels, got {speaker!r}")
                key = rec.get("key") or make_key(str(rec["path"]))
                jobs.append(Job(str(path), key, _captions(rec, where), start, end, speaker))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                failures.append(Failure(where, "bad_manifest_line", f"{where}: {e!r}"))
            except SampleError as e:
                failures.append(Failure(where, e.reason, str(e)))
        return jobs, failures
    if not inputs.is_dir():
        raise ConfigError(f"inputs: {inputs} is neither a folder nor a JSONL manifest")
    for path in sorted(p for p in inputs.rglob("*") if p.is_file() and p.suffix not in SIDECARS):
        rel = str(path.relative_to(inputs))
        try:
            if path.with_name(path.name + ".json").exists() or path.with_suffix(".json").exists():
                side = (
                    path.with_name(path.name + ".json")
                    if path.with_name(path.name + ".json").exists()
                    else path.with_suffix(".json")
                )
                caps = _captions(json.loads(side.read_text()), str(side))
            elif path.with_suffix(".txt").exists():
                text = path.with_suffix(".txt").read_text().strip()
                caps = _captions({"video_caption": text, "audio_caption": text}, str(path.with_suffix(".txt")))
            else:
                raise SampleError(
                    "missing_caption", f"{path}: no caption sidecar ({path.stem}.json or {path.stem}.txt)"
                )
            jobs.append(Job(str(path), make_key(rel), caps))
        except SampleError as e:
            failures.append(Failure(str(path), e.reason, str(e)))
        except json.JSONDecodeError as e:
            failures.append(Failure(str(path), "bad_caption_file", f"{path}: caption sidecar is not JSON: {e}"))
    return jobs, failures


def _time_range(d: Decoded, start: float, end: float | None, name: str) -> Decoded:
    """The frames shown and the samples played from `start` to `end` (s; None: to the end)."""
    t = d.frame_times - d.frame_times[0]
    keep = (t >= start - 1e-6) & (t < (np.inf if end is None else end) - 1e-6)
    first = int(round(start * d.sample_rate))
    audio = d.audio[first : None if end is None else int(round(end * d.sample_rate))]
    if not keep.any() or audio.size == 0:
        raise SampleError("too_short", f"{name}: nothing between {start} s and {end} s")
    return replace(d, video=d.video[keep], frame_times=d.frame_times[keep], audio=audio)


class Preparer:
    """Decodes, fits and (optionally) encodes one file; one per process."""

    def __init__(self, s: PrepareSettings) -> None:
        self.s = s
        self.video_codec = build_video_codec(s.video_codec) if s.cache else None
        self.audio_codec = build_audio_codec(s.audio_codec) if s.cache else None
        self.text_encoder = build_text_encoder(s.text_encoder) if s.cache else None

    def _frames(self, seconds: float) -> int:
        n = int(seconds * self.s.clip.fps + 1e-6)
        if self.video_codec is None:
            return n
        tf = self.video_codec.temporal_factor
        return 1 + (n - 1) // tf * tf if self.video_codec.causal else n // tf * tf

    def __call__(self, job: Job, split: str) -> AVSample:
        c = self.s.clip
        try:
            d = decode_media(Path(job.path), job.path, sample_rate=c.sample_rate)
        except MediaError as e:
            raise SampleError(e.reason, str(e)) from e
        if d.video is None or d.audio is None:
            raise SampleError(
                "missing_stream",
                f"{job.path}: needs both video and audio, has {'video' if d.video is not None else 'audio'} only",
            )
        if job.start > 0 or job.end is not None:
            d = _time_range(d, job.start, job.end, job.path)
        seconds = min(
            c.duration,
            d.audio.shape[0] / c.sample_rate,
            float(d.frame_times[-1] - d.frame_times[0]) + 1.0 / max(d.fps, 1e-3),
        )
        frames = self._frames(seconds)
        if seconds < self.s.min_duration or frames < 1:
            raise SampleError(
                "too_short", f"{job.path}: {seconds:.2f} s is shorter than min_duration {self.s.min_duration}"
            )
        seconds = frames / c.fps
        hop = self.audio_codec.hop if self.audio_codec is not None else 1
        audio = d.audio[: int(round(seconds * c.sample_rate)) // hop * hop]
        video = retime(d.video, d.frame_times, c.fps, frames)
        video = fit_video(video, *nearest_resolution(video.shape[1], video.shape[2], self.s.resolutions))
        annotation = {"speaker": job.speaker} if job.speaker else {}
        meta = {**job.captions, "split": split, "annotation": annotation, "source": job.path}
        sample = AVSample(job.key, video, c.fps, audio.astype(np.float32), c.sample_rate, meta)
        if self.s.cache:
            self._cache(sample)
        sample.validate()
        return sample

    def _cache(self, sample: AVSample) -> None:
        v, a, t = self.video_codec, self.audio_codec, self.text_encoder
        sample.arrays[latent_name(v.name, v.version)] = v.encode(torch.from_numpy(sample.video)[None])[0].numpy()
        sample.arrays[latent_name(a.name, a.version)] = a.encode(torch.from_numpy(sample.audio)[None])[0].numpy()
        for stream, text in stream_texts(sample.meta).items():
            emb, mask = t.encode([text])
            sample.arrays[embedding_name(stream, t.name, t.version)] = emb[0, mask[0]].numpy()


_WORKER: Preparer | None = None


def _init_worker(settings: PrepareSettings) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = Preparer(settings)


def _run(args: tuple[Job, str]) -> tuple[Job, AVSample | None, Failure | None]:
    job, split = args
    try:
        return job, _WORKER(job, split), None
    except SampleError as e:
        return job, None, Failure(job.path, e.reason, str(e))
    except Exception as e:  # a file that breaks a decoder in an unforeseen way must not stop the run
        return job, None, Failure(job.path, "error", f"{job.path}: {type(e).__name__}: {e}")


def _results(
    jobs: list[Job], split: str, settings: PrepareSettings, workers: int
) -> Iterator[tuple[Job, AVSample | None, Failure | None]]:
    if workers <= 1:
        _init_worker(settings)
        yield from map(_run, ((j, split) for j in jobs))
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(settings,)) as pool:
        yield from pool.map(_run, ((j, split) for j in jobs), chunksize=1)


def _accumulator(out: Path, codec: str, version: str) -> StatsAccumulator:
    acc = StatsAccumulator(codec, version)
    old = load_stats(out, codec, version)
    if old is not None:
        mean, std = np.asarray(old.mean), np.asarray(old.std)
        acc.n, acc.s1, acc.s2 = old.count, mean * old.count, (std**2 + mean**2) * old.count
    return acc


def prepare(
    inputs: Path,
    out: Path,
    split: str,
    partition: str = "train",
    clip: ClipSpec = ClipSpec(),
    resolutions: list[tuple[int, int]] | None = None,
    workers: int = 2,
    cache: bool = False,
    video_codec: VideoCodecConfig = VideoCodecConfig(),
    audio_codec: AudioCodecConfig = AudioCodecConfig(),
    text_encoder: TextEncoderConfig = TextEncoderConfig(),
    maxcount: int = 256,
    min_duration: float = 0.5,
) -> PrepareReport:
    """Prepare media files into `out/<partition>/<split>/` shards.

    Args:
        inputs: a folder of media files with caption sidecars, or a JSONL manifest.
        out: dataset root (the DataModule's `root`).
        split: split name (e.g. "sound").
        partition: "train", "val" or "test" (the DataModule's `*_partition`).
        clip: target fps, sample rate, maximum duration and default resolution.
        resolutions: extra (height, width) buckets; each video goes to the one nearest its aspect ratio.
        workers: decoding processes (1 = in this process).
        cache: also store latents, caption embeddings and latent statistics (`root/stats/`).
        video_codec: the video codec whose latents are cached.
        audio_codec: the audio codec whose latents are cached.
        text_encoder: the caption encoder whose embeddings are cached.
        maxcount: samples per shard.
        min_duration: shorter files are skipped (reason `too_short`).
    """
    inputs, out = Path(inputs), Path(out)
    if not re.match(r"^[A-Za-z0-9_-]+$", split) or not re.match(r"^[A-Za-z0-9_-]+$", partition):
        raise ConfigError(f"split: split and partition names must match [A-Za-z0-9_-]+, got {split!r} / {partition!r}")
    buckets = (
        (clip.height, clip.width),
        *(tuple(r) for r in (resolutions or []) if tuple(r) != (clip.height, clip.width)),
    )
    for h, w in buckets:
        if h % 2 or w % 2:
            raise ConfigError(f"resolutions: {h}x{w} must be even (h264 yuv420p)")
    settings = PrepareSettings(clip, buckets, min_duration, cache, video_codec, audio_codec, text_encoder)
    jobs, failures = find_jobs(inputs)
    done = read_done_keys(out / partition, split)
    report = PrepareReport(str(split_dir(out / partition, split)), split, failed=failures)
    todo = [j for j in jobs if j.key not in done]
    report.already_done = len(jobs) - len(todo)
    accs: dict[str, StatsAccumulator] = {}
    with ShardWriter(out / partition, split, maxcount=maxcount) as writer:
        for _job, sample, failure in tqdm(
            _results(todo, split, settings, workers), total=len(todo), desc=f"prepare {split}"
        ):
            if failure is not None:
                report.failed.append(failure)
                log.warning("skipped %s", failure.message)
                continue
            writer.write(sample)
            report.written += 1
            for name, arr in sample.arrays.items():
                if name.startswith("latent."):
                    codec, _, version = name[len("latent.") :].partition("-")
                    accs.setdefault(name, _accumulator(out, codec, version)).update(arr)
    for acc in accs.values():
        report.stats.append(str(acc.result().save(out)))
    path = split_dir(out / partition, split) / "prepare_report.json"
    path.write_text(json.dumps(asdict(report), indent=1))
    return report
