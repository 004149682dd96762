"""WebDataset shards: one folder per split, a wids index, and a strict schema-only reader.

Layout under `root/<split>/`:
- `<split>-000000.tar`, ... : tar members `<key>.mp4` (h264), `<key>.flac` (24-bit mono),
  `<key>.json` (the record) and optional `<key>.<array name>.npy` (see schema.py);
- `index.json`: a wids shard index (`__kind__: wids-shard-index-v1`, shard urls relative to it);
- `done_keys.txt`: every key already written, one a line (resumable preparation).
A shard becomes visible (renamed from `.tar.tmp`, added to the index) only once complete.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from klear_lightning.data.media import MediaError, decode_flac, decode_media, encode_flac, encode_video
from klear_lightning.data.schema import AVSample, SampleError, validate_meta

MEDIA_EXTENSIONS: tuple[str, ...] = ("mp4", "flac", "json")
_NPY = re.compile(
    r"^(latent\.[A-Za-z0-9_]+-[A-Za-z0-9_.\-]+|emb\.(video_text|audio_text)\.[A-Za-z0-9_]+-[A-Za-z0-9_.\-]+)\.npy$"
)
INDEX = "index.json"
DONE = "done_keys.txt"


@dataclass
class ShardInfo:
    url: Path
    nsamples: int


@dataclass
class ShardRecord:
    """One sample as stored: raw media bytes, the JSON record and decoded cached arrays."""

    key: str
    shard: str
    record: dict[str, Any]
    mp4: bytes
    flac: bytes
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"shard {self.shard} key {self.key!r}"

    def audio(self) -> tuple[np.ndarray, int]:
        if not self.flac:
            raise SampleError("empty_audio", f"{self.where}: .flac entry is empty")
        if not self.flac.startswith(b"fLaC"):
            raise SampleError("mislabelled_container", f"{self.where}: .flac entry is not FLAC")
        try:
            return decode_flac(self.flac, self.where)
        except MediaError as e:
            raise SampleError(e.reason, str(e)) from e

    def video(self) -> tuple[np.ndarray, float]:
        try:
            d = decode_media(self.mp4, self.where, audio=False)
        except MediaError as e:
            raise SampleError("truncated" if e.reason in ("undecodable", "truncated") else e.reason, str(e)) from e
        if "mp4" not in d.container.split(","):
            raise SampleError("mislabelled_container", f"{self.where}: .mp4 entry is a {d.container!r} container")
        if d.video is None:
            raise SampleError("truncated", f"{self.where}: .mp4 entry has no video stream")
        return d.video, d.fps

    def to_sample(self) -> AVSample:
        video, fps = self.video()
        audio, sr = self.audio()
        meta = {k: v for k, v in self.record.items() if k not in ("key", "duration", "fps", "sample_rate")}
        sample = AVSample(self.key, video, fps, audio, sr, meta, dict(self.arrays))
        sample.validate()
        return sample


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def parse_sample(raw: dict[str, bytes], shard: str) -> ShardRecord:
    """Turn a grouped tar sample into a ShardRecord, accepting only the schema's entries."""
    key = raw.get("__key__", "?")
    where = f"shard {shard} key {key!r}"
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    for ext in members:
        if ext not in MEDIA_EXTENSIONS and not _NPY.match(ext):
            raise SampleError(
                "unknown_entry", f"{where}: entry .{ext} is not in the schema (mp4, flac, json, latent/emb .npy)"
            )
    for ext in MEDIA_EXTENSIONS:
        if ext not in members:
            raise SampleError("missing_caption" if ext == "json" else "missing_entry", f"{where}: no .{ext} entry")
    try:
        record = json.loads(members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError("bad_meta", f"{where}: .json entry is not valid JSON: {e}") from e
    validate_meta(record, where)
    arrays = {}
    for ext, data in members.items():
        if ext.endswith(".npy"):
            try:
                arr = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as e:
                raise SampleError("bad_array", f"{where}: .{ext} is not a plain numpy array: {e}") from e
            if arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise SampleError("nan_latent", f"{where}: .{ext} is not finite float data")
            arrays[ext[: -len(".npy")]] = arr
    return ShardRecord(key, shard, record, members["mp4"], members["flac"], arrays)


def split_dir(root: Path, split: str) -> Path:
    return Path(root) / split


def read_index(root: Path, split: str) -> list[ShardInfo]:
    """The shards of one split from its wids index; a missing index is a clear error."""
    path = split_dir(root, split) / INDEX
    if not path.exists():
        raise FileNotFoundError(
            f"split {split!r}: no shard index at {path} (write shards with ShardWriter or `klear prepare`)"
        )
    spec = json.loads(path.read_text())
    if spec.get("__kind__") != "wids-shard-index-v1":
        raise ValueError(f"{path}: not a wids-shard-index-v1 file")
    return [ShardInfo(path.parent / s["url"], int(s["nsamples"])) for s in spec["shardlist"]]


def read_done_keys(root: Path, split: str) -> set[str]:
    path = split_dir(root, split) / DONE
    return set(path.read_text().split()) if path.exists() else set()


def iter_tar(path: Path):
    """Yield grouped samples (dict ext -> bytes, plus __key__) from one tar, in order."""
    current: dict[str, Any] = {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current.setdefault("__key__", key)
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


class ShardWriter:
    """Write AVSamples to `out_dir/<split>/` shards; resumes numbering and refuses duplicate keys.

    Use as a context manager: `with ShardWriter(out, "train") as w: w.write(sample)`.
    """

    def __init__(self, out_dir: Path, split: str, maxcount: int = 256, crf: int = 12) -> None:
        if maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {maxcount}")
        self.dir = split_dir(out_dir, split)
        self.split, self.maxcount, self.crf = split, maxcount, crf
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards = read_index(out_dir, split) if (self.dir / INDEX).exists() else []
        self.done = read_done_keys(out_dir, split)
        self._tar: tarfile.TarFile | None = None
        self._pending: list[str] = []
        self.written = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_path(self) -> Path:
        return self.dir / f"{self.split}-{len(self.shards):06d}.tar"

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: AVSample) -> None:
        sample.validate()
        if sample.key in self.done or sample.key in self._pending:
            raise ValueError(f"split {self.split!r}: key {sample.key!r} was already written")
        if self._tar is None:
            self._tar = tarfile.open(self._next_path().with_suffix(".tar.tmp"), mode="w", format=tarfile.USTAR_FORMAT)
        self._add(f"{sample.key}.mp4", encode_video(sample.video, sample.fps, self.crf))
        self._add(f"{sample.key}.flac", encode_flac(sample.audio, sample.sample_rate))
        self._add(f"{sample.key}.json", json.dumps(sample.record(), sort_keys=True).encode())
        for name in sorted(sample.arrays):
            self._add(f"{sample.key}.{name}.npy", npy_bytes(sample.arrays[name]))
        self._pending.append(sample.key)
        self.written += 1
        if len(self._pending) >= self.maxcount:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        path = self._next_path()
        path.with_suffix(".tar.tmp").rename(path)
        self.shards.append(ShardInfo(path, len(self._pending)))
        self._write_index()
        with open(self.dir / DONE, "a") as f:
            f.writelines(k + "\n" for k in self._pending)
        self.done.update(self._pending)
        self._tar, self._pending = None, []

    def _write_index(self) -> None:
        spec = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": self.split,
            "shardlist": [{"url": s.url.name, "nsamples": s.nsamples} for s in self.shards],
        }
        tmp = self.dir / (INDEX + ".tmp")
        tmp.write_text(json.dumps(spec, indent=1))
        tmp.replace(self.dir / INDEX)

    def close(self) -> None:
        self._finish_shard()
        if not (self.dir / INDEX).exists():
            self._write_index()
