"""Measure SyncWorld's ground-truth quantities back from media (pixels and samples), no learned model.

Used by the exact metrics (`klear_lightning.metrics.syncworld`) on generated clips and by the tests
on decoded real clips. Video is float (T, H, W, 3) RGB in [0, 255]; audio is float (N,) mono.
Lags are audio minus video: positive means the audio is late.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klear_lightning.data.syncworld.clip import frame_envelope
from klear_lightning.data.syncworld.faces import MOUTH_COLOUR, SKIN
from klear_lightning.data.syncworld.scenes import COLOURS

ONSET_HOP_S, ONSET_WIN_S = 0.005, 0.01
ONSET_RISE_DB, ONSET_LOUD_DB, ONSET_GAP_S, ONSET_LOOK_S = 9.0, 15.0, 0.2, 0.03
COLOUR_RADIUS = 70.0
LAG_STEP_S = 0.005


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


# ----- audio ---------------------------------------------------------------------------------------


def audio_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset times (s) of percussive events.

    Log energy in 10 ms windows every 5 ms. A candidate is a window whose level rises more than
    ONSET_RISE_DB above the minimum over the previous ONSET_LOOK_S and whose peak within the next
    ONSET_LOOK_S comes within ONSET_LOUD_DB of the clip's loudest window (so codec artefacts in decay
    tails are not events); candidates closer than ONSET_GAP_S to the previous onset are dropped.
    The onset time is the centre of the first window within 6 dB of that peak, which keeps the
    estimate unbiased by smearing codecs (Griffin-Lim spreads an attack over its STFT window).
    """
    hop, win = int(ONSET_HOP_S * sample_rate), int(ONSET_WIN_S * sample_rate)
    if audio.size < win:
        return np.zeros(0)
    starts = np.arange(0, audio.size - win + 1, hop)
    db = 10 * np.log10(np.array([np.mean(np.square(audio[s : s + win])) for s in starts]) + 1e-12)
    look = int(round(ONSET_LOOK_S / ONSET_HOP_S))
    onsets: list[float] = []
    for j in range(look, db.size):
        peak = j + int(np.argmax(db[j : j + look + 1]))
        if db[j] - db[j - look : j].min() <= ONSET_RISE_DB or db[peak] < db.max() - ONSET_LOUD_DB:
            continue
        first = j - look + int(np.flatnonzero(db[j - look : peak + 1] >= db[peak] - 6.0)[0])
        t = (starts[first] + win / 2) / sample_rate
        if not onsets or t - onsets[-1] > ONSET_GAP_S:
            onsets.append(t)
    return np.asarray(onsets)


def estimate_f0(segment: np.ndarray, sample_rate: int, fmin: float = 80.0, fmax: float = 1600.0) -> float:
    """Fundamental (Hz) of a periodic segment: the first autocorrelation peak within 90 % of the
    highest (no octave-down errors), parabolically refined; NaN when undefined."""
    x = segment - segment.mean()
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * x.size)) ** 2)[: x.size]
    lo, hi = int(sample_rate / fmax), min(int(sample_rate / fmin), x.size - 2)
    if hi <= lo or ac[0] <= 0:
        return float("nan")
    region = ac[lo:hi]
    lag = lo + int(np.flatnonzero(region >= 0.9 * region.max())[0])
    while lag + 1 < hi and ac[lag + 1] > ac[lag]:
        lag += 1
    a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
    curvature = a - 2 * b + c
    return sample_rate / (lag + (0.5 * (a - c) / curvature if curvature != 0 else 0.0))


def voiced_segments(audio: np.ndarray, sample_rate: int, min_s: float = 0.12) -> list[tuple[int, int]]:
    """Sample ranges where the 10 ms RMS exceeds a tenth of its maximum, at least `min_s` long."""
    hop = int(0.01 * sample_rate)
    rms = np.array([np.sqrt(np.mean(np.square(audio[i : i + hop]))) for i in range(0, audio.size - hop + 1, hop)])
    active = rms > 0.1 * rms.max() if rms.size and rms.max() > 0 else np.zeros(rms.size, bool)
    segments, start = [], None
    for j, on in enumerate(np.append(active, False)):
        if on and start is None:
            start = j
        elif not on and start is not None:
            if (j - start) * hop >= min_s * sample_rate:
                segments.append((start * hop, j * hop))
            start = None
    return segments


def note_pitches(audio: np.ndarray, sample_rate: int) -> list[float]:
    """Fundamental (Hz) of each voiced segment, measured over its middle half."""
    out = []
    for a, b in voiced_segments(audio, sample_rate):
        q = (b - a) // 4
        out.append(estimate_f0(audio[a + q : b - q], sample_rate))
    return out


