"""SyncWorld generator: determinism, measured sync after the mp4/flac round trip, hold-out, captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from klear_lightning.data.shards import iter_tar, parse_sample, read_index
from klear_lightning.data.syncworld import (
    PARTITIONS,
    SPLITS,
    FliteMissingError,
    HoldoutRule,
    SceneScale,
    SyncWorldConfig,
    generate_syncworld,
    make_clip,
)
from klear_lightning.data.syncworld.captions import note_name, pitch_word
from klear_lightning.data.syncworld.measure import audio_onsets, lip_sync, visual_events
from klear_lightning.data.syncworld.scenes import MATERIAL_ADJECTIVE, object_pitch

HAS_FLITE = shutil.which("flite") is not None


def read_split(root: Path, partition: str, split: str):
    """Decoded samples of one split, read back from the shards."""
    return [
        parse_sample(raw, info.url.name).to_sample()
        for info in read_index(root / partition, split)
        for raw in iter_tar(info.url)
    ]


def tar_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


@pytest.fixture(scope="module")
def sound_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sound")
    generate_syncworld(out, clips_per_split=16, seed=3, splits=["sound", "singing"])
    return out


def test_same_seed_same_bytes_different_seed_different_clips(tmp_path):
    splits = list(SPLITS) if HAS_FLITE else ["sound", "singing"]
    a = generate_syncworld(tmp_path / "a", clips_per_split=2, seed=7, splits=splits)
    b = generate_syncworld(tmp_path / "b", clips_per_split=2, seed=7, splits=splits)
    c = generate_syncworld(tmp_path / "c", clips_per_split=2, seed=8, splits=splits)
    assert a["digest"] == b["digest"] != c["digest"]
    files_a, files_b, files_c = tar_bytes(tmp_path / "a"), tar_bytes(tmp_path / "b"), tar_bytes(tmp_path / "c")
    assert files_a and files_a == files_b
    assert all(files_a[name] != files_c[name] for name in files_a)


def test_layout_partitions_and_counts(sound_world):
    for partition in PARTITIONS:
        for split in ("sound", "singing"):
            samples = read_split(sound_world, partition, split)
            assert len(samples) == (16 if partition == "train" else 2)
            assert all(s.meta["split"] == split and s.meta["annotation"]["partition"] == partition for s in samples)
            assert all(s.meta["source"] == "syncworld" for s in samples)


def test_sound_events_within_one_frame_on_decoded_media(sound_world):
    """Audio onsets and visual events measured on the decoded mp4 / flac, not read from the annotation."""
    samples = read_split(sound_world, "train", "sound")
    kinds = set()
    for sample in samples:
        clip = sample.to_clip()
        kinds.add(sample.meta["annotation"]["event"])
        visual = visual_events(clip.video.numpy().astype(np.float32), clip.fps, sample.meta["annotation"])
        onsets = audio_onsets(clip.audio.numpy().astype(np.float64), clip.sample_rate)
        assert visual.size == onsets.size == len(sample.meta["annotation"]["event_times"]), sample.key
        assert np.all(np.abs(visual - onsets) < 1.0 / clip.fps), (sample.key, visual, onsets)
    assert kinds == {"bounce", "collision", "flash"}


def test_holdout_combinations_only_in_ood(sound_world):
    rule = HoldoutRule()
    cfg = SyncWorldConfig()
    drawn = [make_clip("sound", "train", i, 0, cfg, rule).attributes for i in range(150)]
    assert not any(rule.matches("sound", a) for a in drawn)
    assert any(a["colour"] == "red" and a["size"] == "large" for a in drawn)  # only the full combo is withheld
    for partition in ("train", "val", "test"):
        for split in ("sound", "singing"):
            for s in read_split(sound_world, partition, split):
                assert not rule.matches(split, s.meta["annotation"]["attributes"]), s.key
    for split in ("sound", "singing"):
        ood = read_split(sound_world, "ood", split)
        assert ood and all(rule.matches(split, s.meta["annotation"]["attributes"]) for s in ood)


def test_bad_holdout_and_config_fail_early(tmp_path):
    with pytest.raises(ValueError, match="split"):
        HoldoutRule(({"colour": "red"},))
    with pytest.raises(ValueError, match="color='red' is not an attribute of split 'sound'"):
        HoldoutRule(({"split": "sound", "color": "red"},))
    with pytest.raises(ValueError, match="fps"):
        SyncWorldConfig(fps=1)
    with pytest.raises(ValueError, match="splits"):
        generate_syncworld(tmp_path, 1, splits=["dance"])
    with pytest.raises(ValueError, match="size"):
        generate_syncworld(tmp_path, 1, splits=["sound"], size=40)
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite_and_records_a_summary(tmp_path):
    summary = generate_syncworld(tmp_path, 1, seed=2, splits=["sound"], holdout=[])
    assert summary["clips"] == {"train": {"sound": 1}, "val": {"sound": 1}, "test": {"sound": 1}}
    assert json.loads((tmp_path / "syncworld.json").read_text()) == summary
    with pytest.raises(FileExistsError, match="already holds SyncWorld"):
        generate_syncworld(tmp_path, 1, seed=2, splits=["sound"])


def test_sound_captions_name_attributes():
    cfg, rule = SyncWorldConfig(), HoldoutRule()
    for i in range(20):
        clip = make_clip("sound", "train", i, 1, cfg, rule)
        for obj in clip.annotation["objects"]:
            for word in (obj["colour"], obj["size"], obj["shape"], MATERIAL_ADJECTIVE[obj["material"]]):
                assert word in clip.video_caption
            assert pitch_word(object_pitch(obj["size"], obj["shape"])) in clip.audio_caption
        assert clip.transcript == ""


def test_singing_pitch_in_annotation_and_caption():
    clip = make_clip("singing", "train", 0, 0, SyncWorldConfig(), HoldoutRule())
    notes = clip.annotation["notes"]
    assert len(notes) == 3
    for note in notes:
        assert note_name(note["midi"]) in clip.audio_caption
        i0, i1 = int(note["start"] * clip.sample_rate), int(note["end"] * clip.sample_rate)
        seg = clip.audio[i0 + (i1 - i0) // 4 : i1 - (i1 - i0) // 4].astype(np.float64)
        spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size), 8 * seg.size))
        freqs = np.fft.rfftfreq(8 * seg.size, 1 / clip.sample_rate)
        harmonic = spec[np.argmin(np.abs(freqs - note["pitch_hz"]))]
        assert harmonic > 0.2 * spec.max()  # the named pitch is a strong component of the note


def test_missing_flite_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FliteMissingError, match="flite"):
        generate_syncworld(tmp_path, 1, splits=["sound", "speech_single"])
    assert not any(tmp_path.iterdir())


@pytest.mark.flite
@pytest.mark.skipif(not HAS_FLITE, reason="flite is not on PATH")
def test_flite_speech_is_deterministic_and_follows_the_voice():
    """Same text and voice, same samples from a fresh flite call (not the memo); pitch and pace
    change the speech the way the caption says."""
    from klear_lightning.data.syncworld.measure import dominant_pitch
    from klear_lightning.data.syncworld.speech import _flite, synthesise

    voice = {"gender": "female", "pitch": "low", "pace": "slow"}
    first = synthesise("the weather is cold", voice, 16000)
    _flite.cache_clear()
    assert np.array_equal(first, synthesise("the weather is cold", voice, 16000))
    high = synthesise("the weather is cold", {**voice, "pitch": "high"}, 16000)
    fast = synthesise("the weather is cold", {**voice, "pace": "fast"}, 16000)
    assert dominant_pitch(high, 16000) > 1.2 * dominant_pitch(first, 16000)
    assert fast.size < 0.85 * first.size


@pytest.mark.flite
@pytest.mark.skipif(not HAS_FLITE, reason="flite is not on PATH")
def test_speech_clips_captions_transcripts_and_turns():
    cfg, rule = SyncWorldConfig(), HoldoutRule()
    single = make_clip("speech_single", "train", 0, 0, cfg, rule)
    voice = single.annotation["voices"]["center"]
    assert voice["gender"] in single.audio_caption and voice["pitch"] in single.audio_caption
    assert single.transcript and single.annotation["speech_segments"][0]["text"] == single.transcript
    multi = make_clip("speech_multi", "train", 0, 0, cfg, rule)
    segments = multi.annotation["speech_segments"]
    assert [s["speaker"] for s in segments] in (["left", "right"], ["right", "left"])
    assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
    assert multi.transcript == " ".join(f"{s['speaker']}: {s['text']}." for s in segments)
    # what is spoken, the WER reference: the words alone, without the transcript's speaker tags
    assert single.annotation["spoken"] == single.transcript
    assert multi.annotation["spoken"] == " ".join(s["text"] for s in segments)
    assert "left:" in multi.transcript and ":" not in multi.annotation["spoken"]
    ood = make_clip("speech_single", "ood", 0, 0, cfg, rule)
    assert rule.matches("speech_single", ood.attributes)


def test_scene_scale_enlarges_faces_mouths_and_objects_keeping_sync_exact():
    """The scene knobs draw what is synchronised larger; the measured sync of the clip stays exact."""
    rule = HoldoutRule()
    base = SyncWorldConfig(size=32)
    close = SyncWorldConfig(size=32, scene=SceneScale(face_radius=0.46, mouth_scale=1.5, object_scale=2.0))
    a, b = (make_clip("singing", "train", 0, 0, cfg, rule) for cfg in (base, close))
    assert np.array_equal(a.audio, b.audio)  # the same clip, drawn larger
    (fa,), (fb,) = a.annotation["faces"], b.annotation["faces"]
    area = [(f["mouth_box"][2] - f["mouth_box"][0]) * (f["mouth_box"][3] - f["mouth_box"][1]) for f in (fa, fb)]
    assert area[1] > 2.5 * area[0]
    # the mouth moves over more pixels, and its opening still follows the audio envelope
    changed = [np.abs(np.diff(c.video.astype(np.float32), axis=0)).sum() for c in (a, b)]
    assert changed[1] > 2.5 * changed[0]
    annotation = {**b.annotation, "frame_size": [32, 32]}
    corr, lag = lip_sync(b.video.astype(np.float32), b.audio.astype(np.float64), b.fps, b.sample_rate, annotation, 0.5)
    assert corr > 0.95 and lag == 0.0
    for i in range(6):
        small, large = (make_clip("sound", "train", i, 0, cfg, rule) for cfg in (base, close))
        rgb = large.annotation["objects"][0]["rgb"]
        pixels = [int((np.linalg.norm(c.video.astype(np.float32) - rgb, axis=-1) < 30).sum()) for c in (small, large)]
        assert pixels[1] > 2.5 * pixels[0], (i, pixels)
        visual = visual_events(large.video.astype(np.float32), large.fps, large.annotation)
        onsets = audio_onsets(large.audio.astype(np.float64), large.sample_rate)
        assert visual.size == onsets.size == len(large.annotation["event_times"]), i
        assert np.all(np.abs(visual - onsets) < 1.0 / large.fps), (i, visual, onsets)


def test_scene_scale_out_of_range_fails_naming_the_knob():
    with pytest.raises(ValueError, match="pair_face_radius must be in"):
        SceneScale(pair_face_radius=0.3)
    with pytest.raises(ValueError, match="mouth_scale must be in"):
        SceneScale(mouth_scale=2.0)
