import json
from fractions import Fraction

import av
import numpy as np
import pytest

from klear_lightning.codecs import AudioCodecConfig, VideoCodecConfig, build_audio_codec, build_video_codec, load_stats
from klear_lightning.data.prepare import make_key, prepare
from klear_lightning.data.shards import iter_tar, parse_sample, read_done_keys, read_index
from klear_lightning.errors import ConfigError
from klear_lightning.sequence import ClipSpec


def write_media(path, fmt, vcodec, size, fps, seconds, acodec, rate, pix_fmt="yuv420p", layout="stereo"):
    """A clip with a moving bright bar and a 440 Hz tone, in any container / codec combination."""
    h, w = size
    n = int(fps * seconds)
    with av.open(str(path), mode="w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1001)) if vcodec else None
        if vs is not None:
            vs.height, vs.width, vs.pix_fmt = h, w, pix_fmt
        a_s = c.add_stream(acodec, rate=rate) if acodec else None
        if a_s is not None:
            a_s.layout = layout
        if vs is not None:
            for i in range(n):
                img = np.full((h, w, 3), 30, np.uint8)
                img[:, (i * 3) % w] = 250
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                for p in vs.encode(frame):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if a_s is not None:
            total = int(rate * seconds)
            t = np.arange(total) / rate
            wave = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            chans = 2 if layout == "stereo" else 1
            step = a_s.frame_size or 1024
            for start in range(0, total, step):
                chunk = np.repeat(wave[None, start : start + step], chans, 0)
                fmt_name = a_s.format.name
                data = chunk if fmt_name.endswith("p") else chunk.T.reshape(1, -1)
                if fmt_name.startswith("s16"):
                    data = (data * 32767).astype(np.int16)
                elif fmt_name.startswith("s32"):
                    data = (data * 2**31 * 0.99).astype(np.int32)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt_name, layout=layout)
                frame.sample_rate, frame.pts = rate, start
                for p in a_s.encode(frame):
                    c.mux(p)
            for p in a_s.encode():
                c.mux(p)


def caption(path, text="a bar sweeps across; a steady tone"):
    path.with_suffix(".txt").write_text(text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_media(d / "landscape.mp4", "mp4", "libx264", (30, 48), 12, 2.5, "aac", 44100)
    write_media(
        d / "portrait_odd.mkv", "matroska", "libx264", (57, 31), 10, 1.5, "libmp3lame", 22050, pix_fmt="yuv444p"
    )
    write_media(d / "really_mp4.mkv", "mp4", "libx264", (40, 40), 8, 1.0, "libmp3lame", 16000)
    write_media(d / "webm_named.mp4", "webm", "libvpx", (36, 64), 15, 1.2, "libopus", 48000)
    write_media(d / "pcm.mov", "mov", "mjpeg", (24, 24), 25, 1.0, "pcm_s16le", 8000, pix_fmt="yuvj420p", layout="mono")
    write_media(d / "too_short.mp4", "mp4", "libx264", (32, 32), 8, 0.25, "aac", 16000)
    write_media(d / "silent_film.mp4", "mp4", "libx264", (32, 32), 8, 1.0, None, 0)
    for p in list(d.iterdir()):
        caption(p)
    (d / "garbage.mp4").write_bytes(b"\x00\x01not media" * 100)
    caption(d / "garbage.mp4")
    write_media(d / "uncaptioned.mp4", "mp4", "libx264", (32, 32), 8, 1.0, "aac", 16000)
    return d


def test_prepare_folder_odd_sizes_lying_extensions_and_report(corpus, tmp_path):
    clip = ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000)
    report = prepare(
        corpus, tmp_path, "real", clip=clip, resolutions=[(48, 32), (32, 48)], workers=1, cache=True, maxcount=2
    )
    failed = {f.path.rsplit("/", 1)[-1]: f.reason for f in report.failed}
    assert failed == {
        "garbage.mp4": "undecodable",
        "too_short.mp4": "too_short",
        "silent_film.mp4": "missing_stream",
        "uncaptioned.mp4": "missing_caption",
    }
    assert report.written == 5
    on_disk = json.loads((tmp_path / "train" / "real" / "prepare_report.json").read_text())
    assert on_disk["written"] == 5 and len(on_disk["failed"]) == 4
    samples = {
        r.record["source"].rsplit("/", 1)[-1]: r.to_sample()
        for s in read_index(tmp_path / "train", "real")
        for r in map(lambda raw: parse_sample(raw, s.url.name), iter_tar(s.url))
    }
    assert set(samples) == {"landscape.mp4", "portrait_odd.mkv", "really_mp4.mkv", "webm_named.mp4", "pcm.mov"}
    assert samples["landscape.mp4"].video.shape == (16, 32, 48, 3)
    assert samples["portrait_odd.mkv"].video.shape == (12, 48, 32, 3)
    assert samples["really_mp4.mkv"].video.shape == (8, 32, 32, 3)
    assert samples["webm_named.mp4"].video.shape[1:3] == (32, 48)
    for s in samples.values():
        assert s.sample_rate == 16000 and s.fps == 8.0
        assert abs(s.audio.shape[0] - s.video.shape[0] * 2000) < 2000
        spec = np.abs(np.fft.rfft(s.audio[:4000]))
        assert abs(np.argmax(spec) * 16000 / 4000 - 440) <= 8, s.meta["source"]
    bar = samples["landscape.mp4"].video[3, 16, :, 0].astype(int)
    assert bar.max() - np.median(bar) > 100
    audio, video = build_audio_codec(AudioCodecConfig()), build_video_codec(VideoCodecConfig())
    s = samples["pcm.mov"]
    assert s.arrays[f"latent.{video.name}-{video.version}"].shape == (48, 8, 8, 8)
    assert s.arrays[f"latent.{audio.name}-{audio.version}"].shape[0] == 64
    assert s.arrays["emb.video_text.minilm-0.1.0"].shape[1] == 384
    assert load_stats(tmp_path, audio.name, audio.version).count > 0


def test_prepare_manifest_resumes_with_two_workers(corpus, tmp_path):
    manifest = tmp_path / "list.jsonl"
    rows = [
        {"path": str(corpus / n), "video_caption": "a bar", "audio_caption": "a tone", "transcript": ""}
        for n in ("landscape.mp4", "pcm.mov", "really_mp4.mkv")
    ]
    manifest.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    clip = ClipSpec(duration=1.0)
    first = prepare(manifest, tmp_path / "out", "s", partition="val", clip=clip, workers=1, maxcount=1)
    assert first.written == 2
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    second = prepare(manifest, tmp_path / "out", "s", partition="val", clip=clip, workers=2, maxcount=1)
    assert (second.written, second.already_done) == (1, 2)
    assert [f.reason for f in second.failed] == ["bad_manifest_line"]
    assert read_done_keys(tmp_path / "out" / "val", "s") == {make_key(r["path"]) for r in rows}
    assert sum(s.nsamples for s in read_index(tmp_path / "out" / "val", "s")) == 3


def test_prepare_refuses_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="^inputs: .* is neither a folder nor a JSONL"):
        prepare(tmp_path / "missing", tmp_path, "s", workers=1)
    with pytest.raises(ConfigError, match="^split: split and partition names"):
        prepare(tmp_path, tmp_path, "bad.name", workers=1)
