"""Drawn faces whose mouth opening is set per frame (speech, turns and singing splits)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from klear_lightning.data.syncworld.clip import ellipse_alpha, paint

SKIN: dict[str, tuple[int, int, int]] = {"light": (235, 200, 170), "tan": (200, 150, 110), "dark": (140, 95, 65)}
HAIR: dict[str, tuple[int, int, int]] = {"black": (25, 20, 20), "brown": (110, 70, 35), "blond": (225, 195, 90)}
MOUTH_COLOUR = (70, 15, 25)
EYE_COLOUR = (20, 20, 30)


@dataclass(frozen=True)
class FaceLayout:
    """Where a face sits in the frame (pixels) and the box that holds its mouth at any opening.
    `mouth_scale` multiplies the mouth's width and opening relative to the face."""

    cy: float
    cx: float
    radius: float
    mouth_scale: float = 1.0

    @property
    def mouth_centre(self) -> tuple[float, float]:
        return self.cy + 0.45 * self.radius, self.cx

    @property
    def mouth_half_width(self) -> float:
        return 0.38 * self.mouth_scale * self.radius

    @property
    def mouth_max_half_height(self) -> float:
        return 0.28 * self.mouth_scale * self.radius

    def mouth_box(self) -> list[int]:
        """[y0, x0, y1, x1] (exclusive end) covering the mouth fully open, plus one pixel."""
        my, mx = self.mouth_centre
        hh, hw = self.mouth_max_half_height + 1, self.mouth_half_width * 1.25 + 1
        return [int(np.floor(my - hh)), int(np.floor(mx - hw)), int(np.ceil(my + hh)), int(np.ceil(mx + hw))]

    def box(self) -> list[int]:
        r = self.radius
        return [int(self.cy - r), int(self.cx - r), int(np.ceil(self.cy + r)), int(np.ceil(self.cx + r))]


def draw_face(
    frame: np.ndarray, face: FaceLayout, skin: str, hair: str, opening: float, roundness: float = 0.0
) -> None:
    """Paint one face into a float (H, W, 3) frame. opening in [0, 1]; roundness in [0, 1] narrows the mouth."""
    size = frame.shape[0]
    r = face.radius
    paint(frame, ellipse_alpha(size, face.cy - 0.35 * r, face.cx, 0.75 * r, 1.02 * r), HAIR[hair])
    paint(frame, ellipse_alpha(size, face.cy + 0.05 * r, face.cx, 0.92 * r, 0.85 * r), SKIN[skin])
    for side in (-1, 1):
        eye = ellipse_alpha(size, face.cy - 0.1 * r, face.cx + side * 0.35 * r, 0.1 * r + 0.4, 0.1 * r + 0.4)
        paint(frame, eye, EYE_COLOUR)
    my, mx = face.mouth_centre
    half_w = face.mouth_half_width * (1.0 - 0.4 * roundness)
    half_h = 0.04 * r + float(np.clip(opening, 0.0, 1.0)) * face.mouth_max_half_height
    paint(frame, ellipse_alpha(size, my, mx, half_h, half_w), MOUTH_COLOUR)


def opening_from_envelope(env: np.ndarray) -> np.ndarray:
    """Mouth opening in [0, 1] proportional to the audio envelope (so lips and sound agree)."""
    ref = 0.8 * float(np.max(env)) if env.size else 0.0
    return np.clip(env / ref, 0.0, 1.0) if ref > 0 else np.zeros_like(env)
