"""Building blocks shared by both towers: embeddings, adaLN-Zero stream layers, final layers.

Tokens are flat: a stream of n tokens (of any samples) is (n, dim). Conditioning is per row: a
stream carries a table c (rows, dim) (one row per sample, or per video frame / audio token) and
`Rows`, each token's row. adaLN vectors are computed on the rows and applied to the tokens viewed
as (G, n / G, dim) groups, each group taking one vector (G, 1, dim): the rows themselves when every
row has the same run of consecutive tokens, else per-token copies (G = n).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from klear_lightning.models.rope import apply_rope

FEW_ROWS = 64  # up to this many adaLN rows, the CPU backward of the per-token gather sums runs


def _grouped(x: Tensor, groups: int) -> Tensor:
    """Tokens (n, d) viewed as (groups, n / groups, d)."""
    return x.reshape(groups, x.shape[0] // max(groups, 1), x.shape[1])


def modulate(x: Tensor, shift: Tensor, scale_plus_one: Tensor) -> Tensor:
    """x * (1 + scale) + shift for tokens x (n, d) and per-group shift, (1 + scale) (G, 1, d)."""
    return torch.addcmul(shift, _grouped(x, shift.shape[0]), scale_plus_one).view(x.shape)


def gated_add(x: Tensor, y: Tensor, g: Tensor) -> Tensor:
    """x + g * y for tokens x, y (n, d) and a per-group gate g (G, 1, d)."""
    groups = g.shape[0]
    return torch.addcmul(_grouped(x, groups), _grouped(y, groups), g).view(x.shape)


class _Rows(torch.autograd.Function):
    """table[row]: per-token copies of per-row vectors; `row` must be non-decreasing (tokens are
    sample-major, rows per sample then frame). The backward sums each row's tokens. On CPU with
    few rows (a row per sample) it sums the contiguous runs: CPU index_add / scatter_add (what
    autograd's own gather backward uses) is very slow when thousands of tokens share a row."""

    @staticmethod
    def forward(ctx, table: Tensor, row: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(row)
        ctx.rows = table.shape[0]
        return table.index_select(0, row)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (row,) = ctx.saved_tensors
        if grad.is_cuda or ctx.rows > FEW_ROWS:
            return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_add_(0, row, grad), None
        counts = torch.bincount(row, minlength=ctx.rows).tolist()
        return torch.stack([part.sum(0) for part in grad.split(counts)]), None


@dataclass(frozen=True)
class Rows:
    """Each token's conditioning row: `index` (n,) non-decreasing. `run`: set when every row has
    exactly `run` consecutive tokens (index == arange(R).repeat_interleave(run)); then per-row
    vectors broadcast over the tokens viewed (R, run, d) and are never copied per token."""

    index: Tensor
    run: int | None = None

    def spread(self, table: Tensor) -> Tensor:
        """Per-row vectors (R, d) -> per-group (G, 1, d): the rows (G = R) when `run` is set,
        else per-token copies (G = n)."""
        return (table if self.run is not None else _Rows.apply(table, self.index))[:, None]


def adaln(ada: nn.Linear, c: Tensor, rows: Rows) -> list[Tensor]:
    """adaLN vectors (shift, scale + 1, [gate,] ...) of `ada` on the rows c (R, d), spread to
    (G, 1, d) by `rows`. Scales (every second of each (shift, scale, gate) or (shift, scale)
    group) get their 1 added on the rows, before any copy."""
    vectors = ada(F.silu(c)).chunk(ada.out_features // ada.in_features, dim=-1)
    period = 3 if len(vectors) % 3 == 0 else 2
    return [rows.spread(v + 1 if i % period == 1 else v) for i, v in enumerate(vectors)]


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
    """One stream's weights in a joint block: adaLN-Zero, fused QKV, QK-RMSNorm, output, MLP.

    `pre_only` (SD3's context_pre_only, taken one step further): the stream only gives keys and
    values to the block's attention and its output is not used (text streams in the last block),
    so the layer has no query, no output projection, no MLP, and only the (shift, scale) of the
    attention's adaLN: every parameter it has gets a gradient.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float, pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ada = nn.Linear(dim, (2 if pre_only else 6) * dim)
        if pre_only:
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.q_norm = QKNorm(dim // heads, eps=eps)
        self.k_norm = QKNorm(dim // heads, eps=eps)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
            self.mlp = Mlp(dim, mlp_dim)

    def modulation(self, c: Tensor, rows: Rows) -> list[Tensor]:
        """Per-group (G, 1, d) vectors (see `Rows.spread`): shift, scale + 1, gate for attention,
        then for the MLP (shift and scale + 1 only when pre_only)."""
        return adaln(self.ada, c, rows)

    def qkv_tokens(self, x: Tensor, mod: list[Tensor]) -> Tensor:
        """Fused q, k, v projections (n, 3 * dim) of the modulated, normalised stream; k, v
        (n, 2 * dim) when pre_only."""
        return (self.kv if self.pre_only else self.qkv)(modulate(self.norm1(x), mod[0], mod[1]))

    def residual(self, x: Tensor, attn: Tensor, mod: list[Tensor]) -> Tensor:
        """Gated attention output and gated MLP, added to the stream's residual x."""
        return self.mlp_residual(self.attn_residual(x, attn, mod), mod)

    def attn_residual(self, x: Tensor, attn: Tensor, mod: list[Tensor]) -> Tensor:
        return gated_add(x, self.proj(attn), mod[2])

    def mlp_residual(self, x: Tensor, mod: list[Tensor]) -> Tensor:
        _, _, _, shift_mlp, scale_mlp, gate_mlp = mod
        return gated_add(x, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), gate_mlp)


def _norm_rope(x: Tensor, norms: list[tuple[QKNorm, int]], rotation: Tensor) -> Tensor:
    """RMSNorm over the head dim with each stream's weight on its n rows, then RoPE: one pass."""
    weight = torch.cat([norm.weight.expand(n, -1) for norm, n in norms])  # (N, D)
    x = F.rms_norm(x, (x.shape[-1],), eps=norms[0][0].eps)
    return apply_rope(x * weight[:, None].to(x.dtype), rotation)


def joint_qkv(
    layers: list[StreamLayer], xs: list[Tensor], mods: list[list[Tensor]], q_rotation: Tensor, k_rotation: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q (Nq, H, D) of the concatenated query streams (layers not pre_only), k and v (N, H, D) of
    all the concatenated streams: per-stream projections and QK-RMSNorm weights, one
    concatenation, normalisation and rotation ((Nq | N, 1, D / 2)) each for queries and keys."""
    heads, dim = layers[0].heads, xs[0].shape[1]
    # (q, kv) per stream: one split (its backward is one concatenation) rather than two slices
    streams: list[tuple[StreamLayer, Tensor | None, Tensor]] = []
    for layer, x, m in zip(layers, xs, mods, strict=True):
        proj = layer.qkv_tokens(x, m)
        streams.append((layer, None, proj) if layer.pre_only else (layer, *proj.split([dim, 2 * dim], dim=1)))
    queries = [(layer.q_norm, sq) for layer, sq, _ in streams if sq is not None]
    q = rearrange(torch.cat([sq for _, sq in queries]), "n (h d) -> n h d", h=heads)
    k, v = rearrange(torch.cat([kv for _, _, kv in streams]), "n (two h d) -> two n h d", two=2, h=heads)
    q = _norm_rope(q, [(norm, sq.shape[0]) for norm, sq in queries], q_rotation)
    k = _norm_rope(k, [(layer.k_norm, kv.shape[0]) for layer, _, kv in streams], k_rotation)
    return q, k, v


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + linear to the patch size of one generated modality."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor, rows: Rows) -> Tensor:
        shift, scale_plus_one = adaln(self.ada, c, rows)
        return self.linear(modulate(self.norm(x), shift, scale_plus_one))


def write_full(param: Tensor, full: Tensor) -> None:
    """Write `full` (the parameter's whole value, on any device) into `param`: all of it, or only
    this rank's part when `param` is sharded (a DTensor, e.g. under FSDP2). Only that part is
    copied to `param`'s device, so a sharded model never holds another rank's part."""
    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"shape {tuple(full.shape)} does not match the parameter's {tuple(param.shape)}")
    with torch.no_grad():
        if isinstance(param, DTensor):
            shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
            part = full[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))]
            param.to_local().copy_(part)
        else:
            param.copy_(full)


def init_param(param: Tensor, init: Callable[[Tensor], object]) -> None:
    """Run `init` (an in-place `nn.init` function) on a CPU tensor shaped like the whole parameter
    and write the result into `param` (see `write_full`): the same numbers from the same random
    state whether `param` is whole, sharded, on CPU or on a GPU."""
    full = torch.empty(param.shape, dtype=param.dtype)
    init(full)
    write_full(param, full)


def init_weights(module: nn.Module) -> None:
    """DiT initialisation: Xavier linears, zero biases, zero adaLN and final projections, unit
    QK-norm gains. Works on whole or sharded parameters (one whole parameter at a time on CPU)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            init_param(m.weight, nn.init.xavier_uniform_)
            if m.bias is not None:
                init_param(m.bias, nn.init.zeros_)
        if isinstance(m, nn.RMSNorm) and m.weight is not None:
            init_param(m.weight, nn.init.ones_)
    for m in module.modules():
        if isinstance(m, (TimestepEmbedding, PooledText)):
            for lin in m.mlp:
                if isinstance(lin, nn.Linear):
                    init_param(lin.weight, partial(nn.init.normal_, std=0.02))
        if isinstance(m, (StreamLayer, FinalLayer)):
            init_param(m.ada.weight, nn.init.zeros_)
            init_param(m.ada.bias, nn.init.zeros_)
        if isinstance(m, FinalLayer):
            init_param(m.linear.weight, nn.init.zeros_)
            init_param(m.linear.bias, nn.init.zeros_)
