"""Attention backends behind one interface: plan once per forward, attend in every block.

Tokens live in a flat layout: q (Nq, H, D), k and v (Nk, H, D), rows in any order. A plan maps
them to the attention order the backend needs, and back. It is built from dense (B, L) masks and
`flat` maps (B, L) giving each dense position's row in the flat tensor (-1: not there). Keys must
be valid (real tokens of present streams) and, when groups are given, in the query's group
(isolated modalities). Queries that are not valid, or see no key, get a zero output. Backends:
- ``reference``: every token, sample-major (B, L), one SDPA call with a dense boolean mask
  (B, 1, Lq, Lk): the ground truth.
- ``packed``: only valid tokens, one segment per (sample, group); on CPU one SDPA call per
  segment (one batched call when all segments have the same lengths), no mask.
- ``flash`` / ``flex`` / ``xformers`` (CUDA): the packed segments through torch's varlen flash
  attention, flex_attention with a document block mask, or xformers' BlockDiagonalMask.
Moving rows between the layouts is a gather whose backward is also a gather (no scatter-add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _gather(x: Tensor, index: Tensor | None, zero: Tensor | None, rows: int) -> Tensor:
    """x[index] with the rows where `zero` is True set to zero; index None: x itself."""
    if index is None:
        return x
    if x.shape[0] == 0:
        return x.new_zeros(rows, *x.shape[1:])
    y = x.index_select(0, index)
    return y if zero is None else y.masked_fill(zero.view(-1, *[1] * (x.dim() - 1)), 0)


@dataclass
class Reorder:
    """y = x[index] with rows where `zero` is True set to zero; index None: y = x."""

    index: Tensor | None
    zero: Tensor | None
    rows: int  # rows of y


def reorder(order: Tensor, rows: int) -> tuple[Reorder, Reorder]:
    """The gather taking rows `order` of an x with `rows` rows, and its adjoint (x's rows from y;
    rows not in `order` get zeros). `order` must not repeat a row."""
    m = order.numel()
    identity = m == rows and bool((order == torch.arange(m, device=order.device)).all())
    if identity:
        return Reorder(None, None, m), Reorder(None, None, rows)
    inverse = torch.full((rows,), -1, dtype=torch.long, device=order.device)
    inverse[order] = torch.arange(m, device=order.device)
    dropped = inverse < 0
    zero = dropped if bool(dropped.any()) else None
    return Reorder(order, None, m), Reorder(inverse.clamp(min=0), zero, rows)


class _Move(torch.autograd.Function):
    """A gather in forward whose backward is the adjoint gather (no scatter-add, no zero-fill)."""

    @staticmethod
    def forward(ctx, x, index, zero, rows, back_index, back_zero, back_rows):  # type: ignore[override]
        ctx.save_for_backward(back_index, back_zero)
        ctx.back_rows = back_rows
        return _gather(x, index, zero, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        back_index, back_zero = ctx.saved_tensors
        return _gather(grad.contiguous(), back_index, back_zero, ctx.back_rows), None, None, None, None, None, None


def move(x: Tensor, maps: tuple[Reorder, Reorder]) -> Tensor:
    """Apply maps[0] to x; its backward applies the adjoint maps[1] to the gradient."""
    f, b = maps
    if f.index is None:
        return x
    return _Move.apply(x, f.index, f.zero, f.rows, b.index, b.zero, b.rows)


def flipped(maps: tuple[Reorder, Reorder]) -> tuple[Reorder, Reorder]:
    return maps[1], maps[0]


@dataclass
class AttentionPlan:
    """Who sees whom, in the forms the backends need (built by `plan_attention`)."""

    q_in: tuple[Reorder, Reorder]  # flat queries -> attention order, and its adjoint
    k_in: tuple[Reorder, Reorder]  # flat keys -> attention order, and its adjoint
    q_ok: Tensor  # (B, Lq) bool: valid and sees at least one key
    dense_mask: Tensor | None  # (B, 1, Lq, Lk) bool; None when every query sees every key or not dense
    q_lens: list[int]  # per non-empty segment (packed)
    k_lens: list[int]
    dense: bool  # attention order is every token, sample-major (B, L)
    full: bool  # every query sees every key: no mask needed

    @property
    def uniform(self) -> bool:
        """All segments have the same lengths: one batched call."""
        return len(set(self.q_lens)) <= 1 and len(set(self.k_lens)) <= 1


def dense_flat(valid: Tensor) -> Tensor:
    """The flat map of a layout holding every dense position in row-major (sample-major) order."""
    return torch.arange(valid.numel(), device=valid.device).view(valid.shape)


def plan_attention(
    q_valid: Tensor,
    k_valid: Tensor,
    q_group: Tensor | None = None,
    k_group: Tensor | None = None,
    dense: bool = True,
    q_flat: Tensor | None = None,
    k_flat: Tensor | None = None,
) -> AttentionPlan:
    """Build the plan. Groups (L,) int must be non-decreasing along the tokens (streams in order).
    q_flat / k_flat (B, L) long: each dense position's row in the flat tensors (default: every
    position, row-major). A dense plan needs every position; a packed one every valid position."""
    if (q_group is None) != (k_group is None):
        raise ValueError("attention plan: give groups for both queries and keys, or for neither")
    q_flat = dense_flat(q_valid) if q_flat is None else q_flat
    k_flat = dense_flat(k_valid) if k_flat is None else k_flat
    nq, nk = q_valid.shape[1], k_valid.shape[1]
    if q_group is None or k_group is None:
        q_group = torch.zeros(nq, dtype=torch.long, device=q_valid.device)
        k_group = torch.zeros(nk, dtype=torch.long, device=k_valid.device)
    for g in (q_group, k_group):
        if g.numel() > 1 and bool((g[1:] < g[:-1]).any()):
            raise ValueError("attention plan: groups must be non-decreasing along the tokens")
    n_groups = int(max(q_group.max(), k_group.max())) + 1 if nq and nk else 1
    q_onehot = F.one_hot(q_group, n_groups).float()
    k_onehot = F.one_hot(k_group, n_groups).float()
    k_count = k_valid.float() @ k_onehot  # (B, G)
    q_ok = q_valid & (k_count[:, q_group] > 0)
    q_count = q_ok.float() @ q_onehot
    k_ok = k_valid & (q_count[:, k_group] > 0)
    k_count = k_ok.float() @ k_onehot
    full = bool(q_ok.all()) and bool(k_ok.all()) and n_groups == 1

    q_rows, k_rows = int((q_flat >= 0).sum()), int((k_flat >= 0).sum())
    if dense:
        if q_rows != q_flat.numel() or k_rows != k_flat.numel():
            raise ValueError("a dense attention plan needs every token in the flat layout (padding included)")
        q_order, k_order = q_flat.flatten(), k_flat.flatten()
    else:
        q_order, k_order = q_flat[q_ok], k_flat[k_ok]
        if bool((q_order < 0).any()) or bool((k_order < 0).any()):
            raise ValueError("a packed attention plan needs every valid token in the flat layout")
    dense_mask = None
    if dense and not full:
        same = q_group[:, None] == k_group[None, :]
        dense_mask = (q_ok[:, :, None] & k_ok[:, None, :] & same)[:, None]
    lens = torch.stack([q_count.flatten(), k_count.flatten()], dim=-1).long()
    lens = lens[lens[:, 0] > 0].tolist()
    return AttentionPlan(
        q_in=reorder(q_order, q_rows),
        k_in=reorder(k_order, k_rows),
        q_ok=q_ok,
        dense_mask=dense_mask,
        q_lens=[q for q, _ in lens],
        k_lens=[k for _, k in lens],
        dense=dense,
        full=full,
    )


class AttentionBackend(Protocol):
    name: str
    dense: bool  # whether plans (and the model's token layout) hold every token, padding included

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor: ...


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """SDPA on (B, N, H, D) tensors."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class ReferenceAttention:
    """Dense-mask SDPA over every token; fully masked query rows are made safe and zeroed."""

    name = "reference"
    dense = True

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if not plan.dense:
            raise ValueError("reference attention needs a plan built with dense=True")
        b, lq = plan.q_ok.shape
        qa = move(q, plan.q_in).view(b, lq, *q.shape[1:])
        ka = move(k, plan.k_in).view(b, -1, *k.shape[1:])
        va = move(v, plan.k_in).view(b, -1, *v.shape[1:])
        if plan.dense_mask is None:
            out = _sdpa(qa, ka, va)
        else:
            # A row with no visible key would give NaN; let it see everything, then zero it.
            mask = plan.dense_mask | ~plan.q_ok[:, None, :, None]
            out = _sdpa(qa, ka, va, mask) * plan.q_ok[:, :, None, None].to(q.dtype)
        return move(out.reshape(b * lq, *q.shape[1:]), flipped(plan.q_in))


