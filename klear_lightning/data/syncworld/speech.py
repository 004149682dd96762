"""The `speech_single` and `speech_multi` splits: drawn faces whose mouths follow flite speech.

Mouth opening is the speech's own RMS envelope at each frame instant, so lips and audio agree by
construction. The speech is CMU flite's (Debian package `flite`, voices compiled in, no weights to
fetch): `slt` (US English, female) and `awb` (Scottish English, male), both statistical-parametric
voices that the shipped recogniser transcribes far better than espeak-ng's formant speech. Pitch is
flite's target mean F0, pace its duration stretch; flite is deterministic, so the clip is a
deterministic function of the seed.

The words are everyday sentences (`speech_single`) and short exchanges (`speech_multi`) from
`phrases.py`. The transcript (the model's conditioning) of `speech_multi` names the speaker of each
turn (`left: how are you. right: very well.`), which tells the model who speaks when; the
annotation's `spoken` holds the words alone (`how are you very well`): what a listener hears, the
reference a word error rate is scored against.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import lru_cache
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from klear_lightning.data.syncworld.clip import (
    SyncClip,
    SyncWorldConfig,
    blank_frames,
    frame_envelope,
    normalise_peak,
    to_uint8,
)
from klear_lightning.data.syncworld.faces import HAIR, SKIN, FaceLayout, draw_face, opening_from_envelope
from klear_lightning.data.syncworld.phrases import EXCHANGES, SENTENCES

VOICES: dict[str, str] = {"male": "awb", "female": "slt"}
PITCHES: dict[str, dict[str, int]] = {  # flite's int_f0_target_mean, Hz, per gender
    "male": {"low": 95, "high": 135},
    "female": {"low": 160, "high": 230},
}
PACES: dict[str, float] = {"slow": 1.15, "fast": 0.85}  # flite's duration_stretch
MAX_TRIES = 20
SPEAKERS: tuple[str, str] = ("left", "right")
SINGLE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": tuple(VOICES),
    "pitch": ("low", "high"),
    "pace": tuple(PACES),
    "skin": tuple(SKIN),
    "hair": tuple(HAIR),
}
MULTI_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "first_speaker": SPEAKERS,
    "left_gender": tuple(VOICES),
    "right_gender": tuple(VOICES),
}


class FliteMissingError(RuntimeError):
    """flite is not on PATH, so the speech splits cannot be generated."""


def flite_binary() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise FliteMissingError(
            "SyncWorld's speech splits (speech_single, speech_multi) need the flite program on PATH; "
            "install it (Debian/Ubuntu: `apt-get install flite`, or `make system-deps`) or leave these "
            "splits out with --splits sound singing"
        )
    return exe


@lru_cache(maxsize=1024)
def _flite(text: str, voice: str, f0: int, stretch: float, sample_rate: int) -> np.ndarray:
    cmd = [
        flite_binary(), "-voice", voice, "--setf", f"int_f0_target_mean={f0}",
        "--setf", f"duration_stretch={stretch}", "-t", text, "-o", "/dev/stdout",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"flite failed ({' '.join(cmd)}): {result.stderr.decode(errors='replace').strip()}")
    wave, native_rate = sf.read(io.BytesIO(result.stdout), dtype="float64")
    common = gcd(int(native_rate), sample_rate)
    wave = resample_poly(wave, sample_rate // common, int(native_rate) // common)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.max(np.abs(wave)))
    return wave[loud[0] : loud[-1] + 1] if loud.size else wave


def synthesise(text: str, voice: dict[str, str], sample_rate: int) -> np.ndarray:
    """Speech for `text` in a voice {gender, pitch, pace}, leading and trailing silence trimmed."""
    gender = voice["gender"]
    return _flite(text, VOICES[gender], PITCHES[gender][voice["pitch"]], PACES[voice["pace"]], sample_rate).copy()


def _random_voice(rng: np.random.Generator, forced: dict[str, str]) -> dict[str, str]:
    voice = {
        "gender": str(rng.choice(list(VOICES))),
        "pitch": str(rng.choice(SINGLE_ATTRIBUTES["pitch"])),
        "pace": str(rng.choice(list(PACES))),
    }
    voice.update({k: v for k, v in forced.items() if k in voice})
    return voice


def _random_look(rng: np.random.Generator, forced: dict[str, str]) -> dict[str, str]:
    look = {"skin": str(rng.choice(list(SKIN))), "hair": str(rng.choice(list(HAIR)))}
    look.update({k: v for k, v in forced.items() if k in look})
    return look


def _sentence(rng: np.random.Generator, voice: dict[str, str], cfg: SyncWorldConfig, budget: float):
    """A sentence whose speech lasts at most `budget` seconds, and its speech."""
    for _ in range(MAX_TRIES):
        text = str(rng.choice(SENTENCES))
        wave = synthesise(text, voice, cfg.sample_rate)
        if wave.size <= budget * cfg.sample_rate:
            return text, wave
    raise ValueError(f"no sentence fits in {budget:.2f} s; raise SyncWorldConfig.duration (now {cfg.duration} s)")


def _exchange(rng: np.random.Generator, voices: list[dict[str, str]], cfg: SyncWorldConfig, budget: float):
    """The first len(voices) lines of an exchange, line i in voices[i], whose speech lasts at most
    `budget` seconds in all: (lines, waves)."""
    for _ in range(MAX_TRIES):
        lines = [str(line) for line in EXCHANGES[int(rng.integers(len(EXCHANGES)))][: len(voices)]]
        waves = [synthesise(line, voice, cfg.sample_rate) for line, voice in zip(lines, voices)]
        if sum(w.size for w in waves) <= budget * cfg.sample_rate:
            return lines, waves
    raise ValueError(f"no exchange fits in {budget:.2f} s; raise SyncWorldConfig.duration (now {cfg.duration} s)")


def _voice_words(voice: dict[str, str]) -> str:
    pace = "slowly" if voice["pace"] == "slow" else "quickly"
    return f"a {voice['pitch']}-pitched {voice['gender']} voice speaking {pace}"


def _segment(speaker: str, start: int, wave: np.ndarray, text: str, sample_rate: int) -> dict[str, object]:
    return {"speaker": speaker, "start": start / sample_rate, "end": (start + wave.size) / sample_rate, "text": text}


def _face_record(speaker: str, face: FaceLayout, look: dict[str, str]) -> dict[str, object]:
    return {"speaker": speaker, "box": face.box(), "mouth_box": face.mouth_box(), **look}


def _opening(track: np.ndarray, cfg: SyncWorldConfig) -> np.ndarray:
    return opening_from_envelope(frame_envelope(track, cfg.sample_rate, cfg.fps, cfg.num_frames))


def make_speech_single_clip(
    rng: np.random.Generator, cfg: SyncWorldConfig, forced: dict[str, str] | None = None
) -> SyncClip:
    """One talking face, centred; the sentence starts at a random instant and fits in the clip."""
    forced = forced or {}
    voice, look = _random_voice(rng, forced), _random_look(rng, forced)
    text, wave = _sentence(rng, voice, cfg, budget=cfg.duration - 0.3)
    margin = int(0.1 * cfg.sample_rate)
    start = int(rng.integers(margin, cfg.num_samples - wave.size - margin + 1))
    track = np.zeros(cfg.num_samples)
    track[start : start + wave.size] = wave
    face = FaceLayout(
        cy=cfg.size * 0.5, cx=cfg.size * 0.5, radius=cfg.size * cfg.scene.face_radius, mouth_scale=cfg.scene.mouth_scale
    )
    opening = _opening(track, cfg)
    frames = blank_frames(cfg)
    for k in range(cfg.num_frames):
        draw_face(frames[k], face, look["skin"], look["hair"], opening[k])
    return SyncClip(
        split="speech_single",
        video=to_uint8(frames),
        audio=normalise_peak(track + rng.normal(0.0, 1e-3, cfg.num_samples)),
        fps=cfg.fps,
        sample_rate=cfg.sample_rate,
        video_caption=f"A drawn face with {look['skin']} skin and {look['hair']} hair talks to the camera.",
        audio_caption=f"{_voice_words(voice).capitalize()}.",
        transcript=text,
        attributes={**voice, **look},
        annotation={
            "faces": [_face_record("center", face, look)],
            "voices": {"center": voice},
            "speech_segments": [_segment("center", start, wave, text, cfg.sample_rate)],
            "spoken": text,
        },
    )


def make_speech_multi_clip(
    rng: np.random.Generator, cfg: SyncWorldConfig, forced: dict[str, str] | None = None
) -> SyncClip:
    """Two faces, left and right, taking turns at the lines of an exchange (three turns from 3 s
    clips on, else two)."""
    forced = forced or {}
    voices = {s: _random_voice(rng, {}) for s in SPEAKERS}
    for s in SPEAKERS:
        voices[s]["gender"] = forced.get(f"{s}_gender", voices[s]["gender"])
    if voices["left"] == voices["right"]:  # two distinguishable voices
        voices["right"]["pitch"] = "high" if voices["left"]["pitch"] == "low" else "low"
    looks = {s: _random_look(rng, {}) for s in SPEAKERS}
    first = forced.get("first_speaker") or str(rng.choice(SPEAKERS))
    order = [first, SPEAKERS[1 - SPEAKERS.index(first)]]
    gap = int(0.15 * cfg.sample_rate)
    turns = 3 if cfg.duration >= 3.0 else 2
    speakers = [order[i % 2] for i in range(turns)]
    lines, waves = _exchange(rng, [voices[s] for s in speakers], cfg, budget=cfg.duration - 0.2 - (turns - 1) * 0.15)
    tracks = {s: np.zeros(cfg.num_samples) for s in SPEAKERS}
    segments = []
    cursor = int(0.1 * cfg.sample_rate)
    for who, text, wave in zip(speakers, lines, waves):
        tracks[who][cursor : cursor + wave.size] = wave
        segments.append(_segment(who, cursor, wave, text, cfg.sample_rate))
        cursor += wave.size + gap
    centres = dict(zip(SPEAKERS, (0.26, 0.74)))
    layouts = {
        s: FaceLayout(
            cy=cfg.size * 0.5,
            cx=cfg.size * centres[s],
            radius=cfg.size * cfg.scene.pair_face_radius,
            mouth_scale=cfg.scene.mouth_scale,
        )
        for s in SPEAKERS
    }
    openings = {s: _opening(tracks[s], cfg) for s in SPEAKERS}
    frames = blank_frames(cfg)
    for k in range(cfg.num_frames):
        for s in SPEAKERS:
            draw_face(frames[k], layouts[s], looks[s]["skin"], looks[s]["hair"], openings[s][k])
    order_words = ", then ".join(f"the {seg['speaker']} face" for seg in segments)
    left, right = looks["left"], looks["right"]
    return SyncClip(
        split="speech_multi",
        video=to_uint8(frames),
        audio=normalise_peak(tracks["left"] + tracks["right"] + rng.normal(0.0, 1e-3, cfg.num_samples)),
        fps=cfg.fps,
        sample_rate=cfg.sample_rate,
        video_caption=(
            f"Two drawn faces side by side take turns talking: {order_words}. The left face has "
            f"{left['skin']} skin and {left['hair']} hair, the right face {right['skin']} skin and "
            f"{right['hair']} hair."
        ),
        audio_caption=(
            f"Two voices take turns: {_voice_words(voices['left'])} on the left and "
            f"{_voice_words(voices['right'])} on the right."
        ),
        transcript=" ".join(f"{seg['speaker']}: {seg['text']}." for seg in segments),
        attributes={"first_speaker": first, **{f"{s}_gender": voices[s]["gender"] for s in SPEAKERS}},
        annotation={
            "faces": [_face_record(s, layouts[s], looks[s]) for s in SPEAKERS],
            "voices": voices,
            "speech_segments": segments,
            "spoken": " ".join(lines),
        },
    )
