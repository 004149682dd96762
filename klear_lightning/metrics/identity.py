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

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, register_metric
from klear_lightning.metrics.synchformer import Mlp, attend
from klear_lightning.metrics.video_prep import normalized
from klear_lightning.safe_pickle import load_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
VERSEBENCH_TOKEN = -2  # Verse-Bench's `[0][-2]` on the pipeline output
IMAGENET_STD = (0.229, 0.224, 0.225)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(attend(q, k, v, self.heads))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class DinoViT(nn.Module):
    """DINO ViT: images (B, 3, H, W) normalised -> CLS features (B, D)."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 16,
                 image_size: int = 224) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position(self, h: int, w: int) -> Tensor:
        """The positional table, bicubically resized to an h x w patch grid when it differs."""
        table = self.pos_embed[:, 1:]
        side = int(round(table.shape[1] ** 0.5))
        if (h, w) != (side, side):
            grid = rearrange(table, "1 (y x) d -> 1 d y x", y=side)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            table = rearrange(grid, "1 d y x -> 1 (y x) d")
        return torch.cat([self.pos_embed[:, :1], table], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed.proj(images)
        h, w = x.shape[-2:]
        x = rearrange(x, "b d h w -> b (h w) d")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position(h, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def load_dino(path: str | Path, head_dim: int = 64) -> DinoViT:
    """Load an official DINO ViT checkpoint (a plain state dict such as `dino_deitsmall16_pretrain.pth`,
    or DINO's training `checkpoint.pth`: the teacher's weights, `module.`/`backbone.` prefixes
    stripped, its argparse `args` read as an inert record) through the allow-list reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DINO checkpoint not found: {path}")
    state = load_torch_file(path, opaque=("argparse.Namespace",))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a DINO state dict (found {type(state).__name__})")
    if "teacher" in state:
        state = state["teacher"]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()
             if not k.removeprefix("module.").startswith("head.")}
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    except KeyError as err:
        raise ValueError(f"{path}: not a DINO ViT state dict (missing {err})") from err
    net = DinoViT(dim=dim, depth=depth, heads=max(1, dim // head_dim), patch=patch,
                  image_size=grid * patch)
    net.load_state_dict(state, strict=True)
    return net.eval()


def dino_inputs(frames: Tensor, size: int = 224) -> Tensor:
    """uint8 (T, H, W, 3) -> ImageNet-normalised (T, 3, size, size)."""
    return normalized(frames, size, IMAGENET_MEAN, IMAGENET_STD)


class IdentityConsistency(ClipMetric):
    modalities = ("video",)
    needs_reference = True
    columns = (Column("id_dino_cls", "ID", higher_is_better=True),)
    protocol = ("DINO ViT CLS feature (final norm), 224 px centre crop; mean cosine of every "
                "generated frame to the reference clip's first frame")

    def __init__(self, net: DinoViT, batch: int = 16) -> None:
        super().__init__()
        self.net = net
        self.batch = batch
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def features(self, frames: Tensor) -> Tensor:
        device = next(self.net.parameters()).device
        return torch.cat([self.net(dino_inputs(frames[s: s + self.batch]).to(device)).cpu()
                          for s in range(0, frames.shape[0], self.batch)])

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


@register_metric("id_dino_cls", group="video", description="DINO CLS cosine to the reference image")
def build_identity(ctx: BuildContext) -> ClipMetric:
    return IdentityConsistency(ctx.load("dino", "a DINO ViT checkpoint (e.g. dino_deitsmall16_pretrain.pth)",
                                        lambda path: load_dino(path).to(ctx.device)))


def load_dinov3(directory: str | Path) -> nn.Module:
    """transformers' DINOv3 backbone from a local Hugging Face directory (config.json +
    model.safetensors; no download, no pickle)."""
    from transformers import DINOv3ViTModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a saved DINOv3 model directory, "
                                f"e.g. dinov3-vitl16-pretrain-lvd1689m)")
    return DINOv3ViTModel.from_pretrained(directory, local_files_only=True, use_safetensors=True).eval()


def dinov3_inputs(frames: Tensor, size: int = 224) -> Tensor:
    """DINOv3's image processor: uint8 (T, H, W, 3) -> (T, 3, size, size): rescale to [0, 1], resize
    (bilinear, antialiased, aspect not kept), ImageNet mean/std."""
    x = rearrange(frames, "t h w c -> t c h w").float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN)[None, :, None, None]) / torch.tensor(IMAGENET_STD)[None, :, None, None]


class IdentityDinov3VerseBench(ClipMetric):
    modalities = ("video",)
    needs_reference = True
    columns = (Column("id_dinov3_versebench", "ID", higher_is_better=True),)
    protocol = ("Verse-Bench ID: DINOv3 last hidden state, token [-2] (as its pipeline code indexes), frames "
                "resized to 224 x 224; mean cosine of every generated frame to the reference image")

    def __init__(self, net: nn.Module, batch: int = 16) -> None:
        super().__init__()
        self.net = net
        self.batch = batch
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def features(self, frames: Tensor) -> Tensor:
        device = next(self.net.parameters()).device
        return torch.cat([self.net(pixel_values=dinov3_inputs(frames[s: s + self.batch]).to(device))
                          .last_hidden_state[:, VERSEBENCH_TOKEN].cpu()
                          for s in range(0, frames.shape[0], self.batch)])

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


@register_metric("id_dinov3_versebench", group="video",
                 description="Verse-Bench ID: DINOv3 token cosine to the reference image")
def build_identity_dinov3(ctx: BuildContext) -> ClipMetric:
    return IdentityDinov3VerseBench(ctx.load(
        "dinov3", "a local DINOv3 directory (e.g. facebook/dinov3-vitl16-pretrain-lvd1689m)",
        lambda path: load_dinov3(path).to(ctx.device)))