class PackedAttention:
    """Gather the valid tokens into segments, attend per segment, gather back."""

    name = "packed"
    dense = False

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if plan.dense:
            raise ValueError(f"{self.name} attention needs a plan built with dense=False")
        out = self.segments(move(q, plan.q_in), move(k, plan.k_in), move(v, plan.k_in), plan)
        return move(out, flipped(plan.q_in))

    def segments(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        """(n_q, H, D) queries in segment order -> (n_q, H, D); one SDPA call per segment,
        or one batched call when the segments have equal lengths."""
        if not plan.q_lens:
            return q.new_zeros(0, *q.shape[1:])
        if plan.uniform:
            s = len(plan.q_lens)
            out = _sdpa(q.view(s, -1, *q.shape[1:]), k.view(s, -1, *k.shape[1:]), v.view(s, -1, *v.shape[1:]))
            return out.reshape(q.shape)
        outs = [
            _sdpa(qs[None], ks[None], vs[None])[0]
            for qs, ks, vs in zip(q.split(plan.q_lens), k.split(plan.k_lens), v.split(plan.k_lens), strict=True)
        ]
        return torch.cat(outs)


def _cu_seqlens(lens: list[int], device: torch.device) -> Tensor:
    return F.pad(torch.tensor(lens, device=device, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))


def _require_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"attention_backend={name!r} needs a CUDA device and none is available; use 'packed' or 'reference' on CPU"
        )


