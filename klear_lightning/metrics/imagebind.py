"""ImageBind score: cosine between ImageBind video and audio embeddings, as av-benchmark computes it.

ImageBind (Girdhar et al. 2023) is CC-BY-NC 4.0, non-commercial: it is an optional extra and is
not reimplemented here (a 1.2B-parameter, six-modality network). Install Meta's package
(`pip install git+https://github.com/facebookresearch/ImageBind`) and point
`metrics.checkpoints.imagebind` at `imagebind_huge.pth`; without the package the metric is skipped
with one line saying so.

Protocol (av-benchmark): video frames at 0.5 fps, short side 224 (bicubic), CLIP normalisation,
three spatial crops, clips of two consecutive frames; audio at 16 kHz, three 2 s clips spread
evenly, 128-bin Kaldi fbank of 204 frames normalised with mean -4.268, std 9.138; ImageBind
averages each modality's clips; the score is the cosine of the two embeddings, mean over clips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.aesthetic import CLIP_MEAN, CLIP_STD
from klear_lightning.metrics.audio_prep import clip_audio
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric
from klear_lightning.safe_pickle import load_torch_file

IB_FPS = 0.5
IB_SIZE = 224
AUDIO_SR = 16000
INSTALL = (
    "ImageBind is an optional non-commercial (CC-BY-NC 4.0) extra: "
    "pip install git+https://github.com/facebookresearch/ImageBind"
)


def ib_score(video_embedding: Tensor, audio_embedding: Tensor) -> Tensor:
    """Per-clip cosine similarity (B,) between (B, D) embeddings (av-benchmark's IB-Score)."""
    return F.cosine_similarity(video_embedding.double(), audio_embedding.double(), dim=-1)


def ib_video(video: Tensor, fps: float) -> Tensor:
    """uint8 (T, H, W, 3) -> (3 * (n - 1), 3, 2, 224, 224): n frames at 0.5 fps, three crops, pairs."""
    n = int(IB_FPS * video.shape[0] / fps)
    if n < 2:
        raise ValueError(f"ImageBind video needs at least 4 s of frames, got {video.shape[0] / fps:.2f} s")
    idx = (torch.arange(n) / IB_FPS * fps).long().clamp(max=video.shape[0] - 1)
    x = rearrange(video[idx].float() / 255.0, "t h w c -> t c h w")
    h, w = x.shape[-2:]
    scale = IB_SIZE / min(h, w)
    x = F.interpolate(
        x,
        size=(max(IB_SIZE, int(h * scale)), max(IB_SIZE, int(w * scale))),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    ).clamp(0, 1)
    x = (x - torch.tensor(CLIP_MEAN)[None, :, None, None]) / torch.tensor(CLIP_STD)[None, :, None, None]
    h, w = x.shape[-2:]
    crops = []
    for i in range(3):
        y0 = [0, math.ceil((h - IB_SIZE) / 2), h - IB_SIZE][i] if h > w else math.ceil((h - IB_SIZE) / 2)
        x0 = [0, math.ceil((w - IB_SIZE) / 2), w - IB_SIZE][i] if h <= w else math.ceil((w - IB_SIZE) / 2)
        crops.append(x[:, :, y0 : y0 + IB_SIZE, x0 : x0 + IB_SIZE])
    pairs = [torch.stack([c[t], c[t + 1]], dim=1) for t in range(n - 1) for c in crops]
    return torch.stack(pairs)


def ib_audio(wave: Tensor, melspec: Any) -> Tensor:
    """16 kHz wave (N,) -> (3, 1, 128, 204) normalised fbanks of three evenly spread 2 s clips."""
    duration = wave.shape[0] / AUDIO_SR
    starts = torch.linspace(0.0, max(duration - 2.0, 0.0), 3)
    clips = [
        melspec(wave[None, int(s * AUDIO_SR) : int((s + 2.0) * AUDIO_SR)], AUDIO_SR, 128, 204) for s in starts.tolist()
    ]
    return (torch.stack(clips) - (-4.268)) / 9.138


class ImageBindScore(ClipMetric):
    modalities = ("video", "audio")
    columns = (Column("ib_score_avbench", "IB", higher_is_better=True),)
    protocol = (
        "av-benchmark: ImageBind huge, video 0.5 fps x 3 crops x frame pairs, audio 3 x 2 s "
        "fbank clips, cosine(video, audio), mean"
    )

    def __init__(self, model: nn.Module, modality: Any, melspec: Any) -> None:
        super().__init__()
        self.model = model
        self.modality = modality
        self.melspec = melspec
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        device = next(self.model.parameters()).device
        for clip in generated:
            assert clip.video is not None
            video = ib_video(clip.video, clip.fps)[None].to(device)
            audio = ib_audio(clip_audio(clip, AUDIO_SR, self.name), self.melspec)[None].to(device)
            out = self.model({self.modality.VISION: video, self.modality.AUDIO: audio})
            self.total += ib_score(out[self.modality.VISION], out[self.modality.AUDIO]).sum().cpu()
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


def read_imagebind_weights(path: Path) -> dict[str, Tensor]:
    """`imagebind_huge.pth` (the ImageBindModel state dict) through the allow-list reader."""
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not an ImageBind state dict")
    return state


@register_metric("ib_score_avbench", group="av", description="ImageBind video-audio cosine (non-commercial extra)")
def build_ib_score(ctx: BuildContext) -> ClipMetric:
    ctx.checkpoint("imagebind", "ImageBind weights (imagebind_huge.pth)")  # unset: skipped before the package check
    try:
        from imagebind.data import waveform2melspec
        from imagebind.models import imagebind_model
        from imagebind.models.imagebind_model import ModalityType
    except ImportError as err:
        raise MetricUnavailable(INSTALL) from err

    def load(weights: Path) -> nn.Module:
        model = imagebind_model.imagebind_huge(pretrained=False)
        model.load_state_dict(read_imagebind_weights(weights), strict=True)
        return model.eval().to(ctx.device)

    return ImageBindScore(
        ctx.load("imagebind", "ImageBind weights (imagebind_huge.pth)", load), ModalityType, waveform2melspec
    )
