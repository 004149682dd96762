"""The stages of `klear curate`, each a plain function on records (Ray Data maps them, `job.py`).

1. `split_source`: probe a file (PyAV, by content) and cut it into scenes (PySceneDetect's
   ContentDetector); scenes shorter than `min_duration` are rejected, longer than `max_duration`
   cut into pieces.
2. `ClipScorer`: decode one clip and run the video, audio and audio-visual filters, route it to a
   split and transcribe it; every filter either scores or is reported skipped with its reason. The
   filters with user-supplied weights (faces, SyncNet, CLAP, the audio tagger, the aesthetic score) are in
   `models.py`, the speech-quality filter (DNSMOS, shipped) in `dnsmos.py`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from torch import Tensor

from klear_lightning.curate import scores
from klear_lightning.curate.annotate import AudioCaptioner, Captioner, SpeakerClassifier
from klear_lightning.curate.config import CurateConfig
from klear_lightning.curate.dnsmos import Dnsmos, shipped_dnsmos
from klear_lightning.curate.models import CurateModels
from klear_lightning.curate.records import ClipRecord, Source
from klear_lightning.data.media import MediaError, decode_media

log = logging.getLogger(__name__)
CAPTION_FIELDS = ("video_caption", "audio_caption")
SPEECH = ("speech_single", "speech_multi")


def _bad(source: Source, reason: str) -> ClipRecord:
    return ClipRecord.bad_input(source.path, source.key, reason, source.captions)


def scene_cuts(path: Path, threshold: float) -> list[float]:
    """Times (s) where a new scene starts, by PySceneDetect's ContentDetector over PyAV frames."""
    from scenedetect import ContentDetector, detect

    scenes = detect(
        str(path), ContentDetector(threshold=threshold, min_scene_len=2), backend="pyav", show_progress=False
    )
    return [float(start.seconds) for start, _ in scenes[1:]]


def split_source(source: Source, cfg: CurateConfig) -> list[ClipRecord]:
    """The candidate clips of one input: one per scene piece, or one `bad_input` record."""
    start = time.process_time()
    out = _split(source, cfg)
    out[0].cpu_s = round(time.process_time() - start, 4)
    return out


