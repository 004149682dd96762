"""Aesthetic score (AS).

The paper's AS is Verse-Bench's: the mean of three per-frame image scores over every frame,
aesthetic-predictor-v2.5 / 10, MUSIQ / 100 and MANIQA (`calculate_metrics.evaluate_aesthetic_video`).
- `aesthetic_v25_versebench`: its first component, aesthetic-predictor-v2.5 (a SigLIP so400m
  vision tower, transformers' `SiglipVisionModel` from a local directory, safetensors only; and the
  package's MLP head, `aesthetic_predictor_v2_5.pth`, implemented here in its key layout
  `scoring_head.{0,2,4,6,8}`): every frame resized to 384 x 384 (PIL bicubic, as SigLIP's image
  processor), scaled to [-1, 1]; the pooled embedding L2-normalised -> head -> score; the clip's mean
  over frames, divided by 10 as Verse-Bench does, then the mean over clips. Verse-Bench runs it in
  bfloat16 on CUDA; here float32. The package and its weights are AGPL-3.0: they are not installed
  or shipped; point the config at your own copy of the weights. The other two components (MUSIQ,
  MANIQA: pyiqa / its vendored MANIQA, non-commercial licences, and both need torchvision and timm,
  which do not install beside the CPU torch here) are not implemented, so the composite AS is never
  reported.
- `aesthetic_laion` (below): the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings.

The head is implemented here in
the key layout of `sac+logos+ava1-l14-linearMSE.pth` (improved-aesthetic-predictor's MLP:
`layers.0/2/4/6/7`); CLIP is `transformers.CLIPVisionModelWithProjection` read from a local
directory (e.g. a download of openai/clip-vit-large-patch14). The head's weights carry the
LAION licence terms of their release.

Score: `frames` frames spread evenly over the clip; CLIP preprocessing (short side 224 bicubic,
centre crop, CLIP mean/std); L2-normalised image embedding -> MLP -> mean over frames, then clips.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.nets.aesthetic import (
    AestheticHead,
    AestheticV25Head,
    load_aesthetic_head,
    load_aesthetic_v25_head,
    load_clip_vision,
    load_siglip_vision,
)
from klear_lightning.metrics.video_prep import even_frames, normalized

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_inputs(frames: Tensor, size: int) -> Tensor:
    """uint8 (T, H, W, 3) -> CLIP-normalised (T, 3, size, size)."""
    return normalized(frames, size, CLIP_MEAN, CLIP_STD)


class AestheticScore(ClipMetric):
    modalities = ("video",)
    columns = (Column("aesthetic_laion", "Aesthetic", higher_is_better=True),)
    protocol = "LAION improved-aesthetic-predictor on L2-normalised CLIP image embeddings, 8 evenly spaced frames, mean"

    def __init__(self, clip: nn.Module, head: AestheticHead, frames: int = 8) -> None:
        super().__init__()
        self.clip = clip
        self.head = head
        self.frames = frames
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def clip_score(self, video: Tensor) -> float:
        size = self.clip.config.image_size
        device = next(self.head.parameters()).device
        pixels = clip_inputs(even_frames(video, self.frames), size).to(device)
        embedding = F.normalize(self.clip(pixel_values=pixels).image_embeds, dim=-1)
        return float(self.head(embedding).mean())

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            assert clip.video is not None
            self.total += self.clip_score(clip.video)
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


@register_metric("aesthetic_laion", group="video", description="LAION aesthetic predictor on CLIP L/14")
def build_aesthetic(ctx: BuildContext) -> ClipMetric:
    clip = ctx.load(
        "clip_vision",
        "a local CLIP ViT-L/14 directory (openai/clip-vit-large-patch14)",
        lambda path: load_clip_vision(path).to(ctx.device),
    )
    head = ctx.load(
        "aesthetic_head",
        "the LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth)",
        lambda path: load_aesthetic_head(path).to(ctx.device),
    )
    return AestheticScore(clip, head)


def siglip_inputs(frames: Tensor, size: int = 384) -> Tensor:
    """SigLIP's image processor: uint8 (T, H, W, 3) -> (T, 3, size, size), PIL bicubic resize (aspect not
    kept), scaled to [-1, 1]."""
    resized = [
        np.asarray(Image.fromarray(f.numpy()).resize((size, size), Image.Resampling.BICUBIC)) for f in frames.cpu()
    ]
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


class AestheticV25VerseBench(ClipMetric):
    modalities = ("video",)
    columns = (Column("aesthetic_v25_versebench", "AS: aesthetic-v2.5 / 10", higher_is_better=True),)
    protocol = (
        "Verse-Bench AS, its first component only: aesthetic-predictor-v2.5 (SigLIP so400m, L2-normalised "
        "pooled embedding, MLP head) on every frame at 384 x 384, clip mean / 10, mean over clips (MUSIQ "
        "and MANIQA not implemented, so not the composite AS)"
    )

    def __init__(self, encoder: nn.Module, head: AestheticV25Head, batch: int = 8) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.batch = batch
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def frame_scores(self, video: Tensor) -> Tensor:
        size = self.encoder.config.image_size
        device = next(self.head.parameters()).device
        out = []
        for s in range(0, video.shape[0], self.batch):
            pooled = self.encoder(pixel_values=siglip_inputs(video[s : s + self.batch], size).to(device)).pooler_output
            out.append(self.head(pooled / pooled.norm(dim=-1, keepdim=True)).cpu())
        return torch.cat(out)

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            assert clip.video is not None
            self.total += float(self.frame_scores(clip.video).mean()) / 10.0
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


@register_metric(
    "aesthetic_v25_versebench",
    group="video",
    description="Verse-Bench AS component: aesthetic-predictor-v2.5 / 10 over every frame",
)
def build_aesthetic_v25(ctx: BuildContext) -> ClipMetric:
    encoder = ctx.load(
        "siglip",
        "a local SigLIP directory (google/siglip-so400m-patch14-384)",
        lambda path: load_siglip_vision(path).to(ctx.device),
    )
    head = ctx.load(
        "aesthetic_v25",
        "the aesthetic-predictor-v2.5 head (aesthetic_predictor_v2_5.pth, AGPL-3.0)",
        lambda path: load_aesthetic_v25_head(path).to(ctx.device),
    )
    return AestheticV25VerseBench(encoder, head)
