"""Task recipes as data, and the per-sample task sampler (random modality masking).

Each task says, per stream, whether it is generated (noised and supervised), a condition
(clean, t = 1, never supervised) or absent (not in the attention at all). TI2V / TI2AV also
condition the first latent frame inside the generated video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from klear_lightning.errors import ConfigError
from klear_lightning.streams import STREAMS


class Role(IntEnum):
    ABSENT = 0
    CONDITION = 1
    GENERATE = 2


@dataclass(frozen=True)
class TaskRecipe:
    name: str
    video: Role
    video_text: Role
    audio_text: Role
    audio: Role
    first_frame_condition: bool = False

    def role(self, stream: str) -> Role:
        return getattr(self, stream)

    @property
    def generated(self) -> tuple[str, ...]:
        return tuple(s for s in STREAMS if self.role(s) is Role.GENERATE)


G, C, A = Role.GENERATE, Role.CONDITION, Role.ABSENT

TASKS: dict[str, TaskRecipe] = {
    r.name: r
    for r in (
        TaskRecipe("t2v", video=G, video_text=C, audio_text=A, audio=A),
        TaskRecipe("t2a", video=A, video_text=A, audio_text=C, audio=G),
        TaskRecipe("t2av", video=G, video_text=C, audio_text=C, audio=G),
        TaskRecipe("ti2v", video=G, video_text=C, audio_text=A, audio=A, first_frame_condition=True),
        TaskRecipe("ti2av", video=G, video_text=C, audio_text=C, audio=G, first_frame_condition=True),
        TaskRecipe("v2a", video=C, video_text=C, audio_text=C, audio=G),
        TaskRecipe("a2v", video=G, video_text=C, audio_text=C, audio=C),
    )
}

# The paper's five tasks; V2A and A2V are this project's additions.
PAPER_TASKS: tuple[str, ...] = ("t2v", "t2a", "t2av", "ti2v", "ti2av")


def get_task(name: str) -> TaskRecipe:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task: unknown task {name!r}; known tasks: {sorted(TASKS)}") from None


@dataclass
class TaskBatch:
    """The tasks drawn for one batch: per-sample names and per-stream role codes (B,) int64."""

    names: list[str]
    roles: dict[str, Tensor]
    first_frame_condition: Tensor

    @classmethod
    def from_names(cls, names: Sequence[str], device: torch.device | str = "cpu") -> TaskBatch:
        recipes = [get_task(n) for n in names]
        roles = {s: torch.tensor([int(r.role(s)) for r in recipes], dtype=torch.long, device=device) for s in STREAMS}
        first = torch.tensor([r.first_frame_condition for r in recipes], dtype=torch.bool, device=device)
        return cls(names=list(names), roles=roles, first_frame_condition=first)

    def is_(self, stream: str, role: Role) -> Tensor:
        return self.roles[stream] == int(role)


class TaskSampler:
    """Draws one task per sample from configured, non-negative weights (normalised here)."""

    def __init__(self, weights: Mapping[str, float]):
        if not weights:
            raise ConfigError("task_weights: at least one task needs a weight")
        for name, w in weights.items():
            get_task(name)
            if not (w >= 0.0) or w == float("inf"):
                raise ConfigError(f"task_weights.{name}: weight must be finite and >= 0, got {w}")
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError("task_weights: all weights are zero; at least one task must be drawn")
        self.names = list(weights)
        self.probs = torch.tensor([weights[n] / total for n in self.names], dtype=torch.float64)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        self.__init__(weights)

    @property
    def weights(self) -> dict[str, float]:
        return {n: float(p) for n, p in zip(self.names, self.probs)}

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        idx = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        return [self.names[i] for i in idx.tolist()]
