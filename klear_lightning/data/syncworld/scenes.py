"""The `sound` split: objects whose visible events (bounce, collision, flash) sound at that instant.

Every event lands exactly on a video frame instant k / fps and its sound starts on the audio sample
round(k / fps * sample_rate). Pitch follows size and shape; timbre follows material; colour is visual.
"""

from __future__ import annotations

import numpy as np

from klear_lightning.data.syncworld.captions import count_word, pitch_word
from klear_lightning.data.syncworld.clip import (
    SyncClip,
    SyncWorldConfig,
    blank_frames,
    box_alpha,
    ellipse_alpha,
    normalise_peak,
    paint,
    to_uint8,
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (165, 60, 205),
}
SIZES: dict[str, float] = {"small": 4.0, "medium": 6.0, "large": 9.0}  # radius in px at 64 px
SIZE_PITCH: dict[str, float] = {"small": 880.0, "medium": 523.25, "large": 261.63}
SHAPES: dict[str, float] = {"ball": 1.0, "cube": 4.0 / 3.0}  # pitch factor
MATERIALS: dict[str, tuple[tuple[float, ...], tuple[float, ...], float]] = {
    # partial ratios, partial amplitudes, decay time constant (s); a tone has decayed by 17 dB or
    # more before the next event (events are at least 0.3 s apart), so every onset stands out
    "metal": ((1.0, 2.76, 5.40), (1.0, 0.5, 0.25), 0.15),
    "wood": ((1.0, 2.57, 4.40), (1.0, 0.35, 0.15), 0.05),
    "rubber": ((1.0, 2.0), (1.0, 0.2), 0.03),
    "glass": ((1.0, 2.32, 4.25, 6.63), (1.0, 0.45, 0.3, 0.2), 0.1),
}
MATERIAL_ADJECTIVE = {"metal": "metal", "wood": "wooden", "rubber": "rubber", "glass": "glass"}
MATERIAL_SOUND = {"metal": "ringing metallic", "wood": "dry wooden", "rubber": "dull rubbery", "glass": "bright glassy"}
EVENTS: tuple[str, ...] = ("bounce", "collision", "flash")
FLOOR_COLOUR = (90, 90, 100)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "event": EVENTS,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "shape": tuple(SHAPES),
    "material": tuple(MATERIALS),
}


def object_pitch(size: str, shape: str) -> float:
    """Fundamental (Hz) of an object's impact sound: set by its size and shape."""
    return SIZE_PITCH[size] * SHAPES[shape]


def impact_sound(obj: dict[str, str], cfg: SyncWorldConfig) -> np.ndarray:
    """The decaying partials an object makes when struck, starting at sample 0."""
    ratios, amps, tau = MATERIALS[obj["material"]]
    t = np.arange(int(min(cfg.sample_rate * 6 * tau, cfg.num_samples))) / cfg.sample_rate
    f0 = object_pitch(obj["size"], obj["shape"])
    tone = sum(a * np.sin(2 * np.pi * f0 * r * t) for r, a in zip(ratios, amps) if f0 * r < cfg.sample_rate / 2)
    return (tone * np.exp(-t / tau)).astype(np.float64)


