"""Exact SyncWorld metrics: near-perfect on real clips (after the mp4/flac round trip), degrading by
the known amount on shifted, swapped, mirrored or transposed clips; helper formulas on known inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample

from klear_lightning.data.shards import iter_tar, parse_sample, read_index
from klear_lightning.data.syncworld import generate_syncworld
from klear_lightning.data.syncworld.measure import (
    estimate_f0,
    event_lag,
    lag_correlations,
    sequence_similarity,
    visual_events,
)
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import REGISTRY, BuildContext, MetricUndefined
from klear_lightning.metrics.syncworld import (
    SyncWorldColourAdherence,
    SyncWorldEventOffset,
    SyncWorldLipSync,
    SyncWorldPitchAdherence,
    SyncWorldSpeakerTurns,
)

HAS_FLITE = shutil.which("flite") is not None
flite = pytest.mark.skipif(not HAS_FLITE, reason="flite is not on PATH")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, list[MediaClip]]:
    """Decoded train clips per split, read back from real shards."""
    out: Path = tmp_path_factory.mktemp("syncworld")
    splits = ["sound", "singing"] + (["speech_single", "speech_multi"] if HAS_FLITE else [])
    generate_syncworld(out, clips_per_split=8, seed=1, splits=splits)
    return {
        split: [
            parse_sample(raw, info.url.name).to_sample().to_clip()
            for info in read_index(out / "train", split)
            for raw in iter_tar(info.url)
        ]
        for split in splits
    }


def shift_audio(clip: MediaClip, frames: int) -> MediaClip:
    """Delay (frames > 0) or advance (frames < 0) the audio by whole video frames."""
    d = int(round(abs(frames) * clip.sample_rate / clip.fps))
    pad = torch.zeros(d)
    audio = torch.cat([pad, clip.audio[:-d]]) if frames > 0 else torch.cat([clip.audio[d:], pad])
    return MediaClip(clip.video, clip.fps, audio, clip.sample_rate, clip.meta)


def score(metric, clips: list[MediaClip]) -> dict[str, float]:
    metric.update(clips)
    return {k: r.value for k, r in metric.results().items()}


def test_event_offset_exact_on_real_clips(clips):
    sound = clips["sound"]
    for clip in sound:  # the detector recovers the ground truth from decoded pixels
        measured = visual_events(clip.video.numpy().astype(np.float32), clip.fps, clip.meta["annotation"])
        np.testing.assert_allclose(measured, clip.meta["annotation"]["event_times"])
    got = score(SyncWorldEventOffset(), sound)
    assert got["sync_offset_ms_syncworld"] == pytest.approx(0.0, abs=5.0)
    assert got["sync_event_match_syncworld"] == 1.0


@pytest.mark.parametrize("frames", [3, -2])
def test_event_offset_reads_the_shift(clips, frames):
    expected_ms = frames * 1000 / clips["sound"][0].fps
    got = score(SyncWorldEventOffset(), [shift_audio(c, frames) for c in clips["sound"]])
    assert got["sync_offset_signed_ms_syncworld"] == pytest.approx(expected_ms, abs=5.0)
    assert got["sync_offset_ms_syncworld"] == pytest.approx(abs(expected_ms), abs=5.0)
    assert got["sync_offset_median_ms_syncworld"] == pytest.approx(abs(expected_ms), abs=5.0)


def test_event_offset_median_is_the_typical_clip(clips):
    """Five clips in sync and three with a still picture (nothing detected, scored 750 ms): the mean
    is pulled up by the three, the median is the in-sync majority."""
    sound = clips["sound"]
    still = [
        MediaClip(c.video[:1].expand_as(c.video).clone(), c.fps, c.audio, c.sample_rate, c.meta) for c in sound[5:8]
    ]
    got = score(SyncWorldEventOffset(), sound[:5] + still)
    assert got["sync_offset_median_ms_syncworld"] == pytest.approx(0.0, abs=5.0)
    assert got["sync_offset_ms_syncworld"] == pytest.approx(3 * 750.0 / 8, abs=5.0)


def test_lip_sync_singing_real_and_shifted(clips):
    real = score(SyncWorldLipSync(), clips["singing"])
    assert real["lipsync_corr_syncworld"] > 0.95 and real["lipsync_lag_ms_syncworld"] == 0.0
    shifted = score(SyncWorldLipSync(), [shift_audio(c, 3) for c in clips["singing"]])
    assert shifted["lipsync_lag_ms_syncworld"] == pytest.approx(375.0)
    assert shifted["lipsync_corr_syncworld"] < 0.5


@pytest.mark.flite
@flite
def test_lip_sync_speech_real_and_shifted(clips):
    speech = clips["speech_single"] + clips["speech_multi"]
    real = score(SyncWorldLipSync(), speech)
    assert real["lipsync_corr_syncworld"] > 0.9 and real["lipsync_lag_ms_syncworld"] == 0.0
    for frames in (3, -2):
        shifted = score(SyncWorldLipSync(), [shift_audio(c, frames) for c in speech])
        assert shifted["lipsync_lag_ms_syncworld"] == pytest.approx(abs(frames) * 125.0)
        assert shifted["lipsync_corr_syncworld"] < 0.6


@pytest.mark.flite
@flite
def test_speaker_turns_real_and_mirrored(clips):
    multi = clips["speech_multi"]
    assert score(SyncWorldSpeakerTurns(), multi)["speaker_turn_acc_syncworld"] == 1.0
    mirrored = [MediaClip(torch.flip(c.video, dims=[2]), c.fps, c.audio, c.sample_rate, c.meta) for c in multi]
    assert score(SyncWorldSpeakerTurns(), mirrored)["speaker_turn_acc_syncworld"] == 0.0


def test_colour_adherence_real_and_swapped(clips):
    sound = clips["sound"]
    assert score(SyncWorldColourAdherence(), sound)["colour_acc_syncworld"] == 1.0
    colours = [{o["colour"] for o in c.meta["annotation"]["objects"]} for c in sound]
    pairs = [(a, b) for a in range(len(sound)) for b in range(len(sound)) if not colours[a] & colours[b]]
    assert pairs
    swapped = [MediaClip(sound[b].video, 8.0, sound[a].audio, 16000, sound[a].meta) for a, b in pairs]
    assert score(SyncWorldColourAdherence(), swapped)["colour_acc_syncworld"] == 0.0


def test_pitch_adherence_real_transposed_and_swapped(clips):
    assert score(SyncWorldPitchAdherence(), clips["sound"] + clips["singing"])["pitch_acc_syncworld"] == 1.0
    up = 2 ** (2 / 12)  # two semitones sharp: every named note is missed
    transposed = []
    for c in clips["singing"]:
        wave = resample(c.audio.numpy(), int(round(c.audio.shape[0] / up)))
        wave = np.concatenate([wave, np.zeros(c.audio.shape[0] - wave.size)]).astype(np.float32)
        transposed.append(MediaClip(c.video, c.fps, torch.from_numpy(wave), c.sample_rate, c.meta))
    assert score(SyncWorldPitchAdherence(), transposed)["pitch_acc_syncworld"] == 0.0
    single = [c for c in clips["sound"] if len(c.meta["annotation"]["objects"]) == 1]
    hz = [c.meta["annotation"]["objects"][0]["pitch_hz"] for c in single]
    pairs = [(a, b) for a in range(len(single)) for b in range(len(single)) if abs(12 * np.log2(hz[a] / hz[b])) > 1]
    assert pairs
    swapped = [MediaClip(single[a].video, 8.0, single[b].audio, 16000, single[a].meta) for a, b in pairs]
    assert score(SyncWorldPitchAdherence(), swapped)["pitch_acc_syncworld"] == 0.0


def test_metrics_score_only_their_splits_and_refuse_when_empty(clips):
    metric = SyncWorldEventOffset()
    metric.update(clips["singing"])
    assert int(metric.n) == 0
    with pytest.raises(MetricUndefined, match="sound"):
        metric.compute()
    metric.update(clips["sound"][:3])
    assert int(metric.n) == 3
    meta = {"split": "sound", "key": "k1", "annotation": {}}
    broken = MediaClip(clips["sound"][0].video, 8.0, clips["sound"][0].audio, 16000, meta)
    with pytest.raises(ValueError, match="'k1'.*annotation has no 'event'"):
        SyncWorldEventOffset().update([broken])


def test_registered_by_name():
    ctx = BuildContext.create({})
    for name, cls in [
        ("sync_offset_syncworld", SyncWorldEventOffset),
        ("lipsync_syncworld", SyncWorldLipSync),
        ("speaker_turns_syncworld", SyncWorldSpeakerTurns),
        ("colour_syncworld", SyncWorldColourAdherence),
        ("pitch_syncworld", SyncWorldPitchAdherence),
    ]:
        assert isinstance(REGISTRY[name].build(ctx), cls)


def test_event_lag_formula():
    visual = np.array([0.25, 0.625, 1.375])
    lag, matched = event_lag(visual, visual + 0.2, duration=2.0, tolerance=0.0625, max_lag=0.75)
    assert lag == pytest.approx(0.2) and matched == 1.0
    # periodic events: the lag that leaves no onset or event unexplained wins, not the smallest one
    visual = np.array([0.5, 1.125, 1.75])
    lag, _ = event_lag(visual, np.array([0.875, 1.5]), duration=2.0, tolerance=0.0625, max_lag=0.75)
    assert lag == pytest.approx(0.375)


def test_lag_correlation_and_sequence_formulas():
    rng = np.random.default_rng(0)
    mouth = rng.random(40)
    envelope = np.roll(mouth, 3)  # audio 3 frames late
    corr = lag_correlations(mouth, envelope, 4)
    assert max(corr, key=corr.get) == 3 and corr[3] == pytest.approx(1.0)
    assert sequence_similarity(["left", "right"], ["left", "right"]) == 1.0
    assert sequence_similarity(["right", "left"], ["left", "right"]) == 0.0
    assert sequence_similarity(["left"], ["left", "right", "left"]) == pytest.approx(1 / 3)
    t = np.arange(4000) / 16000
    tone = np.sin(2 * np.pi * 261.63 * t) + 0.5 * np.sin(2 * np.pi * 523.26 * t)
    assert estimate_f0(tone, 16000) == pytest.approx(261.63, rel=0.005)


def test_lip_sync_on_clips_resized_like_the_datamodule(clips):
    """Annotation boxes are drawn at `frame_size`; metrics rescale them to the video they get."""
    from klear_lightning.data.media import fit_video

    small = [
        MediaClip(torch.from_numpy(fit_video(c.video.numpy(), 32, 32)), c.fps, c.audio, c.sample_rate, c.meta)
        for c in clips["singing"]
    ]
    got = score(SyncWorldLipSync(), small)
    assert got["lipsync_corr_syncworld"] > 0.95 and got["lipsync_lag_ms_syncworld"] == 0.0


def test_event_offset_survives_the_default_codecs(clips):
    """The demo scores clips decoded by the weight-free codecs (log-mel + Griffin-Lim audio, pixel
    patches video): the offset must stay well inside one frame there too."""
    from klear_lightning.codecs import AudioCodecConfig, VideoCodecConfig, build_audio_codec, build_video_codec

    audio_codec, video_codec = build_audio_codec(AudioCodecConfig()), build_video_codec(VideoCodecConfig())
    decoded = []
    for c in clips["sound"]:
        wave = audio_codec.decode(audio_codec.encode(c.audio[None]))[0].clamp(-1, 1)
        wave = torch.cat([wave, torch.zeros(c.audio.shape[0] - wave.shape[0])])
        frames = video_codec.decode(video_codec.encode(c.video[None]))[0]
        decoded.append(MediaClip(frames, c.fps, wave, c.sample_rate, c.meta))
    got = score(SyncWorldEventOffset(), decoded)
    assert got["sync_offset_ms_syncworld"] < 125.0 / 4
    assert got["sync_event_match_syncworld"] == 1.0
    shifted = score(SyncWorldEventOffset(), [shift_audio(c, 3) for c in decoded])
    assert shifted["sync_offset_signed_ms_syncworld"] == pytest.approx(375.0, abs=125.0 / 4)
