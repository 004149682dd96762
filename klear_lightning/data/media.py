"""Media I/O with PyAV: mp4 / FLAC encoding, decoding any container by content, resize and resample.

Containers are recognised by probing their bytes, never by file extension, so an mp4 named `.mkv`
or a webm named `.mp4` decodes. Every failure raises MediaError naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from einops import rearrange

AAC_FRAME = 1024


class MediaError(ValueError):
    """Media that cannot be decoded or encoded; the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Decoded:
    """Decoded media. video uint8 (T, H, W, 3) or None; frame_times (T,) seconds; audio float32 (N,) or None."""

    video: np.ndarray | None
    frame_times: np.ndarray | None
    fps: float
    audio: np.ndarray | None
    sample_rate: int
    container: str


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"h264 yuv420p needs even height and width, got {frames.shape[1:3]}")


def _add_video(container: av.container.OutputContainer, frames: np.ndarray, fps: float, crf: int) -> av.VideoStream:
    stream = container.add_stream("libx264", rate=_rate(fps))
    stream.height, stream.width = frames.shape[1], frames.shape[2]
    stream.pix_fmt = "yuv420p"
    # One thread and no macroblock-tree rate control: x264's mbtree was seen to give different bytes
    # for identical input; without it the same frames always encode to the same bytes.
    stream.thread_count = 1
    stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "threads=1:mbtree=0"}
    return stream


def _video_packets(stream: av.VideoStream, frames: np.ndarray):
    for i, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        frame.pts = i
        yield from stream.encode(frame)
    yield from stream.encode()


def encode_video(frames: np.ndarray, fps: float, crf: int = 12) -> bytes:
    """uint8 (T, H, W, 3) RGB frames -> mp4 (h264, yuv420p) bytes."""
    _check_frames(frames)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = _add_video(container, frames, fps, crf)
        for packet in _video_packets(stream, frames):
            container.mux(packet)
    return buf.getvalue()


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    """float32 (N,) mono in [-1, 1] -> 24-bit FLAC bytes; decode gives back N samples exactly."""
    if wave.ndim != 1:
        raise ValueError(f"audio must be mono (N,), got shape {wave.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0 - 2.0**-23), sample_rate, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


def decode_flac(data: bytes, name: str) -> tuple[np.ndarray, int]:
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError("bad_audio", f"{name}: cannot decode FLAC: {e}") from e
    return wave.mean(axis=1).astype(np.float32), int(sr)


def encode_av(frames: np.ndarray, fps: float, wave: np.ndarray, sample_rate: int, crf: int = 18) -> bytes:
    """An mp4 with h264 video and AAC mono audio, for `klear generate` and media logging."""
    _check_frames(frames)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        vstream = _add_video(container, frames, fps, crf)
        astream = container.add_stream("aac", rate=sample_rate)
        astream.layout = "mono"
        for packet in _video_packets(vstream, frames):
            container.mux(packet)
        wave = np.clip(wave.astype(np.float32), -1.0, 1.0)
        for start in range(0, wave.shape[0], AAC_FRAME):
            chunk = wave[start : start + AAC_FRAME]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_media(
    source: bytes | Path,
    name: str | None = None,
    sample_rate: int | None = None,
    video: bool = True,
    audio: bool = True,
) -> Decoded:
    """Decode the first video and audio streams of any container, probing its content.

    Audio is downmixed to mono float32 and resampled to `sample_rate` (native rate if None).
    """
    name = name or str(source if isinstance(source, Path) else "<bytes>")
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
    except OSError as e:
        raise MediaError("unreadable", f"{name}: cannot read: {e}") from e
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            vs = container.streams.video[0] if video and container.streams.video else None
            ast = container.streams.audio[0] if audio and container.streams.audio else None
            if vs is None and ast is None:
                raise MediaError("no_streams", f"{name}: no video or audio stream")
            if vs is not None:
                vs.thread_count = 1  # per-clip decoder threads cost more than they save; parallelism is per process
            to_rgb = av.video.reformatter.VideoReformatter()
            rate = sample_rate or (ast.rate if ast is not None else 0)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate) if ast is not None else None
            frames, times, chunks = [], [], []
            for frame in container.decode(*(s for s in (vs, ast) if s is not None)):
                if isinstance(frame, av.VideoFrame):
                    frames.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
                    times.append(
                        float(frame.time) if frame.time is not None else len(times) / float(vs.average_rate or 1)
                    )
                else:
                    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
            fps = float(vs.average_rate or vs.guessed_rate or 0) if vs is not None else 0.0
            container_format = container.format.name
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as e:
        raise MediaError("undecodable", f"{name}: cannot decode: {e}") from e
    if vs is not None and not frames:
        raise MediaError("truncated", f"{name}: video stream has no decodable frames")
    wave = np.concatenate(chunks).astype(np.float32) if chunks else None
    if ast is not None and (wave is None or wave.size == 0):
        raise MediaError("empty_audio", f"{name}: audio stream has no decodable samples")
    return Decoded(
        video=np.stack(frames) if frames else None,
        frame_times=np.asarray(times, dtype=np.float64) if frames else None,
        fps=fps,
        audio=wave,
        sample_rate=rate,
        container=container_format,
    )


def retime(frames: np.ndarray, frame_times: np.ndarray, fps: float, count: int, start: float = 0.0) -> np.ndarray:
    """Resample a (possibly variable-rate) frame sequence to `count` frames at `fps` from `start` s.

    Output frame i shows the last source frame whose timestamp is <= start + i / fps.
    """
    t0 = frame_times - frame_times[0]
    wanted = start + np.arange(count) / fps + 1e-6
    idx = np.clip(np.searchsorted(t0, wanted, side="right") - 1, 0, len(frames) - 1)
    return frames[idx]


def nearest_resolution(
    h: int, w: int, resolutions: list[tuple[int, int]] | tuple[tuple[int, int], ...]
) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest h / w (the larger one on a tie)."""
    return min(resolutions, key=lambda r: (abs(np.log((r[0] / r[1]) / (h / w))), -r[0] * r[1]))


def fit_video(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (antialiased, aspect kept) so the frame covers height x width, then center-crop."""
    t, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    x = rearrange(torch.from_numpy(frames), "t h w c -> t c h w").float()
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return rearrange(x.round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c").numpy()


def resample_audio(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited polyphase resampling of mono float32 audio."""
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)


def write_spectrogram_png(wave: np.ndarray, sample_rate: int, path: Path, title: str = "") -> Path:
    """A log-magnitude spectrogram image (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.specgram(wave, Fs=sample_rate, NFFT=512, noverlap=384, cmap="magma")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
