"""Scores of one decoded clip, computed from its samples and pixels alone (no model weights).

Each function takes the clip's arrays and returns a number; `filters.py` compares them with the
thresholds of the config. Audio is mono float32 in [-1, 1]; video uint8 (T, H, W, 3).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FRAME_S = 0.02  # audio analysis frame (s)
EPS = 1e-10


def luminance(video: np.ndarray) -> np.ndarray:
    """(T, H, W) float32 luma (BT.601) of uint8 RGB frames."""
    return video.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def frame_power(audio: np.ndarray, sample_rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    """Mean square per non-overlapping frame of `frame_s` seconds."""
    hop = max(1, int(frame_s * sample_rate))
    n = audio.size // hop
    return np.square(audio[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1) if n else np.zeros(0)


def silence_ratio(audio: np.ndarray, sample_rate: int, floor_db: float) -> float:
    """Fraction of 20 ms frames quieter than `floor_db` dBFS (RMS)."""
    p = frame_power(audio, sample_rate)
    return float(np.mean(10 * np.log10(p + EPS) < floor_db)) if p.size else 1.0


def snr_db(audio: np.ndarray, sample_rate: int, cap_db: float = 60.0) -> float:
    """Blind SNR estimate: power of the loudest 20 ms frames (95th percentile) over the noise floor
    (10th percentile of the frames that are not digital silence), in dB, at most `cap_db`."""
    p = frame_power(audio, sample_rate)
    audible = p[p > 10 ** (-90 / 10)]
    if audible.size < 4:
        return 0.0
    return float(min(cap_db, 10 * np.log10((np.percentile(audible, 95) + EPS) / (np.percentile(audible, 10) + EPS))))


def clipping_ratio(audio: np.ndarray, min_run: int = 3, level: float = 0.99) -> float:
    """Samples in flat runs (>= `min_run` samples) at the clip's peak magnitude (>= `level` x peak),
    as a fraction of the loud samples (>= a quarter of the peak, so pauses do not dilute it): hard
    clipping holds the waveform there, a loud but clean tone does not."""
    mag = np.abs(audio.astype(np.float64))
    peak = mag.max() if mag.size else 0.0
    if peak <= 0:
        return 0.0
    at_peak = np.concatenate([[False], mag >= level * peak, [False]])
    edges = np.flatnonzero(np.diff(at_peak.astype(np.int8)))
    runs = edges[1::2] - edges[0::2]
    return float(runs[runs >= min_run].sum() / np.count_nonzero(mag >= 0.25 * peak))


def frame_differences(video: np.ndarray) -> np.ndarray:
    """Mean |luma difference| (0-255) between consecutive frames, (T - 1,)."""
    y = luminance(video)
    return np.abs(np.diff(y, axis=0)).mean(axis=(1, 2)) if len(y) > 1 else np.zeros(0)


def static_ratio(video: np.ndarray, still: float = 0.05) -> float:
    """Fraction of consecutive frame pairs that differ by less than `still` grey levels on average
    (a frozen video is all static; a talking head between words only partly)."""
    d = frame_differences(video)
    return float(np.mean(d < still)) if d.size else 1.0


def sharpness(video: np.ndarray) -> float:
    """Variance of the Laplacian of the middle frame's luma (higher = sharper)."""
    y = luminance(video[len(video) // 2 : len(video) // 2 + 1])[0]
    return float(ndimage.laplace(y).var())


def envelope(audio: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray:
    """Audio RMS over each video frame's duration, (frames,)."""
    edges = np.round(np.arange(frames + 1) / fps * sample_rate).astype(int)
    out = np.zeros(frames)
    for i in range(frames):
        seg = audio[edges[i] : edges[i + 1]]
        out[i] = np.sqrt(np.mean(np.square(seg, dtype=np.float64))) if seg.size else 0.0
    return out


def _zscore(x: np.ndarray, axis: int = 0) -> np.ndarray:
    x = x - x.mean(axis=axis, keepdims=True)
    return x / (np.sqrt(np.mean(x**2, axis=axis, keepdims=True)) + EPS)


def pixel_correlation(
    video: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    fps: float,
    max_lag: int,
    changes: bool = False,
    side: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of every pixel's luma series (frames resized to at most `side` px) with the
    audio's per-frame RMS envelope delayed by each lag in -max_lag..max_lag frames (a positive lag:
    the sound comes after the picture), over the overlapping frames; with `changes`, of their
    frame-to-frame differences instead (sharper peaks for slow movements). Returns (lags, corr (L, h, w))."""
    y = luminance(video)
    step = max(1, max(y.shape[1], y.shape[2]) // side)
    y = y[:, ::step, ::step]
    env = envelope(audio, sample_rate, fps, video.shape[0])
    if changes:
        y, env = np.diff(y, axis=0), np.diff(env)
    t = y.shape[0]
    lags = np.arange(-max_lag, max_lag + 1)
    out = np.zeros((len(lags), *y.shape[1:]))
    for i, lag in enumerate(lags):
        a, b = (y[: t - lag], env[lag:]) if lag >= 0 else (y[-lag:], env[: t + lag])
        if len(b) < 4 or b.std() < EPS:
            continue
        out[i] = np.mean(_zscore(a) * _zscore(b)[:, None, None], axis=0) * (a.std(axis=0) > EPS)
    return lags, out


def av_offset_xcorr(
    video: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_offset_s: float, top: float = 0.01
) -> tuple[float, float]:
    """Audio-visual offset (s, positive = sound late) by energy/motion cross-correlation: for each lag,
    the mean |correlation| of the best `top` fraction of pixels with the audio envelope, weighed by
    sqrt(overlapping frames), summed over levels and frame-to-frame changes; the offset is the best
    lag, the confidence its score minus the median over lags. A weight-free stand-in for
    Synchformer on short clips whose sound follows what moves."""
    max_lag = max(1, int(round(max_offset_s * fps)))
    total = np.zeros(2 * max_lag + 1)
    for changes in (False, True):
        lags, corr = pixel_correlation(video, audio, sample_rate, fps, max_lag, changes)
        flat = np.abs(corr.reshape(len(lags), -1))
        k = max(8, int(top * flat.shape[1]))
        frames = video.shape[0] - int(changes)
        total += np.sort(flat, axis=1)[:, -k:].mean(axis=1) * np.sqrt((frames - np.abs(lags)) / frames)
    best = int(np.argmax(total))
    return float(lags[best] / fps), float(total[best] - np.median(total))


def moving_regions(video: np.ndarray, rel: float = 0.3) -> int:
    """How many separate image regions move: pixels whose luma's standard deviation over time
    reaches `rel` x the largest, grouped when closer than a sixteenth of the frame side. For a
    talking-head shot with a still camera these are the mouths (a weight-free stand-in for face
    tracks, which real footage needs)."""
    sd = luminance(video).std(axis=0)
    if sd.max() <= 0:
        return 0
    grown = ndimage.binary_dilation(sd >= rel * sd.max(), iterations=max(1, max(sd.shape) // 16))
    return int(ndimage.label(grown)[1])


def voicing(audio: np.ndarray, sample_rate: int, fmin: float = 70.0, fmax: float = 1000.0) -> tuple[float, float]:
    """(periodic, sustain): the fraction of audible 40 ms frames that are periodic (normalised
    autocorrelation peak >= 0.7 between fmin and fmax), and the median over audible stretches of
    their last-quarter RMS over their peak RMS (struck sounds decay, voices hold)."""
    hop = int(0.04 * sample_rate)
    n = audio.size // hop
    if n < 2:
        return 0.0, 0.0
    frames = audio[: n * hop].astype(np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    audible = rms > 0.1 * rms.max() if rms.max() > 0 else np.zeros(n, bool)
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    periodic = []
    for f in frames[audible]:
        x = f - f.mean()
        ac = np.correlate(x, x, "full")[hop - 1 :]
        periodic.append(ac[0] > 0 and ac[lo:hi].max() / ac[0] >= 0.7)
    labels, count = ndimage.label(audible)
    sustains = []
    for i in range(1, count + 1):
        seg = rms[labels == i]
        if seg.size >= 3:
            sustains.append(seg[-max(1, seg.size // 4) :].mean() / seg.max())
    return float(np.mean(periodic)) if periodic else 0.0, float(np.median(sustains)) if sustains else 0.0