def _split(source: Source, cfg: CurateConfig) -> list[ClipRecord]:
    try:
        d = decode_media(Path(source.path), source.path, sample_rate=cfg.sample_rate)
    except MediaError as e:
        return [_bad(source, f"{e.reason}: {e}")]
    except Exception as e:  # a file that breaks the decoder in an unforeseen way must not stop the job
        return [_bad(source, f"error: {type(e).__name__}: {e}")]
    if d.video is None or d.audio is None:
        return [_bad(source, f"missing_stream: has {'video' if d.video is not None else 'audio'} only")]
    duration = min(d.audio.size / cfg.sample_rate, float(d.frame_times[-1] - d.frame_times[0]) + 1 / max(d.fps, 1e-3))
    try:
        cuts = [t for t in scene_cuts(Path(source.path), cfg.scene_threshold) if 0 < t < duration]
    except Exception as e:
        return [_bad(source, f"scene_split: {type(e).__name__}: {e}")]
    bounds = [0.0, *cuts, duration]
    pieces: list[tuple[float, float]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = max(1, math.ceil((b - a) / cfg.max_duration - 1e-9))
        pieces += [(a + (b - a) * i / n, a + (b - a) * (i + 1) / n) for i in range(n)]
    out = []
    for i, (a, b) in enumerate(pieces):
        rec = ClipRecord(
            f"{source.key}-{i:03d}", source.key, source.path, round(a, 4), round(b, 4), i, len(pieces), source.captions
        )
        if b - a < cfg.min_duration:
            rec.fail("scene_length", f"{b - a:.2f} s < min_duration {cfg.min_duration}")
            rec.status = "rejected"
        out.append(rec)
    return out


def _threshold(rec: ClipRecord, name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    rec.scores[name] = round(float(value), 6)
    if low is not None and value < low:
        rec.fail(name, f"{value:.4g} < {low}")
    elif high is not None and value > high:
        rec.fail(name, f"{value:.4g} > {high}")


class ClipScorer:
    """Scores, routes and transcribes clips; one per Ray actor (models load once)."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.whisper = None
        if cfg.transcribe:
            from faster_whisper import WhisperModel

            from klear_lightning.metrics.wer import default_whisper_dir

            model_dir = Path(cfg.whisper).expanduser() if cfg.whisper else default_whisper_dir()
            self.whisper = WhisperModel(str(model_dir), device="cpu", compute_type="float32", cpu_threads=1)
        self.desync = None
        if cfg.synchformer:
            from klear_lightning.metrics.base import BuildContext
            from klear_lightning.metrics.synchformer import build_desync_avbench

            self.desync = build_desync_avbench(BuildContext.create({"synchformer": cfg.synchformer}))
        self.models = CurateModels.load(cfg)
        self.captioner = Captioner(Path(cfg.captioner).expanduser(), cfg.caption_prompt) if cfg.captioner else None
        self.audio_captioner = (
            AudioCaptioner(Path(cfg.audio_captioner).expanduser(), cfg.audio_caption_prompt)
            if cfg.audio_captioner
            else None
        )
        self.speaker = {name: SpeakerClassifier(Path(p).expanduser()) for name, p in cfg.speaker_models.items()}
        self.dnsmos = Dnsmos(Path(cfg.dnsmos).expanduser() if cfg.dnsmos else shipped_dnsmos()) if cfg.mos else None

    def __call__(self, rec: ClipRecord) -> ClipRecord:
        if rec.status != "pending":
            return rec
        start = time.process_time()
        try:
            self.score(rec)
        except Exception as e:  # one bad clip never stops the job
            rec.status = "bad_input"
            rec.reasons.append(f"error: {type(e).__name__}: {e}")
            log.warning("curate: %s [%s, %s]: %s", rec.path, rec.start, rec.end, e)
        rec.cpu_s = round(rec.cpu_s + time.process_time() - start, 4)
        return rec

    def score(self, rec: ClipRecord) -> None:
        cfg, sr = self.cfg, self.cfg.sample_rate
        d = decode_media(Path(rec.path), rec.path, sample_rate=sr)
        t = d.frame_times - d.frame_times[0]
        video = d.video[(t >= rec.start - 1e-6) & (t < rec.end - 1e-6)]
        audio = d.audio[int(round(rec.start * sr)) : int(round(rec.end * sr))]
        fps = d.fps
        # video
        _threshold(rec, "short_side", min(video.shape[1:3]), low=cfg.min_short_side)
        diffs = scores.frame_differences(video)
        _threshold(
            rec, "motion", float(np.percentile(diffs, 90)) if diffs.size else 0.0, cfg.min_motion, cfg.max_motion
        )
        _threshold(rec, "sharpness", scores.sharpness(video), low=cfg.min_sharpness)
        if self.models.aesthetic is None:
            rec.skipped["aesthetic"] = "clip_vision / aesthetic_head not configured (paths in the curate config)"
        else:
            _threshold(rec, "aesthetic", self.models.aesthetic_score(video), low=cfg.min_aesthetic)
        # audio
        _threshold(
            rec, "silence_ratio", scores.silence_ratio(audio, sr, cfg.silence_floor_db), high=cfg.max_silence_ratio
        )
        _threshold(rec, "snr_db", scores.snr_db(audio, sr), low=cfg.min_snr_db)
        _threshold(rec, "clipping_ratio", scores.clipping_ratio(audio), high=cfg.max_clipping_ratio)
        # audio-visual
        self._av_offset(rec, video, fps, audio)
        self._semantic(rec, audio)
        # routing and annotation; face tracks (speaker count) and lip-sync on the speech clips only
        rec.split = self._kind(rec, video, audio)
        if rec.split == "speech":
            frames = self.models.frames(video, fps) if self.models.detector is not None else None
            tracks = self.models.face_tracks(frames) if frames is not None else None
            if tracks is not None:
                rec.scores["face_tracks"] = float(len(tracks))
            speakers = rec.scores["moving_regions"] if tracks is None else len(tracks)
            rec.split = "speech_multi" if speakers >= 2 else "speech_single"
            self._lipsync(rec, frames, tracks, audio)
        self._mos(rec, audio)
        given = rec.captions.get("transcript", "").strip()
        rec.transcript = given or (rec.heard if rec.split in SPEECH else "")
        self._annotate(rec, video, audio)
        if not all(rec.captions.get(k, "").strip() for k in CAPTION_FIELDS):
            rec.fail(
                "caption", "no video_caption / audio_caption (give a sidecar or manifest captions; none is invented)"
            )
        rec.status = "rejected" if rec.failed else "accepted"

    def _av_offset(self, rec: ClipRecord, video: np.ndarray, fps: float, audio: np.ndarray) -> None:
        cfg = self.cfg
        if self.desync is not None:
            import torch

            from klear_lightning.media import MediaClip

            found = self.desync.offsets(
                MediaClip(torch.from_numpy(video), fps, torch.from_numpy(audio), cfg.sample_rate)
            )
            if found is not None:
                _threshold(rec, "av_offset_synchformer_s", float(found.abs().max()), high=cfg.max_av_offset_s)
                return
            rec.skipped["av_offset_synchformer_s"] = (
                "clip shorter than Synchformer's 4.8 s window: cross-correlation offset used"
            )
        else:
            rec.skipped["av_offset_synchformer_s"] = (
                "synchformer not configured: energy/motion cross-correlation offset used"
            )
        offset, confidence = scores.av_offset_xcorr(video, audio, cfg.sample_rate, fps, cfg.av_search_s)
        rec.scores["av_offset_confidence"] = round(confidence, 6)
        rec.scores["av_offset_xcorr_s"] = round(offset, 6)
        if abs(offset) > cfg.max_av_offset_s:
            rec.fail(
                "av_offset_xcorr_s", f"|{offset:+.3f}| s > {cfg.max_av_offset_s} (energy/motion cross-correlation)"
            )

    def _semantic(self, rec: ClipRecord, audio: np.ndarray) -> None:
        caption = rec.captions.get("audio_caption", "").strip()
        if self.models.clap is None:
            rec.skipped["clap_similarity"] = "clap not configured (CLAP weights path in the curate config)"
        elif not caption:
            rec.skipped["clap_similarity"] = "no audio_caption to compare the audio with"
        else:
            similarity = self.models.clap_similarity(audio, self.cfg.sample_rate, caption, rec.key)
            _threshold(rec, "clap_similarity", similarity, low=self.cfg.min_clap_similarity)

    def _annotate(self, rec: ClipRecord, video: np.ndarray, audio: np.ndarray) -> None:
        """Speaker attributes of a speech clip; the captioners' video and audio captions of a clip no
        filter failed (a rejected clip is not captioned: captioners are the costliest models here)."""
        if rec.split in SPEECH:
            if not self.speaker:
                rec.skipped["speaker_attributes"] = "speaker_models not configured (no speaker attributes)"
            for name, classify in self.speaker.items():
                found = classify(audio, self.cfg.sample_rate)
                rec.attributes[name] = found.label
                rec.scores[f"speaker_{name}_p"] = round(found.p, 6)
        if rec.failed:
            return
        if self.captioner is not None:
            rec.captions = {**rec.captions, "video_caption": self.captioner(video[len(video) // 2])}
            rec.captioned.append("video_caption")
        if self.audio_captioner is not None:
            rec.captions = {**rec.captions, "audio_caption": self.audio_captioner(audio, self.cfg.sample_rate)}
            rec.captioned.append("audio_caption")

    def _mos(self, rec: ClipRecord, audio: np.ndarray) -> None:
        if self.dnsmos is None:
            rec.skipped["mos"] = "mos: false (DNSMOS not run)"
        elif rec.split not in SPEECH:
            rec.skipped["mos"] = f"DNSMOS rates speech only; a {rec.split} clip is not rated"
        else:
            quality = self.dnsmos(audio, self.cfg.sample_rate)
            rec.scores["mos_sig"], rec.scores["mos_bak"] = round(quality.sig, 6), round(quality.bak, 6)
            _threshold(rec, "mos", quality.ovrl, low=self.cfg.min_mos)

    def _lipsync(self, rec: ClipRecord, frames: Tensor | None, tracks: list[Tensor] | None, audio: np.ndarray) -> None:
        cfg = self.cfg
        if self.models.syncnet is None:
            rec.skipped["lipsync_syncnet"] = (
                "syncnet not configured (SyncNet and S3FD weights paths in the curate config)"
            )
            return
        if frames is None or not tracks:
            rec.fail("lipsync_syncnet", "no face track (a speech clip must show the speaker)")
            return
        found = self.models.lipsync(frames, tracks, audio, cfg.sample_rate)
        rec.scores["syncnet_conf"], rec.scores["syncnet_offset"] = round(found.conf, 6), float(found.offset)
        if abs(found.offset) > cfg.max_syncnet_offset:
            rec.fail("lipsync_syncnet", f"|offset| {abs(found.offset)} > {cfg.max_syncnet_offset} frames")
        elif found.conf < cfg.min_syncnet_conf:
            rec.fail("lipsync_syncnet", f"LSE-C {found.conf:.3g} < {cfg.min_syncnet_conf}")

    def _kind(self, rec: ClipRecord, video: np.ndarray, audio: np.ndarray) -> str:
        """ "speech" (split by speaker count in `score`), "singing" or "sound"; transcribes the clip."""
        cfg = self.cfg
        periodic, sustain = scores.voicing(audio, cfg.sample_rate)
        rec.scores["periodic_ratio"], rec.scores["sustain"] = round(periodic, 6), round(sustain, 6)
        rec.scores["moving_regions"] = float(scores.moving_regions(video))
        words = 0
        if self.whisper is not None:
            # beam search at temperature 0 only, no 3-gram twice: faster-whisper's default falls back to an
            # unseeded sampled draw when a transcript loops ("beep beep beep ...", "right, right, ..."), so
            # a clip's route would depend on the run; a loop that cannot form needs no fallback
            segments, _ = self.whisper.transcribe(
                audio,
                language="en",
                beam_size=5,
                temperature=0.0,
                no_repeat_ngram_size=3,
                condition_on_previous_text=False,
            )
            rec.heard = " ".join(s.text.strip() for s in segments).strip()
            # distinct words: Whisper writes a repeated sound ("Beep, beep, beep.") as words, but it is one
            words = len({w.strip(".,!?;:'\"").lower() for w in rec.heard.split() if any(c.isalpha() for c in w)})
            rec.scores["words"] = float(words)
        else:
            rec.skipped["transcript"] = "transcribe: false (speech routed without a transcript)"
        if self.models.tagger is not None:
            p_speech, p_singing = self.models.tagger.vocal(audio, cfg.sample_rate)
            rec.scores["tag_speech"], rec.scores["tag_singing"] = round(p_speech, 6), round(p_singing, 6)
            if max(p_speech, p_singing) < cfg.tagger_min_vocal:
                return "sound"
            return "speech" if p_speech >= p_singing else "singing"
        if self.whisper is not None and words >= cfg.speech_min_words:
            return "speech"
        if periodic >= cfg.singing_min_periodic and sustain >= cfg.singing_min_sustain:
            return "singing"
        return "sound"
