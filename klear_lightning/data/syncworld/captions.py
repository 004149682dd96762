"""Words shared by the SyncWorld caption templates."""

from __future__ import annotations

NOTE_NAMES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def count_word(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def pitch_word(hz: float) -> str:
    """Coarse pitch name used in audio captions."""
    if hz < 400:
        return "low-pitched"
    if hz < 750:
        return "mid-pitched"
    return "high-pitched"


def midi_to_hz(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"
