"""DeSync / AV-A: audio-visual offset predicted by Synchformer (Iashin et al. 2024).

The network is implemented in the key layout of the released `synchformer_state_dict.pth` (read
by av-benchmark and MMAudio) and of Synchformer's training checkpoints (the same weights under
`model`, beside an OmegaConf `args` entry that is read as an inert record, never run):
`vfeat_extractor` (MotionFormer), `afeat_extractor` (AST on log-mel), `vproj` / `aproj`,
`transformer` (offset classifier, 21 classes from -2 s to +2 s). The official code, run on the same
seeded weights, gives the same logits (`benchmarks/parity/synchformer.py`).

Both protocols cut 25 fps video and 16 kHz mono audio into 0.64 s segments with a 0.32 s hop
(16 frames / hop 8; 10240 samples / hop 5120), scale pixels to [-1, 1] and take log-mel as AST does.
- `desync_avbench` (av-benchmark): short side resized to 224 (bicubic) and centre-cropped; windows
  of 14 segments (4.8 s) at the start and the end of the clip; mean |offset|.
- `desync_versebench` (Verse-Bench AV-A, `syncformer_inferencer.py` + its `cfg.yaml`): short side
  resized to 256 (cropped to even sizes, as its ffmpeg re-encode), centre crop 224; the first 4 s
  of the clip (shorter clips are counted apart: Verse-Bench's code fails on them); 11 segments
  starting at frame 2 (audio sample 1280), pixels divided by 255 in float16 as its transforms do;
  the top-1 offset of that one window, signed, averaged over clips. The released checkpoint's
  positional table has 198 rows (14 segments); Verse-Bench's loader trims it to the 156 rows its
  11-segment window needs, and this protocol does the same, explicitly. Anywhere else a window
  whose token count differs from the table is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio, resample
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric
from klear_lightning.metrics.nets.synchformer import (
    AUDIO_TOKENS,
    MEL_FRAMES,
    SEGMENT_FRAMES,
    VIDEO_TOKENS,
    Synchformer,
    load_synchformer,
)
from klear_lightning.metrics.video_prep import normalized, resample_video

VIDEO_FPS = 25.0
AUDIO_SR = 16000
SEGMENT_HOP_FRAMES = 8
SEGMENT_SAMPLES = 10240
SEGMENT_HOP_SAMPLES = 5120
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974  # Synchformer's log-mel statistics (av-benchmark)
OFFSET_GRID = torch.linspace(-2.0, 2.0, 21)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """HTK-scale triangular filters without area normalisation, shape (n_freqs, n_mels)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    pts = 700.0 * (10 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    diff, slopes = pts[1:] - pts[:-1], pts[None, :] - freqs[:, None]
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def log_mel(segments: Tensor, mel_bins: int = 128) -> Tensor:
    """(..., 10240) waveform segments -> normalised log-mel (..., 128, 66) as Synchformer expects."""
    lead = segments.shape[:-1]
    flat = segments.reshape(-1, segments.shape[-1])
    window = F.pad(torch.hann_window(400), (312, 312))
    spec = (
        torch.stft(
            flat, n_fft=1024, hop_length=160, window=window, center=True, pad_mode="reflect", return_complex=True
        ).abs()
        ** 2
    )
    mel = torch.einsum("nft,fm->nmt", spec, mel_filterbank(513, mel_bins, AUDIO_SR))
    mel = torch.log(mel + 1e-6)
    mel = F.pad(mel, (0, max(0, MEL_FRAMES - mel.shape[-1])))[..., :MEL_FRAMES]
    mel = (mel - MEL_MEAN) / (2 * MEL_STD)
    return mel.reshape(*lead, *mel.shape[-2:])


def segment_count(num_frames: int) -> int:
    """Number of 16-frame segments with hop 8 in a 25 fps video of `num_frames` frames."""
    return max(0, (num_frames - SEGMENT_FRAMES) // SEGMENT_HOP_FRAMES + 1)


def window_segments(window_seconds: float) -> int:
    """Segments in a window: 4.8 s -> 14 (av-benchmark), 3.84 s -> 11."""
    hop = SEGMENT_HOP_FRAMES / VIDEO_FPS
    return int(round((window_seconds - SEGMENT_FRAMES / VIDEO_FPS) / hop)) + 1


@dataclass(frozen=True)
class SyncInputs:
    """One clip cut into aligned segments: video (S, 3, 16, H, W), mel (S, 128, 66)."""

    video: Tensor
    mel: Tensor

    @property
    def segments(self) -> int:
        return self.video.shape[0]


def prepare_clip(
    video: Tensor, fps: float, audio: Tensor, sample_rate: int, image_size: int = 224, mel_bins: int = 128
) -> SyncInputs:
    """Resample, resize and cut a clip into the segments shared by both modalities."""
    frames = resample_video(video, fps, VIDEO_FPS)
    wave = resample(audio, sample_rate, AUDIO_SR)
    n_audio = max(0, (wave.shape[0] - SEGMENT_SAMPLES) // SEGMENT_HOP_SAMPLES + 1)
    n = min(segment_count(frames.shape[0]), n_audio)
    if n == 0:
        return SyncInputs(
            video=torch.zeros(0, 3, SEGMENT_FRAMES, image_size, image_size), mel=torch.zeros(0, mel_bins, MEL_FRAMES)
        )
    pixels = normalized(frames[: (n - 1) * SEGMENT_HOP_FRAMES + SEGMENT_FRAMES], image_size, (0.5,) * 3, (0.5,) * 3)
    v_idx = torch.arange(n)[:, None] * SEGMENT_HOP_FRAMES + torch.arange(SEGMENT_FRAMES)
    a_idx = torch.arange(n)[:, None] * SEGMENT_HOP_SAMPLES + torch.arange(SEGMENT_SAMPLES)
    return SyncInputs(video=rearrange(pixels[v_idx], "s t c h w -> s c t h w"), mel=log_mel(wave[a_idx], mel_bins))


VERSEBENCH_SHORT_SIDE = 256
VERSEBENCH_CROP_FRAMES = 100  # its TemporalCropAndOffset: the first 4 s
VERSEBENCH_START_FRAME = 2  # its GenerateMultipleSegments centres 96 frames in those 100
VERSEBENCH_SEGMENTS = 11


def versebench_pixels(frames: Tensor, image_size: int = 224) -> Tensor:
    """Verse-Bench's frames: uint8 (T, H, W, 3) -> (T, 3, size, size) in [-1, 1]. Short side to 256
    (bicubic; sizes truncated, then cropped to even, as its ffmpeg re-encode), centre crop
    `round((side - size) / 2)`, divided by 255 and normalised in float16 as its transforms do."""
    x = rearrange(frames, "t h w c -> t c h w").float()
    h, w = x.shape[-2:]
    nh, nw = int(h * VERSEBENCH_SHORT_SIDE / min(h, w)), int(w * VERSEBENCH_SHORT_SIDE / min(h, w))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    eh, ew = nh // 2 * 2, nw // 2 * 2
    top, left = (
        (nh - eh) // 2 + int(round((eh - image_size) / 2.0)),
        (nw - ew) // 2 + int(round((ew - image_size) / 2.0)),
    )
    x = x[..., top : top + image_size, left : left + image_size]
    return ((x.half() / 255.0 - 0.5) / 0.5).float()


def versebench_window(
    video: Tensor, fps: float, audio: Tensor, sample_rate: int, image_size: int = 224, mel_bins: int = 128
) -> SyncInputs | None:
    """Verse-Bench's one window of 11 segments from frame 2 (audio sample 1280) of the first 4 s;
    None when the clip (video and audio cut to the shorter, at most 10 s) is under 4 s."""
    frames = resample_video(video, fps, VIDEO_FPS)
    wave = resample(audio, sample_rate, AUDIO_SR)
    seconds = min(10.0, wave.shape[0] / AUDIO_SR, frames.shape[0] / VIDEO_FPS)
    if int(VIDEO_FPS * seconds) < VERSEBENCH_CROP_FRAMES:
        return None
    span = (VERSEBENCH_SEGMENTS - 1) * SEGMENT_HOP_FRAMES + SEGMENT_FRAMES
    first = VERSEBENCH_START_FRAME
    pixels = versebench_pixels(frames[first : first + span], image_size)
    a0 = int(first / VIDEO_FPS * AUDIO_SR)
    v_idx = torch.arange(VERSEBENCH_SEGMENTS)[:, None] * SEGMENT_HOP_FRAMES + torch.arange(SEGMENT_FRAMES)
    a_idx = a0 + torch.arange(VERSEBENCH_SEGMENTS)[:, None] * SEGMENT_HOP_SAMPLES + torch.arange(SEGMENT_SAMPLES)
    return SyncInputs(video=rearrange(pixels[v_idx], "s t c h w -> s c t h w"), mel=log_mel(wave[a_idx], mel_bins))


class DeSync(ClipMetric):
    """Offset (s) per window, too-short clips counted apart. `protocol_kind`:
    - "avbench": the first and the last 14-segment window of each clip; primary column mean |offset|,
      `_signed` the signed mean;
    - "versebench": Verse-Bench's one 11-segment window (table trimmed to it); primary column the
      signed mean (AV-A), `_abs` the mean |offset|."""

    modalities = ("video", "audio")

    def __init__(self, model: Synchformer, key: str, label: str, protocol: str, protocol_kind: str) -> None:
        if protocol_kind not in ("avbench", "versebench"):
            raise ValueError(f"protocol_kind must be avbench or versebench, got {protocol_kind!r}")
        other = "_signed" if protocol_kind == "avbench" else "_abs"
        self.columns = (
            Column(key, label, higher_is_better=False),
            Column(f"{key}{other}", f"{label} ({other[1:]})", higher_is_better=False),
            Column(f"{key}_too_short", f"{label}: clips too short", False),
        )
        self.protocol = protocol
        super().__init__()
        self.model = model
        self.kind = protocol_kind
        self.segments = window_segments(4.8) if protocol_kind == "avbench" else VERSEBENCH_SEGMENTS
        for name in ("abs_sum", "signed_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_windows", "too_short"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def windows(self, clip: MediaClip) -> tuple[Tensor, Tensor] | None:
        """The clip's scored windows, video (W, S, 3, 16, H, W) and mel (W, S, 128, 66); None when
        too short."""
        assert clip.video is not None
        cfg = self.model.config
        audio = clip_audio(clip, AUDIO_SR, self.name)
        if self.kind == "versebench":
            one = versebench_window(clip.video, clip.fps, audio, AUDIO_SR, cfg.image_size, cfg.mel_bins)
            return None if one is None else (one.video[None], one.mel[None])
        inputs = prepare_clip(clip.video, clip.fps, audio, AUDIO_SR, cfg.image_size, cfg.mel_bins)
        if inputs.segments < self.segments:
            return None
        starts = [0, inputs.segments - self.segments]
        return (
            torch.stack([inputs.video[s : s + self.segments] for s in starts]),
            torch.stack([inputs.mel[s : s + self.segments] for s in starts]),
        )

    @torch.no_grad()
    def offsets(self, clip: MediaClip) -> Tensor | None:
        """Predicted top-1 offsets (seconds) of the clip's scored windows; None when too short."""
        found = self.windows(clip)
        if found is None:
            return None
        device = next(self.model.parameters()).device
        video, mel = (t.to(device) for t in found)
        logits = self.model(video, mel, trim_table=self.kind == "versebench")
        return OFFSET_GRID[logits.argmax(-1).cpu()]

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            found = self.offsets(clip)
            if found is None:
                self.too_short += 1
                continue
            self.abs_sum += found.abs().sum().double().to(self.device)
            self.signed_sum += found.sum().double().to(self.device)
            self.n_windows += found.numel()
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        self.require(
            self.n >= 1, f"no clip long enough for a {self.segments}-segment window ({int(self.too_short)} too short)"
        )
        key = self.columns[0].key
        mean_abs, mean_signed = self.abs_sum / self.n_windows, self.signed_sum / self.n_windows
        main, other = (mean_abs, mean_signed) if self.kind == "avbench" else (mean_signed, mean_abs)
        return {key: main, self.columns[1].key: other, f"{key}_too_short": self.too_short.double()}


def _shared_synchformer(ctx: BuildContext) -> Synchformer:
    return ctx.load(
        "synchformer",
        "the Synchformer weights (synchformer_state_dict.pth or a Synchformer "
        "training checkpoint such as 24-01-04T16-39-21.pt)",
        lambda path: load_synchformer(path).to(ctx.device),
    )


@register_metric(
    "desync_avbench", group="av", description="Synchformer offset, mean |offset| over the first and last 4.8 s"
)
def build_desync_avbench(ctx: BuildContext) -> ClipMetric:
    return DeSync(
        _shared_synchformer(ctx),
        "desync_avbench",
        "DeSync",
        protocol="av-benchmark: Synchformer, 25 fps 224 px, 16 kHz, 14 segments of 0.64 s "
        "(hop 0.32 s), first and last 4.8 s windows, mean |offset| in s",
        protocol_kind="avbench",
    )


@register_metric(
    "desync_versebench", group="av", description="Verse-Bench AV-A: signed Synchformer offset of one 11-segment window"
)
def build_desync_versebench(ctx: BuildContext) -> ClipMetric:
    model = _shared_synchformer(ctx)
    rows = model.transformer.pos_emb_cfg.pos_emb.shape[1]
    need = 2 + VERSEBENCH_SEGMENTS * (VIDEO_TOKENS + AUDIO_TOKENS)
    if rows < need:
        raise MetricUnavailable(
            f"desync_versebench: the Synchformer checkpoint's positional table has "
            f"{rows} rows, the 11-segment window needs {need}"
        )
    trim = (
        f"positional table {rows} -> {need} rows as Verse-Bench's loader trims"
        if rows > need
        else f"positional table {rows} rows"
    )
    return DeSync(
        model,
        "desync_versebench",
        "AV-A",
        protocol="Verse-Bench AV-A: Synchformer, 25 fps, short side 256, centre crop 224, "
        "16 kHz; the first 4 s, 11 segments of 0.64 s (hop 0.32 s) from frame 2; "
        f"{trim}; top-1 offset in s, signed mean over clips",
        protocol_kind="versebench",
    )
