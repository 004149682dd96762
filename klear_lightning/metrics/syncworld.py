"""Exact synchronisation and attribute metrics on SyncWorld clips, with no learned extractor.

SyncWorld's generator knows which event kind, colours, pitches and face positions the captions
describe, so a generated clip is measured directly from its pixels and samples
(`klear_lightning.data.syncworld.measure`):
- event offset (`sound`): audio onsets (log-energy rises) against visual events detected in the
  frames (bounce: lowest point of the tracked object; collision: closest approach; flash:
  brightness peak); the global audio-minus-video lag that best pairs them, in ms, and the fraction
  of events matched within half a frame at that lag.
- lip sync (`speech_single`, `speech_multi`, `singing`): mouth height measured in the annotated
  mouth boxes against the audio RMS envelope per frame; Pearson correlation at lag 0 and |best lag|.
- speaker turns (`speech_multi`): which face's mouth moves while there is sound, as a turn sequence,
  against the transcript's speaker order (1 - normalised edit distance).
- colour adherence (`sound`): the palette colours covering most pixels are the caption's colours.
- pitch adherence (single-object `sound` clips, `singing`): measured fundamental within half a
  semitone of the pitch the caption names (each sung note, in order).
Clips of other splits (or sources) are not scored and not counted; a scored clip needs SyncWorld's
annotation in `meta["annotation"]`. Positive lags mean the audio is late.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from klear_lightning.data.syncworld.captions import midi_to_hz
from klear_lightning.data.syncworld.measure import (
    audio_onsets,
    dominant_colours,
    dominant_pitch,
    event_lag,
    lip_sync,
    note_pitches,
    semitones,
    sequence_similarity,
    turn_sequence,
    visual_events,
)
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric

PROTOCOL = "syncworld_exact"


def annotation(clip: MediaClip, *fields: str) -> dict[str, Any]:
    """The clip's SyncWorld annotation; a clear error naming the clip when a field is missing."""
    found = clip.meta.get("annotation") or {}
    for name in fields:
        if name not in found:
            where = f"SyncWorld clip {clip.meta.get('key', '?')!r} ({clip.meta.get('split')})"
            raise ValueError(f"{where}: annotation has no {name!r}")
    return found


def _video(clip: MediaClip) -> np.ndarray:
    return clip.video.detach().cpu().numpy().astype(np.float32)


def _audio(clip: MediaClip) -> np.ndarray:
    return clip.audio.detach().cpu().numpy().astype(np.float64)


class _SyncWorldMetric(ClipMetric):
    """Scores only SyncWorld clips (meta source "syncworld", or no source) of `splits`."""

    splits: tuple[str, ...] = ()
    protocol = PROTOCOL

    def _add_sums(self, *names: str) -> None:
        for name in names:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _scored(self, generated: list[MediaClip]) -> list[MediaClip]:
        return [
            c
            for c in generated
            if c.meta.get("source", "syncworld") == "syncworld" and c.meta.get("split") in self.splits
        ]

    def _mean(self, total: Tensor) -> Tensor:
        self.require(int(self.n) >= 1, f"no SyncWorld clip of split {'/'.join(self.splits)} was scored")
        return total / self.n


class SyncWorldEventOffset(_SyncWorldMetric):
    """`sound`: |audio-onset minus visual-event lag| in ms (mean and median over clips), its signed
    mean, and the match rate.

    A clip with no detectable visual event or no onset scores the largest lag searched
    (`max_lag_s`) with nothing matched: generating silence or a still picture is never rewarded.
    The median tells "most clips in sync, a few with nothing detected" apart from "all a little off",
    which the mean mixes up.
    """

    modalities = ("video", "audio")
    splits = ("sound",)
    columns = (
        Column("sync_offset_ms_syncworld", "AV offset (ms)", higher_is_better=False),
        Column("sync_offset_median_ms_syncworld", "AV offset, median (ms)", higher_is_better=False),
        Column("sync_offset_signed_ms_syncworld", "AV offset, signed (ms)", higher_is_better=False),
        Column("sync_event_match_syncworld", "events matched", higher_is_better=True),
    )

    def __init__(self, max_lag_s: float = 0.75) -> None:
        super().__init__()
        self.max_lag_s = max_lag_s
        self._add_sums("abs_ms", "signed_ms", "matched")
        self.add_state("each_abs_ms", default=[], dist_reduce_fx="cat")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in self._scored(generated):
            visual = visual_events(_video(clip), clip.fps, annotation(clip, "event", "objects"))
            onsets = audio_onsets(_audio(clip), clip.sample_rate)
            if visual.size and onsets.size:
                lag, matched = event_lag(visual, onsets, clip.duration, 0.5 / clip.fps, self.max_lag_s)
            else:
                lag, matched = self.max_lag_s, 0.0
            self.abs_ms += abs(lag) * 1000
            self.each_abs_ms.append(torch.tensor([abs(lag) * 1000], dtype=torch.float64))
            self.signed_ms += lag * 1000
            self.matched += matched
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        each = self.each_abs_ms
        each = torch.cat(each) if isinstance(each, list) and each else each
        return {
            "sync_offset_ms_syncworld": self._mean(self.abs_ms),
            "sync_offset_median_ms_syncworld": torch.quantile(each, 0.5),
            "sync_offset_signed_ms_syncworld": self._mean(self.signed_ms),
            "sync_event_match_syncworld": self._mean(self.matched),
        }