class FlashAttention(PackedAttention):
    """torch's varlen flash attention over the packed segments (CUDA, fp16 / bf16)."""

    name = "flash"

    def __init__(self) -> None:
        _require_cuda(self.name)
        from torch.nn.attention.varlen import varlen_attn

        self._varlen = varlen_attn

    def segments(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if not plan.q_lens:
            return q.new_zeros(0, *q.shape[1:])
        return self._varlen(
            q,
            k,
            v,
            _cu_seqlens(plan.q_lens, q.device),
            _cu_seqlens(plan.k_lens, q.device),
            max(plan.q_lens),
            max(plan.k_lens),
        )


class FlexAttention(PackedAttention):
    """flex_attention on the packed sequence with a same-segment block mask (CUDA, compiled)."""

    name = "flex"

    def __init__(self) -> None:
        _require_cuda(self.name)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = create_block_mask
        self._flex = torch.compile(flex_attention, dynamic=True)

    def segments(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if not plan.q_lens:
            return q.new_zeros(0, *q.shape[1:])
        ids = torch.arange(len(plan.q_lens), device=q.device)
        q_seg = ids.repeat_interleave(torch.tensor(plan.q_lens, device=q.device))
        k_seg = ids.repeat_interleave(torch.tensor(plan.k_lens, device=q.device))

        def same_segment(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return q_seg[qi] == k_seg[ki]

        mask = self._create_block_mask(same_segment, None, None, q.shape[0], k.shape[0], device=q.device)
        out = self._flex(
            rearrange(q, "n h d -> 1 h n d"),
            rearrange(k, "n h d -> 1 h n d"),
            rearrange(v, "n h d -> 1 h n d"),
            block_mask=mask,
        )
        return rearrange(out, "1 h n d -> n h d")


class XformersAttention(PackedAttention):
    """xformers memory-efficient attention with a BlockDiagonalMask over the segments (CUDA)."""

    name = "xformers"

    def __init__(self) -> None:
        _require_cuda(self.name)
        try:
            import xformers.ops as xops
        except ImportError as e:
            raise RuntimeError(
                "attention_backend='xformers' needs the xformers package: "
                "pip install -c constraints.txt 'klear-lightning[cuda]'"
            ) from e
        self._xops = xops

    def segments(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if not plan.q_lens:
            return q.new_zeros(0, *q.shape[1:])
        bias = self._xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(plan.q_lens, plan.k_lens)
        return self._xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]


BACKENDS: dict[str, type] = {
    "reference": ReferenceAttention,
    "packed": PackedAttention,
    "flash": FlashAttention,
    "flex": FlexAttention,
    "xformers": XformersAttention,
}


def make_backend(name: str) -> AttentionBackend:
    if name not in BACKENDS:
        raise ValueError(f"attention_backend = {name!r} is not one of {sorted(BACKENDS)}")
    return BACKENDS[name]()
