"""DINO ViT (Caron et al. 2021) in the key layout of the official DINO checkpoints
(facebookresearch/dino, e.g. `dino_deitsmall16_pretrain.pth`: `cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`), whose
`forward` gives the CLS token after the final norm; and the DINOv3 loader (a local transformers
directory).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.metrics.nets.layers import Mlp, attend
from klear_lightning.safe_pickle import load_torch_file


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

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 16, image_size: int = 224) -> None:
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
    state = {
        k.removeprefix("module.").removeprefix("backbone."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith("head.")
    }
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    except KeyError as err:
        raise ValueError(f"{path}: not a DINO ViT state dict (missing {err})") from err
    net = DinoViT(dim=dim, depth=depth, heads=max(1, dim // head_dim), patch=patch, image_size=grid * patch)
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_dinov3(directory: str | Path) -> nn.Module:
    """transformers' DINOv3 backbone from a local Hugging Face directory (config.json +
    model.safetensors; no download, no pickle)."""
    from transformers import DINOv3ViTModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no config.json (expected a saved DINOv3 model directory, "
            f"e.g. dinov3-vitl16-pretrain-lvd1689m)"
        )
    return DINOv3ViTModel.from_pretrained(directory, local_files_only=True, use_safetensors=True).eval()
