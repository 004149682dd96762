"""Transformer pieces shared by the extractor networks (Synchformer, DINO ViT)."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head scaled dot-product attention on (B, N, H * D) projections."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's key layout)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