def dominant_pitch(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak between 100 Hz and 4 kHz (Hann window)."""
    spec = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    freqs = np.fft.rfftfreq(audio.size, 1 / sample_rate)
    band = (freqs >= 100) & (freqs <= 4000)
    return float(freqs[band][np.argmax(spec[band])])


def semitones(measured: float, expected: float) -> float:
    """|interval| in semitones; infinite for a missing or non-positive measurement."""
    return abs(12 * np.log2(measured / expected)) if measured > 0 and np.isfinite(measured) else float("inf")


# ----- video ---------------------------------------------------------------------------------------


def colour_track(video: np.ndarray, rgb: tuple[int, int, int] | list[int]) -> np.ndarray:
    """(T, 2) centroid (y, x) of the pixels within COLOUR_RADIUS of `rgb`; NaN where none."""
    dist = np.linalg.norm(video - np.asarray(rgb, dtype=np.float32), axis=-1)
    out = np.full((video.shape[0], 2), np.nan)
    for k, mask in enumerate(dist < COLOUR_RADIUS):
        ys, xs = np.nonzero(mask)
        if ys.size:
            out[k] = ys.mean(), xs.mean()
    return out


def peak_frames(signal: np.ndarray, fps: float, keep: float, rise: float, tol: float) -> list[int]:
    """Frames where `signal` peaks: in the upper `1 - keep` of its range, the first frame within `tol`
    of the maximum over +-w frames (w spans 0.125 s), and more than `rise` above its minimum over the
    w frames before (so a plateau with codec noise on it is not a new event). NaN never peaks."""
    finite = np.isfinite(signal)
    if finite.sum() < 3:
        return []
    lo, hi = float(np.nanmin(signal)), float(np.nanmax(signal))
    s = np.where(finite, signal, -np.inf)
    w = max(1, int(np.ceil(0.125 * fps - 1e-9)))
    peaks = []
    for k in range(1, s.size - 1):
        before, around = s[max(0, k - w) : k], s[max(0, k - w) : k + w + 1]
        if (
            s[k] >= lo + keep * (hi - lo)
            and s[k] >= around.max() - tol
            and s[k - 1] < s[k] - tol
            and s[k] - np.min(before[np.isfinite(before)], initial=np.inf) > rise
        ):
            peaks.append(k)
    return peaks


def visual_events(video: np.ndarray, fps: float, annotation: dict[str, Any]) -> np.ndarray:
    """Times (s) of the visible events of a `sound` clip, of the kind its annotation names:
    bounce = lowest point of the tracked object, collision = closest approach of the two objects,
    flash = peak of the brightness above each pixel's median."""
    kind, objects = annotation["event"], annotation["objects"]
    if kind == "bounce":
        frames = peak_frames(colour_track(video, objects[0]["rgb"])[:, 0], fps, keep=0.75, rise=1.0, tol=0.25)
    elif kind == "collision":
        a, b = (colour_track(video, o["rgb"])[:, 1] for o in objects[:2])
        closeness = -np.abs(a - b)
        peaks = peak_frames(closeness, fps, keep=0.9, rise=1.0, tol=0.25)
        frames = [max(peaks, key=lambda k: closeness[k])] if peaks else []
    elif kind == "flash":
        lum = luminance(video)
        glow = np.clip(lum - np.median(lum, axis=0), 0, None).sum(axis=(1, 2))
        frames = peak_frames(glow, fps, keep=0.4, rise=max(20.0, 0.25 * glow.max()), tol=0.02 * glow.max())
    else:
        raise ValueError(f"unknown SyncWorld event kind {kind!r}")
    return np.asarray(frames, dtype=np.float64) / fps


def dominant_colours(video: np.ndarray, count: int) -> list[str]:
    """The `count` palette colours covering the most pixels over the clip."""
    flat = video.reshape(-1, 3)
    cover = {
        name: int((np.linalg.norm(flat - np.asarray(rgb, np.float32), axis=-1) < COLOUR_RADIUS).sum())
        for name, rgb in COLOURS.items()
    }
    return sorted(cover, key=lambda n: -cover[n])[:count]


def scaled_box(box: list[int], frame_size: list[int] | None, video: np.ndarray) -> list[int]:
    """An annotation box [y0, x0, y1, x1] drawn at `frame_size` (H, W), in `video`'s pixels (the
    DataModule may have resized the clip; SyncWorld frames are square, so the aspect is kept)."""
    if not frame_size:
        return list(box)
    sy, sx = video.shape[1] / frame_size[0], video.shape[2] / frame_size[1]
    y0, x0, y1, x1 = box
    return [int(np.floor(y0 * sy)), int(np.floor(x0 * sx)), int(np.ceil(y1 * sy)), int(np.ceil(x1 * sx))]


def mouth_opening(video: np.ndarray, face: dict[str, Any], frame_size: list[int] | None = None) -> np.ndarray:
    """(T,) mouth height in pixels: darkness relative to the skin tone, summed down the three
    central columns of the face's mouth box and averaged (independent of the mouth's width)."""
    y0, x0, y1, x1 = scaled_box(face["mouth_box"], frame_size, video)
    centre = (x0 + x1) // 2
    region = luminance(video[:, max(y0, 0) : y1, max(centre - 1, 0) : centre + 2])
    skin = float(luminance(np.asarray(SKIN[face["skin"]], dtype=np.float32)))
    mouth = float(luminance(np.asarray(MOUTH_COLOUR, dtype=np.float32)))
    return np.clip((skin - region) / (skin - mouth), 0.0, 1.0).sum(axis=1).mean(axis=-1)


# ----- audio against video -------------------------------------------------------------------------


def event_lag(
    visual: np.ndarray, onsets: np.ndarray, duration: float, tolerance: float, max_lag: float
) -> tuple[float, float]:
    """(lag s, matched fraction) of the audio-minus-video shift that best pairs events with onsets.

    Candidate lags step by LAG_STEP_S. A lag scores matched events minus events and onsets left
    unmatched where their partner would fall inside the clip by more than `tolerance`; ties go to
    the smallest squared residual, then the smallest |lag|. The matched fraction is taken at that
    lag over the events whose partner falls inside the clip.
    """
    best: tuple[float, float, float, float] | None = None  # (-score, residual, lag, matched fraction)
    steps = int(round(max_lag / LAG_STEP_S))
    for lag in np.arange(-steps, steps + 1) * LAG_STEP_S:
        d = (onsets[None, :] - lag) - visual[:, None]
        near = np.abs(d) <= tolerance
        ev_in = (visual + lag >= tolerance) & (visual + lag < duration - tolerance)
        on_in = (onsets - lag >= tolerance) & (onsets - lag < duration - tolerance)
        ev_hit = near.any(axis=1)
        score = (ev_hit & ev_in).sum() - (~ev_hit & ev_in).sum() - (~near.any(axis=0) & on_in).sum()
        residual = float(np.sum(np.min(np.abs(d), axis=1)[ev_hit] ** 2))
        key = (-float(score), residual, float(lag), float((ev_hit & ev_in).sum() / max(ev_in.sum(), 1)))
        if best is None or key[:2] < best[:2] or (key[:2] == best[:2] and abs(lag) < abs(best[2])):
            best = key
    return best[2], best[3]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def lag_correlations(mouth: np.ndarray, envelope: np.ndarray, max_lag: int) -> dict[int, float]:
    """Pearson correlation of mouth[k] with envelope[k + lag] for lag in [-max_lag, max_lag]
    (0 where either side is constant)."""
    n = mouth.size
    return {
        lag: _pearson(mouth[max(0, -lag) : n - max(0, lag)], envelope[max(0, lag) : n + min(0, lag)])
        for lag in range(-max_lag, max_lag + 1)
    }


def lip_sync(
    video: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int, annotation: dict[str, Any], max_lag_s: float
) -> tuple[float, float]:
    """(correlation at lag 0, best lag s) between the summed mouth opening of the annotated faces and
    the audio RMS envelope per frame. With no positive correlation at any lag the best lag is
    reported as the largest searched."""
    size = annotation.get("frame_size")
    mouth = sum(mouth_opening(video, face, size) for face in annotation["faces"])
    env = frame_envelope(audio, sample_rate, fps, video.shape[0])
    max_lag = max(1, int(round(max_lag_s * fps)))
    corr = lag_correlations(mouth, env, max_lag)
    best = max(corr, key=lambda lag: (round(corr[lag], 9), -abs(lag)))
    return corr[0], (best if corr[best] > 0.0 else max_lag) / fps


def turn_sequence(
    video: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int, annotation: dict[str, Any]
) -> list[str]:
    """Speakers in the order their mouths move while the audio is active (frames where the envelope
    exceeds a fifth of its maximum; the face whose mouth is open widest speaks; runs collapsed)."""
    size, faces = annotation.get("frame_size"), annotation["faces"]
    moving = np.stack([(m := mouth_opening(video, f, size)) - m.min() for f in faces])
    env = frame_envelope(audio, sample_rate, fps, video.shape[0])
    active = (env > 0.2 * env.max()) & (moving.max(axis=0) > 0.05 * max(moving.max(), 1e-6))
    labels = [faces[int(i)]["speaker"] for i in moving.argmax(axis=0)[active]]
    return [s for i, s in enumerate(labels) if i == 0 or s != labels[i - 1]]


def sequence_similarity(measured: list[str], expected: list[str]) -> float:
    """1 - Levenshtein distance / max length (1 for equal sequences, 0 for nothing in common)."""
    rows = list(range(len(expected) + 1))
    for i, m in enumerate(measured, 1):
        prev, rows[0] = rows[:], i
        for j, e in enumerate(expected, 1):
            rows[j] = min(prev[j] + 1, rows[j - 1] + 1, prev[j - 1] + (m != e))
    return 1.0 - rows[-1] / max(len(measured), len(expected), 1)
