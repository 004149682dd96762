"""SyncNet lip-sync scores LSE-C and LSE-D (Chung & Zisserman 2016, as syncnet_python computes them).

The network is implemented here in the key layout of `syncnet_v2.model` (`netcnnaud`, `netfcaud`,
`netcnnlip`, `netfclip`), read with the allow-list reader; syncnet_python's own code, run on the
same seeded weights, gives the same distances (`benchmarks/parity/syncnet.py`). Scoring, as its
`evaluate`: 25 fps video, 16 kHz audio; face crops resized to 224 x 224 (BGR, 0-255); MFCC
(13 coefficients, 100 Hz, python_speech_features defaults, int16 scale); min(frames, samples // 640)
frames; one feature per 5-frame window against 20 MFCC frames; distances to audio shifted by
-15..15 frames; mean over frames; LSE-D = min over shifts, LSE-C = median - min, offset = 15 - argmin.

Two protocols:
- `lse_syncnet` (syncnet_python's pipeline): one face track per clip (S3FD, gaps filled, median-
  smoothed boxes), crop scale 0.4, every clip with a track kept; the most confident track scores.
- `lse_versebench` (Verse-Bench SNC, `syncnet_inferencer.py`): a face per frame, cut into scenes
  of consecutive frames with a face lasting at least 2 s; per scene, crops at scale 0.3 with that
  frame's box (no smoothing) and the scene's audio from its first to its last frame; a clip is
  dropped when a scene's offset is 14 frames or more (or it has no scene); its SNC is the mean
  LSE-C over its scenes, averaged over the kept clips. Verse-Bench finds faces with insightface's
  detector; here they come from S3FD (or SyncWorld's annotations), and frames are not JPEG round-
  tripped as its scene files are.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct
from torch import Tensor

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.face import FaceDetector, annotation_boxes
from klear_lightning.metrics.nets.s3fd import load_s3fd
from klear_lightning.metrics.nets.syncnet import SyncNet, load_syncnet
from klear_lightning.metrics.video_prep import resample_video

VIDEO_FPS = 25.0
AUDIO_SR = 16000
VSHIFT = 15
CROP_SCALE = 0.4  # syncnet_python's pipeline
VERSEBENCH_CROP_SCALE = 0.3
VERSEBENCH_MIN_SCENE_FRAMES = 50  # 2 s at 25 fps
VERSEBENCH_MAX_OFFSET = 14  # frames; a scene at or beyond drops its clip
SAMPLES_PER_FRAME = AUDIO_SR // int(VIDEO_FPS)


def mfcc(wave: Tensor, sample_rate: int = AUDIO_SR, numcep: int = 13, nfilt: int = 26, nfft: int = 512) -> Tensor:
    """python_speech_features.mfcc with its defaults (25 ms rectangular frames, 10 ms step,
    pre-emphasis 0.97, lifter 22, c0 replaced by log energy) -> (numcep, frames)."""
    sig = wave.double().numpy()
    sig = np.append(sig[0], sig[1:] - 0.97 * sig[:-1])
    flen, step = round(0.025 * sample_rate), round(0.01 * sample_rate)
    frames = 1 + max(0, math.ceil((len(sig) - flen) / step))
    sig = np.pad(sig, (0, max(0, (frames - 1) * step + flen - len(sig))))
    idx = np.arange(frames)[:, None] * step + np.arange(flen)[None]
    pow_spec = np.abs(np.fft.rfft(sig[idx], nfft)) ** 2 / nfft
    energy = pow_spec.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    mel = np.linspace(0, 2595 * np.log10(1 + (sample_rate / 2) / 700), nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel / 2595) - 1)) / sample_rate)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        fbank[j, lo:mid] = (np.arange(lo, mid) - bins[j]) / (bins[j + 1] - bins[j])
        fbank[j, mid:hi] = (bins[j + 2] - np.arange(mid, hi)) / (bins[j + 2] - bins[j + 1])
    feat = pow_spec @ fbank.T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    feat *= 1 + 11 * np.sin(np.pi * np.arange(numcep) / 22)
    feat[:, 0] = np.log(energy)
    return torch.from_numpy(feat.T.copy()).float()


def crop_faces(frames: Tensor, boxes: Tensor, size: int = 224, scale: float = CROP_SCALE) -> Tensor:
    """syncnet_python's crop: square around the box (`scale` 0.4; Verse-Bench 0.3; padded with 110),
    resized to `size`; uint8 (T, H, W, 3) RGB + (T, 4) boxes -> float (3, T, size, size) BGR 0-255."""
    crops = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes.tolist()):
        bs = max(y1 - y0, x1 - x0) / 2
        pad = int(bs * (1 + 2 * scale))
        img = F.pad(frame.permute(2, 0, 1).float(), (pad, pad, pad, pad), value=110.0)
        my, mx = (y0 + y1) / 2 + pad, (x0 + x1) / 2 + pad
        face = img[
            :, int(my - bs) : int(my + bs * (1 + 2 * scale)), int(mx - bs * (1 + scale)) : int(mx + bs * (1 + scale))
        ]
        crops.append(F.interpolate(face[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops, dim=1).flip(0)


def shift_distances(video_feat: Tensor, audio_feat: Tensor, vshift: int = VSHIFT) -> Tensor:
    """(T, D) features -> distances (T, 2 vshift + 1): frame t against audio frame t + k - vshift,
    the audio zero-padded at both ends as syncnet_python does."""
    padded = F.pad(audio_feat, (0, 0, vshift, vshift))
    win = padded.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)[: video_feat.shape[0]]
    return F.pairwise_distance(video_feat[:, None].expand_as(win), win)


def lse_scores(dists: Tensor, vshift: int = VSHIFT) -> tuple[float, float, int]:
    """(T, shifts) distances -> (LSE-C, LSE-D, offset in frames)."""
    mean = dists.mean(0)
    minval, minidx = mean.min(0)
    return float(mean.median() - minval), float(minval), vshift - int(minidx)


@torch.no_grad()
def track_distances(net: SyncNet, lips: Tensor, audio: Tensor, batch: int = 64) -> Tensor:
    """syncnet_python's `evaluate`: lips (3, T, 224, 224) at 25 fps, audio (N,) at 16 kHz in int16
    scale -> distances (frames - 5, 2 VSHIFT + 1) over min(T, N // 640) frames."""
    mfcc_feat = mfcc(audio)
    frames = min(lips.shape[1], audio.shape[0] // SAMPLES_PER_FRAME)
    if frames - 5 < 1:
        raise ValueError(f"SyncNet needs at least 6 frames, got {frames}")
    device = next(net.parameters()).device
    vf, af = [], []
    for s in range(0, frames - 5, batch):
        idx = range(s, min(frames - 5, s + batch))
        vf.append(net.forward_lip(torch.stack([lips[:, i : i + 5] for i in idx]).to(device)).cpu())
        af.append(net.forward_aud(torch.stack([mfcc_feat[None, :, 4 * i : 4 * i + 20] for i in idx]).to(device)).cpu())
    return shift_distances(torch.cat(vf), torch.cat(af))


def score_track(net: SyncNet, lips: Tensor, audio: Tensor) -> tuple[float, float, int]:
    """lips (3, T, 224, 224) at 25 fps, audio at 16 kHz in int16 scale -> (LSE-C, LSE-D, offset)."""
    return lse_scores(track_distances(net, lips, audio))


def int16_scale(clip: MediaClip, name: str) -> Tensor:
    """The clip's 16 kHz mono audio in int16 scale, as syncnet_python reads its wav."""
    return clip_audio(clip, AUDIO_SR, name).clamp(-1, 1) * 32768.0


class LipSync(ClipMetric):
    """LSE-C (higher is better) and LSE-D (lower is better) over clips with a usable face track;
    clips without one are counted in `lse_no_face` (never scored as zeros)."""

    modalities = ("video", "audio")
    columns = (
        Column("lse_c_syncnet", "LSE-C", higher_is_better=True),
        Column("lse_d_syncnet", "LSE-D", higher_is_better=False),
        Column("lse_no_face", "LSE: clips without a face track", higher_is_better=False),
    )
    protocol = (
        "syncnet_python: 25 fps, 224 px face crops, 16 kHz MFCC, 5-frame windows, "
        "offsets -15..15 frames, LSE-C = median - min, LSE-D = min of mean distance"
    )

    def __init__(self, net: SyncNet, detector: FaceDetector | None) -> None:
        super().__init__()
        self.net = net
        self.detector = detector
        for name in ("conf_sum", "dist_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("no_face", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def tracks(self, clip: MediaClip, frames: Tensor) -> list[Tensor]:
        """Face tracks at the 25 fps frame rate: the SyncWorld annotation, else the detector."""
        annotated = annotation_boxes(clip.meta, frames)
        if annotated or self.detector is None:
            return annotated
        found = self.detector.track(frames)
        return [] if found is None else [found]

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            assert clip.video is not None
            frames = resample_video(clip.video, clip.fps, VIDEO_FPS)
            audio = int16_scale(clip, self.name)
            scores = [score_track(self.net, crop_faces(frames, t), audio) for t in self.tracks(clip, frames)]
            if not scores:
                self.no_face += 1
                continue
            conf, dist, _ = max(scores, key=lambda s: s[0])
            self.conf_sum += conf
            self.dist_sum += dist
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        self.require(self.n >= 1, f"no clip with a usable face track ({int(self.no_face)} without)")
        return {
            "lse_c_syncnet": self.conf_sum / self.n,
            "lse_d_syncnet": self.dist_sum / self.n,
            "lse_no_face": self.no_face.double(),
        }


def face_scenes(boxes: list[Tensor | None], min_frames: int) -> list[tuple[int, Tensor]]:
    """Verse-Bench's scenes: runs of consecutive frames with a face, at least `min_frames` long ->
    (first frame, (n, 4) boxes) per scene."""
    scenes, run = [], []
    for i, box in enumerate([*boxes, None]):
        if box is not None:
            run.append((i, box))
            continue
        if len(run) >= min_frames:
            scenes.append((run[0][0], torch.stack([b for _, b in run])))
        run = []
    return scenes


class LipSyncVerseBench(ClipMetric):
    """Verse-Bench's SNC: mean LSE-C over scenes, clips with an offset of 14+ frames or no scene
    dropped and counted (`lse_versebench_dropped`)."""

    modalities = ("video", "audio")
    columns = (
        Column("lse_c_versebench", "SNC", higher_is_better=True),
        Column(
            "lse_versebench_dropped", "SNC: clips dropped (no 2 s face run, or |offset| >= 14)", higher_is_better=False
        ),
    )
    protocol = (
        "Verse-Bench SNC: syncnet_python LSE-C per scene (consecutive frames with a face, >= 2 s; "
        "crop scale 0.3, per-frame boxes; the scene's audio), mean over scenes; clips with a scene "
        "offset >= 14 frames or no scene dropped; faces from S3FD or SyncWorld annotations "
        "(Verse-Bench: insightface)"
    )

    def __init__(self, net: SyncNet, detector: FaceDetector | None) -> None:
        super().__init__()
        self.net = net
        self.detector = detector
        self.add_state("conf_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("dropped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def faces(self, clip: MediaClip, frames: Tensor) -> list[Tensor | None]:
        """One box per frame (the first annotated face, else the detector's best), or None."""
        annotated = annotation_boxes(clip.meta, frames)
        if annotated:
            return list(annotated[0])
        return self.detector.detect(frames) if self.detector is not None else [None] * frames.shape[0]

    def clip_score(self, clip: MediaClip) -> float | None:
        """Mean LSE-C over the clip's scenes, or None when Verse-Bench drops the clip."""
        assert clip.video is not None
        frames = resample_video(clip.video, clip.fps, VIDEO_FPS)
        audio = int16_scale(clip, self.name)
        # its align_duration: frames beyond the audio dropped, audio cut to the frames
        frames = frames[: min(frames.shape[0], audio.shape[0] * int(VIDEO_FPS) // AUDIO_SR)]
        audio = audio[: frames.shape[0] * SAMPLES_PER_FRAME]
        confs = []
        for first, boxes in face_scenes(self.faces(clip, frames), VERSEBENCH_MIN_SCENE_FRAMES):
            last = first + boxes.shape[0] - 1
            lips = crop_faces(frames[first : last + 1], boxes, scale=VERSEBENCH_CROP_SCALE)
            conf, _, offset = score_track(self.net, lips, audio[first * SAMPLES_PER_FRAME : last * SAMPLES_PER_FRAME])
            if abs(offset) >= VERSEBENCH_MAX_OFFSET:
                return None
            confs.append(conf)
        return sum(confs) / len(confs) if confs else None

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            score = self.clip_score(clip)
            if score is None:
                self.dropped += 1
                continue
            self.conf_sum += score
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        self.require(self.n >= 1, f"no clip kept ({int(self.dropped)} dropped)")
        return {"lse_c_versebench": self.conf_sum / self.n, "lse_versebench_dropped": self.dropped.double()}


def _syncnet_and_detector(ctx: BuildContext) -> tuple[SyncNet, FaceDetector | None]:
    net = ctx.load("syncnet", "the SyncNet weights (syncnet_v2.model)", lambda p: load_syncnet(p).to(ctx.device))
    if not ctx.checkpoints.get("s3fd"):
        return net, None
    s3fd = ctx.load("s3fd", "the S3FD face detector (sfd_face.pth)", lambda p: load_s3fd(p).to(ctx.device))
    return net, FaceDetector(s3fd)


@register_metric("lse_syncnet", group="av", description="SyncNet LSE-C / LSE-D on face tracks")
def build_lse_syncnet(ctx: BuildContext) -> ClipMetric:
    return LipSync(*_syncnet_and_detector(ctx))


@register_metric("lse_versebench", group="av", description="Verse-Bench SNC: SyncNet LSE-C over 2 s face scenes")
def build_lse_versebench(ctx: BuildContext) -> ClipMetric:
    return LipSyncVerseBench(*_syncnet_and_detector(ctx))
