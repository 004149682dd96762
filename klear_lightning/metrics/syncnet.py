"""SyncNet lip-sync scores LSE-C and LSE-D (Chung & Zisserman 2016, as syncnet_python computes them).

The network is implemented here in the key layout of `syncnet_v2.model` (`netcnnaud`, `netfcaud`,
`netcnnlip`, `netfclip`). Protocol: 25 fps video, 16 kHz audio; face crops resized to 224 x 224
(BGR, 0-255); MFCC (13 coefficients, 100 Hz, python_speech_features defaults, int16 scale);
one feature per 5-frame window against 20 MFCC frames; distances to audio shifted by -15..15
frames; mean over frames; LSE-D = min over shifts, LSE-C = median - min, offset = 15 - argmin.
A clip with several faces is scored on its most confident face track.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.face import FaceDetector, annotation_boxes, load_s3fd
from klear_lightning.metrics.video_prep import resample_video

VIDEO_FPS = 25.0
AUDIO_SR = 16000
VSHIFT = 15
CROP_SCALE = 0.4


def _bn_relu_2d(cin: int, cout: int, kernel: tuple[int, int], padding: tuple[int, int]) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]


def _bn_relu_3d(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int],
                padding: tuple[int, int, int]) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU()]


def _fc(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """Audio stream: MFCC (N, 1, 13, 20) -> (N, D). Lip stream: (N, 3, 5, 224, 224) -> (N, D)."""

    def __init__(self, dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu_2d(1, 64, (3, 3), (1, 1)), nn.MaxPool2d(1, 1),
            *_bn_relu_2d(64, 192, (3, 3), (1, 1)), nn.MaxPool2d(3, (1, 2)),
            *_bn_relu_2d(192, 384, (3, 3), (1, 1)),
            *_bn_relu_2d(384, 256, (3, 3), (1, 1)),
            *_bn_relu_2d(256, 256, (3, 3), (1, 1)), nn.MaxPool2d(3, 2),
            *_bn_relu_2d(256, 512, (5, 4), (0, 0)))
        self.netfcaud = _fc(dim)
        self.netfclip = _fc(dim)
        self.netcnnlip = nn.Sequential(
            *_bn_relu_3d(3, 96, (5, 7, 7), (1, 2, 2), (0, 0, 0)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu_3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            *_bn_relu_3d(256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu_3d(256, 512, (1, 6, 6), (1, 1, 1), (0, 0, 0)))

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, lips: Tensor) -> Tensor:
        return self.netfclip(self.netcnnlip(lips).flatten(1))


def load_syncnet(path: str | Path) -> SyncNet:
    """Load `syncnet_v2.model` (a plain state dict) strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = SyncNet(dim=state["netfcaud.3.weight"].shape[0])
    net.load_state_dict(state, strict=True)
    return net.eval()


def mfcc(wave: Tensor, sample_rate: int = AUDIO_SR, numcep: int = 13, nfilt: int = 26,
         nfft: int = 512) -> Tensor:
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


def crop_faces(frames: Tensor, boxes: Tensor, size: int = 224) -> Tensor:
    """syncnet_python's crop: square around the box (scale 0.4, padded with 110), resized to
    `size`; uint8 (T, H, W, 3) RGB + (T, 4) boxes -> float (3, T, size, size) BGR in 0-255."""
    crops = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes.tolist()):
        bs = max(y1 - y0, x1 - x0) / 2
        pad = int(bs * (1 + 2 * CROP_SCALE))
        img = F.pad(frame.permute(2, 0, 1).float(), (pad, pad, pad, pad), value=110.0)
        my, mx = (y0 + y1) / 2 + pad, (x0 + x1) / 2 + pad
        face = img[:, int(my - bs): int(my + bs * (1 + 2 * CROP_SCALE)),
                   int(mx - bs * (1 + CROP_SCALE)): int(mx + bs * (1 + CROP_SCALE))]
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
def score_track(net: SyncNet, lips: Tensor, mfcc_feat: Tensor, batch: int = 64) -> tuple[float, float, int]:
    """lips (3, T, 224, 224) at 25 fps, mfcc (13, 4 T) -> (LSE-C, LSE-D, offset)."""
    frames = min(lips.shape[1], mfcc_feat.shape[1] // 4)
    if frames - 5 < 1:
        raise ValueError(f"SyncNet needs at least 6 frames, got {frames}")
    device = next(net.parameters()).device
    vf, af = [], []
    for s in range(0, frames - 5, batch):
        idx = range(s, min(frames - 5, s + batch))
        vf.append(net.forward_lip(torch.stack([lips[:, i: i + 5] for i in idx]).to(device)).cpu())
        af.append(net.forward_aud(torch.stack([mfcc_feat[None, :, 4 * i: 4 * i + 20] for i in idx])
                                  .to(device)).cpu())
    return lse_scores(shift_distances(torch.cat(vf), torch.cat(af)))


class LipSync(ClipMetric):
    """LSE-C (higher is better) and LSE-D (lower is better) over clips with a usable face track;
    clips without one are counted in `lse_no_face` (never scored as zeros)."""

    modalities = ("video", "audio")
    columns = (Column("lse_c_syncnet", "LSE-C", higher_is_better=True),
               Column("lse_d_syncnet", "LSE-D", higher_is_better=False),
               Column("lse_no_face", "LSE: clips without a face track", higher_is_better=False))
    protocol = ("syncnet_python: 25 fps, 224 px face crops, 16 kHz MFCC, 5-frame windows, "
                "offsets -15..15 frames, LSE-C = median - min, LSE-D = min of mean distance")

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
            feat = mfcc(clip_audio(clip, AUDIO_SR, self.name).clamp(-1, 1) * 32768.0)
            scores = [score_track(self.net, crop_faces(frames, t), feat) for t in self.tracks(clip, frames)]
            if not scores:
                self.no_face += 1
                continue
            conf, dist, _ = max(scores, key=lambda s: s[0])
            self.conf_sum += conf
            self.dist_sum += dist
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        self.require(self.n >= 1, f"no clip with a usable face track ({int(self.no_face)} without)")
        return {"lse_c_syncnet": self.conf_sum / self.n, "lse_d_syncnet": self.dist_sum / self.n,
                "lse_no_face": self.no_face.double()}


@register_metric("lse_syncnet", group="av", description="SyncNet LSE-C / LSE-D on face tracks")
def build_lse_syncnet(ctx: BuildContext) -> ClipMetric:
    net = load_syncnet(ctx.checkpoint("syncnet", "the SyncNet weights (syncnet_v2.model)")).to(ctx.device)
    face_path = ctx.checkpoints.get("s3fd")
    detector = None
    if face_path:
        detector = FaceDetector(load_s3fd(ctx.checkpoint("s3fd", "the S3FD face detector (sfd_face.pth)"))
                                .to(ctx.device))
    return LipSync(net, detector)
