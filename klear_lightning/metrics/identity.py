"""ID consistency: cosine between DINO features of generated frames and the reference image.

Two protocols:
- `id_dino_cls` (DINO v1 CLS feature, below);
- `id_dinov3_versebench` (Verse-Bench ID, `dino/dinov3_inferencer.py` + `calculate_metrics.py`):
  DINOv3 (transformers' `DINOv3ViTModel`, read from a local Hugging Face directory such as
  dinov3-vitl16-pretrain-lvd1689m; safetensors only). Each frame as its image processor prepares it
  (scaled to [0, 1], resized to 224 x 224 bilinear with antialiasing, aspect not kept, ImageNet
  mean/std); the feature is what Verse-Bench's `get_feature` takes from the image-feature-extraction
  pipeline, `[0][-2]`: the second-to-last token of the last hidden state (a patch token at the
  bottom right of the grid, not the CLS token). Score: mean over every generated frame of the cosine
  to the reference image's feature, then over clips.

The ViT is implemented here in the key layout of the official DINO checkpoints
(facebookresearch/dino, e.g. `dino_deitsmall16_pretrain.pth`: `cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`); DINO's own
code on the same seeded weights gives the same CLS features (`benchmarks/parity/dino.py`).
Features: the CLS token after the final norm (DINO's image representation), not patch features.
Frames are resized (short side 224, bicubic), centre-cropped and ImageNet-normalised. The score is
the mean over generated frames of cos(CLS(frame), CLS(reference frame 0)), then over clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.nets.dino import load_dino, load_dinov3
from klear_lightning.metrics.video_prep import normalized

IMAGENET_MEAN = (0.485, 0.456, 0.406)
VERSEBENCH_TOKEN = -2  # Verse-Bench's `[0][-2]` on the pipeline output
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_inputs(frames: Tensor, size: int = 224) -> Tensor:
    """uint8 (T, H, W, 3) -> ImageNet-normalised (T, 3, size, size)."""
    return normalized(frames, size, IMAGENET_MEAN, IMAGENET_STD)


class CosineToReferenceFrame(ClipMetric):
    """Mean over every generated frame of the cosine between its feature and the reference clip's first
    frame's feature, then over clips. Subclasses say how a batch of frames becomes features (`embed`)."""

    modalities = ("video",)
    needs_reference = True

    def __init__(self, net: nn.Module, batch: int = 16) -> None:
        super().__init__()
        self.net = net
        self.batch = batch
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def embed(self, frames: Tensor, device: torch.device) -> Tensor:
        """uint8 (T, H, W, 3) frames -> (T, D) features."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, frames: Tensor) -> Tensor:
        device = next(self.net.parameters()).device
        return torch.cat(
            [self.embed(frames[s : s + self.batch], device).cpu() for s in range(0, frames.shape[0], self.batch)]
        )

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        assert reference is not None
        for gen, ref in zip(generated, reference):
            if ref.video is None or ref.video.shape[0] == 0:
                raise ValueError(f"{self.name}: reference clip {ref.meta.get('key', '?')} has no frames")
            assert gen.video is not None
            target = self.features(ref.video[:1])
            self.total += F.cosine_similarity(self.features(gen.video), target, dim=-1).mean().double()
            self.n += 1

    def compute(self) -> Tensor:
        self.require(self.n >= 1, "no clips scored")
        return self.total / self.n


class IdentityConsistency(CosineToReferenceFrame):
    columns = (Column("id_dino_cls", "ID", higher_is_better=True),)
    protocol = (
        "DINO ViT CLS feature (final norm), 224 px centre crop; mean cosine of every "
        "generated frame to the reference clip's first frame"
    )

    def embed(self, frames: Tensor, device: torch.device) -> Tensor:
        return self.net(dino_inputs(frames).to(device))


@register_metric("id_dino_cls", group="video", description="DINO CLS cosine to the reference image")
def build_identity(ctx: BuildContext) -> ClipMetric:
    return IdentityConsistency(
        ctx.load(
            "dino",
            "a DINO ViT checkpoint (e.g. dino_deitsmall16_pretrain.pth)",
            lambda path: load_dino(path).to(ctx.device),
        )
    )


def dinov3_inputs(frames: Tensor, size: int = 224) -> Tensor:
    """DINOv3's image processor: uint8 (T, H, W, 3) -> (T, 3, size, size): rescale to [0, 1], resize
    (bilinear, antialiased, aspect not kept), ImageNet mean/std."""
    x = rearrange(frames, "t h w c -> t c h w").float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN)[None, :, None, None]) / torch.tensor(IMAGENET_STD)[None, :, None, None]


class IdentityDinov3VerseBench(CosineToReferenceFrame):
    columns = (Column("id_dinov3_versebench", "ID", higher_is_better=True),)
    protocol = (
        "Verse-Bench ID: DINOv3 last hidden state, token [-2] (as its pipeline code indexes), frames "
        "resized to 224 x 224; mean cosine of every generated frame to the reference image"
    )

    def embed(self, frames: Tensor, device: torch.device) -> Tensor:
        return self.net(pixel_values=dinov3_inputs(frames).to(device)).last_hidden_state[:, VERSEBENCH_TOKEN]


@register_metric(
    "id_dinov3_versebench", group="video", description="Verse-Bench ID: DINOv3 token cosine to the reference image"
)
def build_identity_dinov3(ctx: BuildContext) -> ClipMetric:
    return IdentityDinov3VerseBench(
        ctx.load(
            "dinov3",
            "a local DINOv3 directory (e.g. facebook/dinov3-vitl16-pretrain-lvd1689m)",
            lambda path: load_dinov3(path).to(ctx.device),
        )
    )
