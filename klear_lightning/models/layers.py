"""Building blocks shared by both towers: embeddings, adaLN-Zero stream layers, final layers.

Conditioning is per row: a stream of n tokens carries c of shape (B, R, dim) with n = R * r,
and every group of r consecutive tokens shares one row (a video latent frame's patches share its
timestep; a text stream has one row per sample; an audio token is its own row).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.models.rope import apply_rope


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift for x (B, n, d), shift / scale (B, R, d), n = R * r: a row per r tokens."""
    b, n, d = x.shape
    rows = shift.shape[1]
    out = torch.addcmul(shift[:, :, None], x.view(b, rows, n // rows, d), 1 + scale[:, :, None])
    return out.view(b, n, d)


def gated_add(x: Tensor, y: Tensor, g: Tensor) -> Tensor:
    """x + g * y for x, y (B, n, d) and per-row gates g (B, R, d)."""
    b, n, d = x.shape
    rows = g.shape[1]
    shape = (b, rows, n // rows, d)
    return torch.addcmul(x.view(shape), y.view(shape), g[:, :, None]).view(b, n, d)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of 1000 * t followed by a two-layer MLP (DiT)."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[..., None] * freqs
        features = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class PooledText(nn.Module):
    """Masked mean of caption token embeddings, projected to the model width (zeros if no token)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(tokens.dtype)
        mean = torch.einsum("bld,bl->bd", tokens, weights) / weights.sum(1, keepdim=True).clamp(min=1)
        return self.mlp(mean)


class QKNorm(nn.RMSNorm):
    """RMSNorm over the head dim, computed in the input's dtype (keeps the fused kernel under autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class StreamLayer(nn.Module):
    """One stream's weights in a joint block: adaLN-Zero, fused QKV, QK-RMSNorm, output, MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ada = nn.Linear(dim, 6 * dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = QKNorm(dim // heads, eps=eps)
        self.k_norm = QKNorm(dim // heads, eps=eps)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_dim)

    def modulation(self, c: Tensor) -> tuple[Tensor, ...]:
        """Six (B, R, d) vectors: shift, scale, gate for attention, then for the MLP."""
        return self.ada(F.silu(c)).chunk(6, dim=-1)

    def qkv_tokens(self, x: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        """Fused q, k, v projections (B, n, 3 * dim) of the modulated, normalised stream."""
        return self.qkv(modulate(self.norm1(x), mod[0], mod[1]))

    def residual(self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        """Gated attention output and gated MLP, added to the stream's residual x."""
        return self.mlp_residual(self.attn_residual(x, attn, mod), mod)

    def attn_residual(self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        return gated_add(x, self.proj(attn), mod[2])

    def mlp_residual(self, x: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        _, _, _, shift_mlp, scale_mlp, gate_mlp = mod
        return gated_add(x, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), gate_mlp)


def joint_qkv(
    layers: list[StreamLayer], xs: list[Tensor], mods: list[tuple[Tensor, ...]], rotation: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, N, H, D) of the concatenated streams: per-stream projections and QK-RMSNorm
    weights, but one concatenation, one normalisation and one rotation for all of them."""
    qkv = torch.cat([layer.qkv_tokens(x, m) for layer, x, m in zip(layers, xs, mods, strict=True)], dim=1)
    first = layers[0]
    q_k_v = rearrange(qkv, "b n (three h d) -> three b n h d", three=3, h=first.heads)
    weight = torch.cat([
        torch.stack([layer.q_norm.weight, layer.k_norm.weight]).expand(x.shape[1], -1, -1)
        for layer, x in zip(layers, xs, strict=True)
    ])  # (N, 2, D)
    qk = F.rms_norm(q_k_v[:2], (q_k_v.shape[-1],), eps=first.q_norm.eps)
    qk = apply_rope(qk * rearrange(weight, "n two d -> two 1 n 1 d").to(qk.dtype), rotation)
    return qk[0], qk[1], q_k_v[2]


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + linear to the patch size of one generated modality."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_weights(module: nn.Module) -> None:
    """DiT initialisation: Xavier linears, zero biases, zero adaLN and final projections."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (TimestepEmbedding, PooledText)):
            for lin in m.mlp:
                if isinstance(lin, nn.Linear):
                    nn.init.normal_(lin.weight, std=0.02)
        if isinstance(m, (StreamLayer, FinalLayer)):
            nn.init.zeros_(m.ada.weight)
            nn.init.zeros_(m.ada.bias)
        if isinstance(m, FinalLayer):
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)
