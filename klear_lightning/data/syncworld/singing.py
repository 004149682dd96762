"""The `singing` split: a drawn face singing sustained vowels on known notes.

The voice is a small formant synthesiser (harmonics of the note's pitch shaped by the vowel's
formants), so the pitch of every note is exact and recorded in the annotation. The mouth opens with
the sung envelope and rounds for `o` / `u`.
"""

from __future__ import annotations

import numpy as np

from klear_lightning.data.syncworld.captions import midi_to_hz, note_name
from klear_lightning.data.syncworld.clip import (
    SyncClip,
    SyncWorldConfig,
    blank_frames,
    frame_envelope,
    normalise_peak,
    to_uint8,
)
from klear_lightning.data.syncworld.faces import HAIR, SKIN, FaceLayout, draw_face, opening_from_envelope

VOWELS: dict[str, tuple[tuple[float, float, float], float, str]] = {
    # formants (Hz), mouth roundness, spelling in the transcript
    "a": ((800.0, 1200.0, 2500.0), 0.0, "ah"),
    "e": ((450.0, 1900.0, 2550.0), 0.0, "eh"),
    "i": ((300.0, 2300.0, 3000.0), 0.0, "ee"),
    "o": ((480.0, 850.0, 2450.0), 1.0, "oh"),
    "u": ((330.0, 750.0, 2400.0), 1.0, "oo"),
}
REGISTERS: dict[str, tuple[int, int]] = {"low": (48, 59), "high": (60, 72)}  # MIDI note ranges
ATTRIBUTES: dict[str, tuple[str, ...]] = {"register": tuple(REGISTERS), "skin": tuple(SKIN), "hair": tuple(HAIR)}
ATTACK, RELEASE, ACCENT = 0.03, 0.05, 0.15


def sung_vowel(midi: int, vowel: str, seconds: float, sample_rate: int, loudness: float = 1.0) -> np.ndarray:
    """A sustained vowel at the note's pitch: accented attack settling to 60 %, short release ramp."""
    f0 = midi_to_hz(midi)
    formants, _, _ = VOWELS[vowel]
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = np.zeros_like(t)
    for k in range(1, int(min(4000.0, sample_rate / 2 - 100) // f0) + 1):
        gain = sum(1.0 / (1.0 + ((k * f0 - f) / 90.0) ** 2) for f in formants)
        wave += (1.0 / k + gain) * np.sin(2 * np.pi * k * f0 * t)
    ramp = np.clip(np.minimum(t / ATTACK, (t[-1] - t) / RELEASE), 0.0, 1.0)
    return loudness * wave * ramp * (0.6 + 0.4 * np.exp(-t / ACCENT))


def make_singing_clip(rng: np.random.Generator, cfg: SyncWorldConfig, forced: dict[str, str] | None = None) -> SyncClip:
    """A face singing two or three notes (three from 1.8 s clips on), each a sustained vowel."""
    forced = forced or {}
    register = forced.get("register") or str(rng.choice(list(REGISTERS)))
    look = {name: forced.get(name) or str(rng.choice(ATTRIBUTES[name])) for name in ("skin", "hair")}
    count = 3 if cfg.duration >= 1.8 else 2
    lo, hi = REGISTERS[register]
    midis = [int(m) for m in rng.integers(lo, hi + 1, size=count)]
    vowels = [str(v) for v in rng.choice(list(VOWELS), size=count)]
    gap = 0.1
    length = (cfg.duration - 0.2 - (count - 1) * gap) / count
    track = np.zeros(cfg.num_samples)
    roundness = np.zeros(cfg.num_frames)
    notes = []
    frame_times = np.arange(cfg.num_frames) / cfg.fps
    start = 0.1
    for midi, vowel in zip(midis, vowels):
        seconds = float(rng.uniform(0.8, 1.0)) * length
        i0 = int(round(start * cfg.sample_rate))
        wave = sung_vowel(midi, vowel, seconds, cfg.sample_rate, loudness=float(rng.uniform(0.5, 1.0)))
        track[i0 : i0 + wave.size] = wave
        roundness[(frame_times >= start) & (frame_times < start + seconds)] = VOWELS[vowel][1]
        notes.append(
            {
                "start": start,
                "end": start + seconds,
                "vowel": vowel,
                "midi": midi,
                "note": note_name(midi),
                "pitch_hz": midi_to_hz(midi),
            }
        )
        start += seconds + gap
    face = FaceLayout(
        cy=cfg.size * 0.5, cx=cfg.size * 0.5, radius=cfg.size * cfg.scene.face_radius, mouth_scale=cfg.scene.mouth_scale
    )
    opening = opening_from_envelope(frame_envelope(track, cfg.sample_rate, cfg.fps, cfg.num_frames))
    frames = blank_frames(cfg)
    for k in range(cfg.num_frames):
        draw_face(frames[k], face, look["skin"], look["hair"], opening[k], roundness[k])
    sung = " ".join(VOWELS[v][2] for v in vowels)
    names = ", ".join(n["note"] for n in notes)
    return SyncClip(
        split="singing",
        video=to_uint8(frames),
        audio=normalise_peak(track + rng.normal(0.0, 1e-3, cfg.num_samples)),
        fps=cfg.fps,
        sample_rate=cfg.sample_rate,
        video_caption=f"A drawn face with {look['skin']} skin and {look['hair']} hair sings.",
        audio_caption=f"A {register} voice sings {len(notes)} sustained vowels on the notes {names}.",
        transcript=sung,
        attributes={"register": register, **look},
        annotation={
            "faces": [{"speaker": "center", "box": face.box(), "mouth_box": face.mouth_box(), **look}],
            "notes": notes,
            "speech_segments": [
                {"speaker": "center", "start": n["start"], "end": n["end"], "text": VOWELS[n["vowel"]][2]}
                for n in notes
            ],
            "spoken": "",  # sung vowels, not speech: no word error rate is scored on them
        },
    )
