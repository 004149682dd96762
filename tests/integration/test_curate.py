"""`klear curate` end to end on SyncWorld clips with injected defects (benchmarks/curate.py writes
them): every filter catches its defect, clean clips pass, bad inputs are listed, the accepted clips
go through `klear prepare`, and a rerun with 2 Ray workers resumes and gives the same result as 1."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.curate import DEFECTS, Truth, evaluate, write_defect_set, write_mkv

KLEAR = Path(sys.executable).parent / "klear"
FPS = 16
HAS_FLITE = shutil.which("flite") is not None


def klear(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(KLEAR), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def defect_set(tmp_path_factory) -> tuple[Path, list[Truth]]:
    """One clean clip of `sound` and `singing` each, one clip per defect kind, an undecodable file,
    a file without audio and a clean clip without captions (no flite needed)."""
    root = tmp_path_factory.mktemp("curate_inputs")
    truth = write_defect_set(
        root, clean_per_split=1, defects_per_kind=1, seed=3, duration=2.0, fps=FPS, size=64, splits=("sound", "singing")
    )
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    frames = np.random.default_rng(0).integers(0, 255, (32, 64, 64, 3), dtype=np.uint8)
    write_mkv(root / "silent_film.mkv", frames, FPS, None, 16000)
    shutil.copy(root / truth[0].file, root / "uncaptioned.mkv")
    return root, truth


@pytest.fixture(scope="module")
def one_worker(defect_set, tmp_path_factory) -> Path:
    root, _ = defect_set
    out = tmp_path_factory.mktemp("curate_out")
    (out.parent / "curate.yaml").write_text("transcribe: false\n")
    done = klear("curate", "--inputs", root, "--out", out, "--config", out.parent / "curate.yaml", "--workers", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_each_filter_catches_its_defect(defect_set, one_worker):
    root, truth = defect_set
    result = evaluate(truth, one_worker, FPS)
    assert {d: r["recall"] for d, r in result["recall"].items()} == {d: None if d == "dub" else 1.0 for d in DEFECTS}, (
        result["missed"]
    )  # no speech here to dub
    assert result["false_reject_rate"] == 0.0
    report = json.loads((one_worker / "curate_report.json").read_text())
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_inputs"]}
    assert bad.keys() == {"broken.mp4", "silent_film.mkv"}
    assert bad["broken.mp4"].startswith("undecodable") and bad["silent_film.mkv"].startswith("missing_stream")
    assert [k.split("-")[0] for k in report["without_caption"]] == ["uncaptioned"]
    # a filter without its model is reported, not passed
    assert report["skipped"]["aesthetic"]["clips"] == report["clips"]
    assert report["skipped"]["mos"]["clips"] == report["clips"]  # no speech here: DNSMOS rates none
    for name in ("silence_ratio", "snr_db", "clipping_ratio", "motion", "av_offset_xcorr_s"):
        assert (one_worker / report["filters"][name]["histogram"]).read_bytes()[:4] == b"\x89PNG"
    assert "| snr_db |" in (one_worker / "curate_report.md").read_text()


@pytest.mark.slow
def test_accepted_clips_prepare_as_they_are(one_worker, tmp_path):
    lines = [json.loads(line) for line in (one_worker / "accepted.jsonl").read_text().splitlines()]
    spliced = [ln for ln in lines if Path(ln["path"]).name.startswith("splice")]
    assert len(spliced) == 2 and spliced[1]["start"] == pytest.approx(2.0, abs=1.5 / FPS)
    from klear_lightning.data.media import decode_media
    from klear_lightning.data.prepare import prepare
    from klear_lightning.data.shards import iter_tar
    from klear_lightning.sequence import ClipSpec

    report = prepare(
        one_worker / "accepted.jsonl",
        tmp_path,
        "curated",
        workers=1,
        clip=ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000),
    )
    assert report.failed == [] and report.written == len(lines)
    [shard] = (tmp_path / "train" / "curated").glob("*.tar")
    videos = {raw["__key__"]: decode_media(raw["mp4"], audio=False).video for raw in iter_tar(shard)}
    first, second = (videos[ln["key"]].astype(float) for ln in spliced)
    assert np.abs(first - second).mean() > 10  # each scene of the spliced file is its own time range


@pytest.mark.slow
def test_rerun_resumes_with_two_workers_and_agrees(defect_set, one_worker, tmp_path):
    """Half the results kept and a line cut short, as a crash leaves them: the rerun, with 2 Ray
    workers, redoes only the rest and accepts exactly what one worker from scratch accepted."""
    root, _ = defect_set
    shutil.copytree(one_worker, tmp_path / "resumed")
    results = (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()
    kept = len(results) // 2
    (tmp_path / "resumed" / "results.jsonl").write_text("\n".join(results[:kept]) + "\n" + results[kept][:40])
    done = klear(
        "curate",
        "--inputs",
        root,
        "--out",
        tmp_path / "resumed",
        "--config",
        one_worker.parent / "curate.yaml",
        "--workers",
        2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "resumed" / "accepted.jsonl").read_text() == (one_worker / "accepted.jsonl").read_text()
    resumed = (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()
    # kept as they were, but for the first clip of a spliced source cut in half (its source is redone)
    assert len(resumed) == len(results) and resumed[: kept - 1] == results[: kept - 1]


def test_bad_config_fails_with_one_line(tmp_path):
    """Through the command once (exit 2, one line, nothing written), then the other mistakes in-process."""
    from klear_lightning.curate.config import load_config
    from klear_lightning.errors import ConfigError

    (tmp_path / "curate.yaml").write_text("min_snr_db: loud\n")
    done = klear("curate", "--inputs", tmp_path, "--out", tmp_path / "out", "--config", tmp_path / "curate.yaml")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: min_snr_db: expected float, got 'loud'", done.stderr
    assert not (tmp_path / "out").exists()
    for text, line in [
        ("min_snr: 10\n", "min_snr: unknown field"),
        ("max_silence_ratio: 1.5\n", "max_silence_ratio: must be in [0, 1], got 1.5"),
    ]:
        (tmp_path / "curate.yaml").write_text(text)
        with pytest.raises(ConfigError, match="^" + re.escape(line)):
            load_config(tmp_path / "curate.yaml")


@pytest.mark.slow
@pytest.mark.flite
@pytest.mark.skipif(not HAS_FLITE, reason="flite is not on PATH")
def test_routing_and_transcripts(tmp_path):
    from klear_lightning.curate.config import CurateConfig
    from klear_lightning.curate.records import Source
    from klear_lightning.curate.stages import ClipScorer, split_source

    truth = write_defect_set(tmp_path, clean_per_split=1, defects_per_kind=0, seed=5, duration=2.0, fps=FPS)
    cfg = CurateConfig()
    scorer = ClipScorer(cfg)
    heard = {}
    for t in truth:
        [rec] = split_source(Source(str(tmp_path / t.file), t.file, {}), cfg)
        rec = scorer(rec)
        assert rec.split == t.split, (t.file, rec.scores, rec.heard)
        assert bool(rec.transcript) == t.split.startswith("speech"), rec.heard
        if t.split.startswith("speech"):  # DNSMOS rates speech, the threshold decides
            assert {"mos", "mos_sig", "mos_bak"} <= rec.scores.keys() and 1 <= rec.scores["mos"] <= 5
            assert ("mos" in rec.failed) == (rec.scores["mos"] < cfg.min_mos)
        else:
            assert "mos" not in rec.scores and "speech only" in rec.skipped["mos"]
        heard[t.file] = rec.heard
    # the same clip is heard the same whatever the state of Whisper's sampler: a route never depends on
    # the worker or the run (faster-whisper's default falls back to sampling when unsure)
    import ctranslate2

    for t in truth:
        ctranslate2.set_random_seed(len(t.file))
        [rec] = split_source(Source(str(tmp_path / t.file), t.file, {}), cfg)
        assert scorer(rec).heard == heard[t.file], t.file


def test_synchformer_scores_long_clips_when_configured(tmp_path):
    """With `synchformer` set, a clip long enough for its 4.8 s window is judged by it (here a
    network whose head always says +1 s), a shorter one falls back to the cross-correlation offset
    and says so; a file that is not a Synchformer checkpoint stops the command with one line."""
    import torch

    from klear_lightning.curate.config import CurateConfig
    from klear_lightning.curate.records import Source
    from klear_lightning.curate.stages import ClipScorer, split_source
    from klear_lightning.metrics.nets import synchformer as sfnet

    model = sfnet.Synchformer(
        sfnet.SynchformerConfig(dim=48, video_depth=1, audio_depth=1, global_depth=1, image_size=32)
    )
    with torch.no_grad():
        model.transformer.off_head.weight.zero_()
        model.transformer.off_head.bias.zero_()
        model.transformer.off_head.bias[15] = 10.0  # class 15 of linspace(-2, 2, 21) = +1.0 s
    torch.save(model.state_dict(), tmp_path / "sync.pth")
    long = write_defect_set(tmp_path / "long", 1, 0, seed=4, duration=5.0, fps=FPS, splits=("sound",))
    short = write_defect_set(tmp_path / "short", 1, 0, seed=4, duration=2.0, fps=FPS, splits=("sound",))
    cfg = CurateConfig(synchformer=str(tmp_path / "sync.pth"), transcribe=False)
    scorer = ClipScorer(cfg)
    [rec] = split_source(Source(str(tmp_path / "long" / long[0].file), "long", {}), cfg)
    rec = scorer(rec)
    assert rec.scores["av_offset_synchformer_s"] == pytest.approx(1.0) and "av_offset_synchformer_s" in rec.failed
    [rec] = split_source(Source(str(tmp_path / "short" / short[0].file), "short", {}), cfg)
    rec = scorer(rec)
    assert "av_offset_xcorr_s" in rec.scores and "4.8 s" in rec.skipped["av_offset_synchformer_s"]
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "curate.yaml").write_text(f"synchformer: {tmp_path / 'bad.pth'}\n")
    done = klear(
        "curate", "--inputs", tmp_path / "short", "--out", tmp_path / "out", "--config", tmp_path / "curate.yaml"
    )
    assert done.returncode == 2 and done.stderr.strip().startswith("error: synchformer: could not load"), done.stderr


@pytest.mark.slow
@pytest.mark.flite
@pytest.mark.skipif(not HAS_FLITE, reason="flite is not on PATH")
def test_filters_with_user_weights_run_from_their_config_paths(tmp_path):
    """S3FD, SyncNet, CLAP, the aesthetic head on CLIP and the PANNs tagger read from the config's paths
    (seeded random weights; the S3FD head is set to see one face, the tagger's to hear singing): face
    tracks count the speakers, SyncNet judges speech clips only, CLAP compares every clip with its audio
    caption, the aesthetic score rates every clip, the tagger routes, and each threshold decides; unset,
    each filter is reported skipped; a file that is not a checkpoint stops the command before any worker
    starts."""
    from dataclasses import replace

    from klear_lightning.curate.config import CurateConfig
    from klear_lightning.curate.job import accepted_line, check_models
    from klear_lightning.curate.records import Source
    from klear_lightning.curate.stages import ClipScorer, split_source
    from klear_lightning.data.prepare import prepare
    from klear_lightning.data.shards import iter_tar
    from klear_lightning.errors import ConfigError
    from klear_lightning.sequence import ClipSpec
    from tests.helpers.nets import (
        save_one_face_s3fd,
        save_random_syncnet,
        save_red_ball_captioner,
        save_singing_tagger,
        save_sound_audio_captioner,
        save_speaker_classifier,
        save_tiny_aesthetic,
        save_tiny_clap,
    )

    truth = write_defect_set(tmp_path, 1, 0, seed=5, duration=2.0, fps=FPS, splits=("sound", "speech_multi"))
    clean_sound, clean_speech = (t.file for t in truth)
    paths = {
        "s3fd": str(save_one_face_s3fd(tmp_path / "sfd_face.pth")),
        "syncnet": str(save_random_syncnet(tmp_path / "syncnet_v2.model")),
        "clap": str(save_tiny_clap(tmp_path / "clap")),
        **dict(zip(("clip_vision", "aesthetic_head"), map(str, save_tiny_aesthetic(tmp_path)))),
    }
    loose = dict(min_syncnet_conf=-1e9, max_syncnet_offset=15, min_clap_similarity=-1.0, min_aesthetic=-1e9, min_mos=1)
    annotators = dict(
        captioner=str(save_red_ball_captioner(tmp_path / "captioner")),
        audio_captioner=str(save_sound_audio_captioner(tmp_path / "audio_captioner")),
        speaker_models={"gender": str(save_speaker_classifier(tmp_path / "gender", ("female", "male")))},
    )
    cfg = CurateConfig(**paths, **loose, **annotators)
    scorer = ClipScorer(cfg)

    def score(file: str, **thresholds):
        scorer.cfg = replace(cfg, **thresholds)
        [rec] = split_source(
            Source(str(tmp_path / file), Path(file).stem, json.loads((tmp_path / f"{file}.json").read_text())), cfg
        )
        return scorer(rec)

    speech = score(clean_speech)
    # one face track: routed as one speaker whatever SyncWorld drew (two faces, too small for this head)
    assert speech.split == "speech_single" and speech.scores["face_tracks"] == 1.0, (speech.heard, speech.scores)
    assert {"syncnet_conf", "syncnet_offset", "clap_similarity", "aesthetic"} <= speech.scores.keys()
    assert not speech.failed and not {"lipsync_syncnet", "clap_similarity", "aesthetic"} & speech.skipped.keys()
    # annotation: the captioners write both captions, the classifier labels the speaker
    assert speech.captioned == ["video_caption", "audio_caption"]
    assert speech.captions["video_caption"].split()[:2] == ["red", "red"]
    assert speech.captions["audio_caption"].startswith("soundsound")
    assert speech.attributes == {"gender": "female"} and speech.scores["speaker_gender_p"] > 0.9
    manifest = tmp_path / "accepted.jsonl"
    manifest.write_text(json.dumps(accepted_line(speech)) + "\n")
    clip = ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000)
    assert prepare(manifest, tmp_path / "shards", "speech_single", workers=1, clip=clip).written == 1
    [raw] = iter_tar(next((tmp_path / "shards").rglob("*.tar")))
    meta = json.loads(raw["json"])
    assert meta["annotation"] == {"speaker": {"gender": "female"}} and meta["video_caption"].startswith("red red")
    assert meta["audio_caption"].startswith("soundsound")
    strict = score(clean_speech, min_syncnet_conf=1e9, min_clap_similarity=1.0, min_aesthetic=1e9)
    assert {"lipsync_syncnet", "clap_similarity", "aesthetic"} <= set(strict.failed), strict.reasons
    sound = score(clean_sound, min_syncnet_conf=1e9)
    assert sound.split == "sound" and "syncnet_conf" not in sound.scores and "aesthetic" in sound.scores
    assert not sound.failed and sound.captioned and not sound.attributes  # speaker attributes: speech only
    assert not score(clean_sound, min_aesthetic=1e9).captioned  # a rejected clip is not captioned
    # unset: skipped and said so
    scorer = ClipScorer(CurateConfig())
    cfg = CurateConfig()
    plain = score(clean_speech)
    assert {"lipsync_syncnet", "clap_similarity", "aesthetic", "speaker_attributes"} <= plain.skipped.keys()
    assert "face_tracks" not in plain.scores and not plain.captioned
    (tmp_path / "bad.model").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^syncnet: could not load .*bad.model"):
        check_models(CurateConfig(s3fd=paths["s3fd"], syncnet=str(tmp_path / "bad.model")))
    with pytest.raises(ConfigError, match=r"^syncnet: needs s3fd"):
        CurateConfig(syncnet=paths["syncnet"])
    with pytest.raises(ConfigError, match=r"^speaker_models.age: could not load .*clap: "):
        check_models(CurateConfig(speaker_models={"age": paths["clap"]}))  # not an audio classifier
    with pytest.raises(ConfigError, match=r"^aesthetic_head: could not load .*bad.model"):
        check_models(CurateConfig(clip_vision=paths["clip_vision"], aesthetic_head=str(tmp_path / "bad.model")))
    # the tagger decides the route: it hears singing in the speech clip, Whisper is not asked
    weights, labels = save_singing_tagger(tmp_path / "Cnn14_16k.pth", tmp_path / "class_labels_indices.csv")
    cfg = CurateConfig(tagger=str(weights), tagger_labels=str(labels), transcribe=False)
    scorer = ClipScorer(cfg)
    tagged = score(clean_speech)
    assert tagged.split == "singing" and tagged.scores["tag_singing"] > 0.99 > 0.01 > tagged.scores["tag_speech"]
    assert score(clean_speech, tagger_min_vocal=1.0).split == "sound"  # not vocal enough: sound
    labels.write_text("index,mid,display_name\n0,/m/0,Speech\n")
    with pytest.raises(ConfigError, match=r"^tagger_labels: .* must list AudioSet's 527 classes"):
        check_models(cfg)
