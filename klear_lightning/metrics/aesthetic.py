"""Aesthetic score: the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings.

This is the LAION component of the paper's aesthetic composite. The head is implemented here in
the key layout of `sac+logos+ava1-l14-linearMSE.pth` (improved-aesthetic-predictor's MLP:
`layers.0/2/4/6/7`); CLIP is `transformers.CLIPVisionModelWithProjection` read from a local
directory (e.g. a download of openai/clip-vit-large-patch14). The head's weights carry the
LAION licence terms of their release; the composite's other components (non-commercial / AGPL
image-quality models) are not bundled and are reported as not computed.

Score: `frames` frames spread evenly over the clip; CLIP preprocessing (short side 224 bicubic,
centre crop, CLIP mean/std); L2-normalised image embedding -> MLP -> mean over frames, then clips.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.video_prep import even_frames, normalized

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AestheticHead(nn.Module):
    """improved-aesthetic-predictor MLP: embedding (B, D) -> score (B,). Dropouts keep the indices."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1),
                                    nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embedding: Tensor) -> Tensor:
        return self.layers(embedding)[:, 0]


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ValueError(f"{path}: not an improved-aesthetic-predictor state dict (no layers.0.weight)")
    head = AestheticHead(state["layers.0.weight"].shape[1])
    head.load_state_dict(state, strict=True)
    return head.eval()


def load_clip_vision(directory: str | Path) -> nn.Module:
    """CLIP vision tower with projection from a local Hugging Face directory (no download)."""
    from transformers import CLIPVisionModelWithProjection

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a saved CLIP model directory)")
    return CLIPVisionModelWithProjection.from_pretrained(directory, local_files_only=True).eval()


def clip_inputs(frames: Tensor, size: int) -> Tensor:
    """uint8 (T, H, W, 3) -> CLIP-normalised (T, 3, size, size)."""
    return normalized(frames, size, CLIP_MEAN, CLIP_STD)


class AestheticScore(ClipMetric):
    modalities = ("video",)
    columns = (Column("aesthetic_laion", "Aesthetic", higher_is_better=True),)
    protocol = ("LAION improved-aesthetic-predictor on L2-normalised CLIP image embeddings, "
                "8 evenly spaced frames, mean")

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
    clip_dir = ctx.checkpoint("clip_vision", "a local CLIP ViT-L/14 directory (openai/clip-vit-large-patch14)")
    head_path = ctx.checkpoint("aesthetic_head", "the LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth)")
    clip = ctx.shared("clip_vision", lambda: load_clip_vision(clip_dir).to(ctx.device))
    return AestheticScore(clip, load_aesthetic_head(head_path).to(ctx.device))
