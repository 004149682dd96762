import json
import tarfile

import numpy as np
import pytest

from klear_lightning.data.schema import SampleError
from klear_lightning.data.shards import ShardWriter, iter_tar, parse_sample, read_done_keys, read_index
from tests.helpers.samples import make_sample


def read_all(root, split):
    return [parse_sample(raw, s.url.name) for s in read_index(root, split) for raw in iter_tar(s.url)]


def test_round_trip_audio_exact_video_close_arrays_exact(tmp_path):
    samples = [make_sample(f"k{i}") for i in range(5)]
    with ShardWriter(tmp_path, "sound", maxcount=2) as w:
        for s in samples:
            w.write(s)
    shards = read_index(tmp_path, "sound")
    assert [s.nsamples for s in shards] == [2, 2, 1]
    spec = json.loads((tmp_path / "sound" / "index.json").read_text())
    assert spec["__kind__"] == "wids-shard-index-v1" and spec["shardlist"][0]["url"] == "sound-000000.tar"
    back = [r.to_sample() for r in read_all(tmp_path, "sound")]
    for a, b in zip(samples, back):
        assert a.key == b.key and np.array_equal(a.audio, b.audio) and b.sample_rate == 16000
        assert np.abs(a.video.astype(int) - b.video).mean() < 3.0
        assert b.meta == a.meta and b.fps == 8.0
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            assert np.array_equal(a.arrays[k], b.arrays[k])


def test_same_samples_same_bytes(tmp_path):
    for run in ("a", "b"):
        with ShardWriter(tmp_path / run, "sound") as w:
            for i in range(2):
                w.write(make_sample(f"k{i}"))
    assert (tmp_path / "a/sound/sound-000000.tar").read_bytes() == (tmp_path / "b/sound/sound-000000.tar").read_bytes()


def test_writer_resumes_and_refuses_duplicates(tmp_path):
    with ShardWriter(tmp_path, "s") as w:
        w.write(make_sample("a", "s"))
    with ShardWriter(tmp_path, "s") as w:
        with pytest.raises(ValueError, match="'a' was already written"):
            w.write(make_sample("a", "s"))
        w.write(make_sample("b", "s"))
    assert [s.url.name for s in read_index(tmp_path, "s")] == ["s-000000.tar", "s-000001.tar"]
    assert read_done_keys(tmp_path, "s") == {"a", "b"}


def test_validation_names_the_field():
    with pytest.raises(SampleError, match="video_caption"):
        make_sample("x", video_caption=" ").validate()
    bad = make_sample("x")
    bad.audio = bad.audio[:0]
    with pytest.raises(SampleError, match="empty") as e:
        bad.validate()
    assert e.value.reason == "empty_audio"
    with pytest.raises(SampleError, match="no dots"):
        make_sample("a.b").validate()


def test_reader_refuses_entries_outside_the_schema(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.json", b"{}"), ("k.pyd", b"\x80\x04N.")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    raw = next(iter_tar(path))
    with pytest.raises(SampleError, match=r"\.pyd is not in the schema") as e:
        parse_sample(raw, "evil.tar")
    assert e.value.reason == "unknown_entry"