def _event_frames(rng: np.random.Generator, cfg: SyncWorldConfig, count: int) -> list[int]:
    """`count` event frames, irregularly spaced at least 0.3 s (and 3 frames) apart, off the clip's edges."""
    gap = max(3, int(np.ceil(0.3 * cfg.fps)))
    lo, hi = max(2, int(np.ceil(0.2 * cfg.fps))), cfg.num_frames - max(2, int(np.ceil(0.2 * cfg.fps)))
    count = max(1, min(count, (hi - 1 - lo) // gap + 1))
    while True:
        frames = sorted(int(f) for f in rng.choice(np.arange(lo, hi), size=count, replace=False))
        if all(b - a >= gap for a, b in zip(frames, frames[1:])):
            return frames


def _draw(frame: np.ndarray, obj: dict[str, str], cy: float, cx: float, r: float, colour) -> None:
    size = frame.shape[0]
    alpha = ellipse_alpha(size, cy, cx, r, r) if obj["shape"] == "ball" else box_alpha(size, cy, cx, r * 0.9)
    paint(frame, alpha, colour)


def _floor(frames: np.ndarray, floor_y: int) -> None:
    frames[:, floor_y:] = np.asarray(FLOOR_COLOUR, dtype=np.float32)


def _random_object(rng: np.random.Generator, exclude_colour: str | None = None) -> dict[str, str]:
    colours = [c for c in COLOURS if c != exclude_colour]
    return {
        "colour": str(rng.choice(colours)),
        "size": str(rng.choice(list(SIZES))),
        "shape": str(rng.choice(list(SHAPES))),
        "material": str(rng.choice(list(MATERIALS))),
    }


def bounce_height(
    times: np.ndarray, contacts: list[float], peaks: list[float], fall: float, ceiling: float
) -> np.ndarray:
    """Height above the floor contact of a ball that touches the floor exactly at `contacts` and nowhere
    else in the clip: held at `ceiling`, dropped over `fall` seconds onto the first contact, then one
    parabolic arc of height `peaks[i]` between contacts i and i + 1, at rest after the last."""
    height = ceiling * np.square(np.clip((contacts[0] - times) / fall, 0.0, 1.0))
    for (a, b), peak in zip(zip(contacts, contacts[1:]), peaks):
        inside = (times > a) & (times < b)
        height[inside] = 4 * peak * (times[inside] - a) * (b - times[inside]) / (b - a) ** 2
    height[times >= contacts[-1]] = 0.0
    return height


def make_sound_clip(rng: np.random.Generator, cfg: SyncWorldConfig, forced: dict[str, str] | None = None) -> SyncClip:
    """One `sound` clip; `forced` pins attributes (the hold-out rule uses it to build `ood`)."""
    forced = dict(forced or {})
    event = forced.pop("event", None) or str(rng.choice(EVENTS))
    obj = _random_object(rng)
    obj.update({k: v for k, v in forced.items() if k in obj})
    scale = cfg.size / 64.0
    radius = scale * cfg.scene.object_scale  # SIZES are radii at 64 px
    floor_y = cfg.size - int(round(6 * scale))
    frames = blank_frames(cfg)
    _floor(frames, floor_y)
    times = np.arange(cfg.num_frames) / cfg.fps
    objects = [obj]
    if event == "bounce":
        event_frames = _event_frames(rng, cfg, int(rng.integers(2, 4)))
        r = SIZES[obj["size"]] * radius
        contacts = [f / cfg.fps for f in event_frames]
        room = floor_y - 2 * r - 2
        peaks = [room * float(rng.uniform(0.6, 1.0)) for _ in contacts[1:]]
        cy = floor_y - r - bounce_height(times, contacts, peaks, min(contacts[0], 2.5 / cfg.fps), room)
        cx = rng.uniform(r + 2, cfg.size - r - 2) + rng.uniform(-4, 4) * scale * (times - times.mean())
        for k in range(cfg.num_frames):
            _draw(frames[k], obj, cy[k], cx[k], r, COLOURS[obj["colour"]])
    elif event == "collision":
        other = _random_object(rng, exclude_colour=obj["colour"])
        objects.append(other)
        event_frames = [int(rng.integers(cfg.num_frames // 3, 2 * cfg.num_frames // 3 + 1))]
        tc = event_frames[0] / cfg.fps
        r1, r2 = SIZES[obj["size"]] * radius, SIZES[other["size"]] * radius
        meet = rng.uniform(r1 + 4 * scale + 2, cfg.size - r2 - 4 * scale - 2)
        v_in, v_out = rng.uniform(14, 22) * scale, rng.uniform(6, 10) * scale
        dt = times - tc
        gap = np.where(dt < 0, -v_in * dt, v_out * dt)
        for k in range(cfg.num_frames):
            _draw(frames[k], obj, floor_y - r1, meet - r1 - gap[k], r1, COLOURS[obj["colour"]])
            _draw(frames[k], other, floor_y - r2, meet + r2 + gap[k], r2, COLOURS[other["colour"]])
    elif event == "flash":
        event_frames = _event_frames(rng, cfg, int(rng.integers(2, 4)))
        r = SIZES[obj["size"]] * radius
        cy, cx = rng.uniform(r + 4, floor_y - r - 4), rng.uniform(r + 4, cfg.size - r - 4)
        glow = np.zeros(cfg.num_frames)
        for f in event_frames:
            glow[f] = max(glow[f], 0.75)
            if f + 1 < cfg.num_frames:
                glow[f + 1] = max(glow[f + 1], 0.3)
        base = np.asarray(COLOURS[obj["colour"]], dtype=np.float32)
        for k in range(cfg.num_frames):
            _draw(frames[k], obj, cy, cx, r, tuple(base + glow[k] * (255.0 - base)))
    else:
        raise ValueError(f"unknown sound event {event!r}; expected one of {EVENTS}")

    audio = rng.normal(0.0, 1e-3, cfg.num_samples)
    for f in event_frames:
        start = int(round(f / cfg.fps * cfg.sample_rate))
        for o in objects:
            tone = impact_sound(o, cfg)[: cfg.num_samples - start]
            audio[start : start + tone.size] += tone
    event_times = [f / cfg.fps for f in event_frames]
    pitches = [object_pitch(o["size"], o["shape"]) for o in objects]
    return SyncClip(
        split="sound",
        video=to_uint8(frames),
        audio=normalise_peak(audio),
        fps=cfg.fps,
        sample_rate=cfg.sample_rate,
        video_caption=_video_caption(event, objects, len(event_frames)),
        audio_caption=_audio_caption(event, objects, len(event_frames)),
        transcript="",
        attributes={"event": event, **obj},
        annotation={
            "event": event,
            "event_times": event_times,
            "objects": [{**o, "rgb": list(COLOURS[o["colour"]]), "pitch_hz": p} for o, p in zip(objects, pitches)],
        },
    )


def _describe(obj: dict[str, str]) -> str:
    return f"{obj['size']} {obj['colour']} {MATERIAL_ADJECTIVE[obj['material']]} {obj['shape']}"


def _video_caption(event: str, objects: list[dict[str, str]], n: int) -> str:
    if event == "bounce":
        return f"A {_describe(objects[0])} bounces on the floor {count_word(n)}."
    if event == "collision":
        return f"A {_describe(objects[0])} and a {_describe(objects[1])} slide together and collide once."
    return f"A {_describe(objects[0])} flashes {count_word(n)}."


def _audio_caption(event: str, objects: list[dict[str, str]], n: int) -> str:
    hits = " and ".join(
        f"a {pitch_word(object_pitch(o['size'], o['shape']))} {MATERIAL_SOUND[o['material']]} tone" for o in objects
    )
    return f"{hits[0].upper()}{hits[1:]}, sounding {count_word(n)}, at each {event}."