class SyncWorldLipSync(_SyncWorldMetric):
    """Speech and singing: mouth-opening vs audio-envelope correlation at lag 0, and |best lag| in ms."""

    modalities = ("video", "audio")
    splits = ("speech_single", "speech_multi", "singing")
    columns = (
        Column("lipsync_corr_syncworld", "lip-sync corr", higher_is_better=True),
        Column("lipsync_lag_ms_syncworld", "lip-sync |lag| (ms)", higher_is_better=False),
    )

    def __init__(self, max_lag_s: float = 0.5) -> None:
        super().__init__()
        self.max_lag_s = max_lag_s
        self._add_sums("corr", "lag_ms")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in self._scored(generated):
            truth = annotation(clip, "faces")
            corr, lag = lip_sync(_video(clip), _audio(clip), clip.fps, clip.sample_rate, truth, self.max_lag_s)
            self.corr += corr
            self.lag_ms += abs(lag) * 1000
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        return {"lipsync_corr_syncworld": self._mean(self.corr), "lipsync_lag_ms_syncworld": self._mean(self.lag_ms)}


class SyncWorldSpeakerTurns(_SyncWorldMetric):
    """`speech_multi`: similarity of the measured turn sequence to the transcript's speaker order."""

    modalities = ("video", "audio")
    splits = ("speech_multi",)
    columns = (Column("speaker_turn_acc_syncworld", "speaker turns", higher_is_better=True),)

    def __init__(self) -> None:
        super().__init__()
        self._add_sums("total")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in self._scored(generated):
            truth = annotation(clip, "faces", "speech_segments")
            measured = turn_sequence(_video(clip), _audio(clip), clip.fps, clip.sample_rate, truth)
            self.total += sequence_similarity(measured, [seg["speaker"] for seg in truth["speech_segments"]])
            self.n += 1

    def compute(self) -> Tensor:
        return self._mean(self.total)


class SyncWorldColourAdherence(_SyncWorldMetric):
    """`sound`: fraction of clips whose dominant palette colours are the caption's object colours."""

    modalities = ("video",)
    splits = ("sound",)
    columns = (Column("colour_acc_syncworld", "colour adherence", higher_is_better=True),)

    def __init__(self) -> None:
        super().__init__()
        self._add_sums("total")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in self._scored(generated):
            expected = {o["colour"] for o in annotation(clip, "objects")["objects"]}
            self.total += float(set(dominant_colours(_video(clip), len(expected))) == expected)
            self.n += 1

    def compute(self) -> Tensor:
        return self._mean(self.total)


class SyncWorldPitchAdherence(_SyncWorldMetric):
    """Fraction of named pitches measured within half a semitone: the object's tone in single-object
    `sound` clips (collisions sound two objects and are not scored), each sung note in order for
    `singing` (a note with no voiced segment counts as wrong)."""

    modalities = ("audio",)
    splits = ("sound", "singing")
    columns = (Column("pitch_acc_syncworld", "pitch adherence", higher_is_better=True),)

    def __init__(self) -> None:
        super().__init__()
        self._add_sums("total")

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in self._scored(generated):
            audio = _audio(clip)
            if clip.meta["split"] == "singing":
                expected = [midi_to_hz(n["midi"]) for n in annotation(clip, "notes")["notes"]]
                measured = note_pitches(audio, clip.sample_rate)
                hits = [i < len(measured) and semitones(measured[i], hz) < 0.5 for i, hz in enumerate(expected)]
                self.total += float(np.mean(hits))
            else:
                objects = annotation(clip, "objects")["objects"]
                if len(objects) != 1:
                    continue
                self.total += float(semitones(dominant_pitch(audio, clip.sample_rate), objects[0]["pitch_hz"]) < 0.5)
            self.n += 1

    def compute(self) -> Tensor:
        return self._mean(self.total)


@register_metric("sync_offset_syncworld", group="av", description="SyncWorld sound: audio onset vs visual event, ms")
def build_event_offset(ctx: BuildContext) -> ClipMetric:
    return SyncWorldEventOffset()


@register_metric("lipsync_syncworld", group="av", description="SyncWorld speech/singing: mouth vs audio envelope")
def build_lip_sync(ctx: BuildContext) -> ClipMetric:
    return SyncWorldLipSync()


@register_metric("speaker_turns_syncworld", group="av", description="SyncWorld speech_multi: speaker-turn accuracy")
def build_speaker_turns(ctx: BuildContext) -> ClipMetric:
    return SyncWorldSpeakerTurns()


@register_metric("colour_syncworld", group="video", description="SyncWorld sound: caption colour vs measured colour")
def build_colour(ctx: BuildContext) -> ClipMetric:
    return SyncWorldColourAdherence()


@register_metric("pitch_syncworld", group="audio", description="SyncWorld sound/singing: caption pitch vs measured")
def build_pitch(ctx: BuildContext) -> ClipMetric:
    return SyncWorldPitchAdherence()
