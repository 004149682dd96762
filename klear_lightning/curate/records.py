"""The small typed records that travel between the stages of `klear curate` (as JSON strings, one
per Ray Data row, so every stage sees the same fields whatever Arrow would infer)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Source:
    """One input file and the captions that came with it ({} when none)."""

    path: str
    key: str
    captions: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Source:
        return cls(**json.loads(text))


@dataclass
class ClipRecord:
    """One candidate clip (a scene, or a piece of one) of a source, and what the filters said.

    heard: what Whisper heard; `transcript`: the input's transcript, else (speech splits only) `heard`.
    attributes: speaker attributes of a speech clip (attribute name -> label, from `speaker_models`).
    captioned: the caption fields written by a captioning model (not the input's).
    status: "pending" until scored, then "accepted", "rejected" (one or more filters failed) or
    "bad_input" (the source could not be read; `reasons` says why). `cpu_s`: process CPU seconds
    spent on it (its source's probe and scene split count on its first clip). `scenes` is the number of
    records its source produced (a source is finished when that many are written).
    """

    key: str
    source_key: str
    path: str
    start: float
    end: float
    scene: int
    scenes: int
    captions: dict[str, str]
    status: str = "pending"
    failed: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    split: str = ""
    transcript: str = ""
    heard: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    captioned: list[str] = field(default_factory=list)
    cpu_s: float = 0.0

    @classmethod
    def bad_input(cls, path: str, key: str, reason: str, captions: dict[str, str] | None = None) -> ClipRecord:
        """The one record of a source that cannot be used."""
        return cls(key, key, path, 0.0, 0.0, 0, 1, captions or {}, status="bad_input", reasons=[reason])

    def fail(self, name: str, reason: str) -> None:
        self.failed.append(name)
        self.reasons.append(f"{name}: {reason}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClipRecord:
        return cls(**json.loads(text))
