"""Attention backends behind one interface: plan once per forward, attend in every block.

A plan says which keys each query may see: keys must be valid (real tokens of present streams)
and, when groups are given, in the query's group (isolated modalities). Queries that are not
valid, or see no key, get a zero output. Backends:
- ``reference``: one SDPA call with a dense boolean mask (B, 1, Nq, Nk): the ground truth.
- ``packed``: invalid tokens removed; every (sample, group) is one segment; on CPU one SDPA
  call per segment, no mask.
- ``flash`` / ``flex`` / ``xformers`` (CUDA): the packed layout through
  torch's varlen flash attention, flex_attention with a document block mask, or xformers'
  BlockDiagonalMask.
Tensors: q (B, Nq, H, D), k and v (B, Nk, H, D); the output has q's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


@dataclass
class AttentionPlan:
    """Who sees whom, in the forms the backends need (built by `plan_attention`)."""

    q_ok: Tensor  # (B, Nq) bool: valid and sees at least one key
    dense_mask: Tensor | None  # (B, 1, Nq, Nk) bool, None when every query sees every key
    q_index: Tensor  # flat indices into (B * Nq) of q_ok tokens, segment-major
    k_index: Tensor
    q_lens: list[int]  # per non-empty segment
    k_lens: list[int]
    full: bool  # every query sees every key: no mask, no packing needed


def plan_attention(
    q_valid: Tensor,
    k_valid: Tensor,
    q_group: Tensor | None = None,
    k_group: Tensor | None = None,
    dense: bool = True,
) -> AttentionPlan:
    """Build the plan. Groups (N,) int must be non-decreasing along the tokens (streams in order)."""
    if (q_group is None) != (k_group is None):
        raise ValueError("attention plan: give groups for both queries and keys, or for neither")
    b, nq = q_valid.shape
    nk = k_valid.shape[1]
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
    dense_mask = None
    if dense and not full:
        same = q_group[:, None] == k_group[None, :]
        dense_mask = (q_ok[:, :, None] & k_ok[:, None, :] & same)[:, None]
    lens = torch.stack([q_count.flatten(), k_count.flatten()], dim=-1).long()
    lens = lens[lens[:, 0] > 0].tolist()
    return AttentionPlan(
        q_ok=q_ok,
        dense_mask=dense_mask,
        q_index=q_ok.flatten().nonzero().squeeze(-1),
        k_index=k_ok.flatten().nonzero().squeeze(-1),
        q_lens=[q for q, _ in lens],
        k_lens=[k for _, k in lens],
        full=full,
    )


class AttentionBackend(Protocol):
    name: str
    dense: bool  # whether plans need the dense mask

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor: ...


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """SDPA on (B, N, H, D) tensors."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


class ReferenceAttention:
    """Dense-mask SDPA; fully masked query rows are made safe and zeroed."""

    name = "reference"
    dense = True

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if plan.dense_mask is None:
            if not plan.full:
                raise ValueError("reference attention needs a plan built with dense=True")
            return _sdpa(q, k, v)
        # A row with no visible key would give NaN; let it see everything, then zero it.
        mask = plan.dense_mask | ~plan.q_ok[:, None, :, None]
        out = _sdpa(q, k, v, mask)
        return out * plan.q_ok[:, :, None, None].to(out.dtype)


class _GatherRows(torch.autograd.Function):
    """x.index_select(0, index) for unique indices; the backward copies rows back (index_copy)
    instead of accumulating them (index_add), which is several times faster on CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy(0, index, grad), None


class PackedAttention:
    """Shared gather / scatter around a segment-wise attention kernel."""

    name = "packed"
    dense = False

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        if plan.full:
            return self.unmasked(q, k, v)
        b, nq, h, d = q.shape
        qf = _GatherRows.apply(q.reshape(b * nq, h, d), plan.q_index)
        kf = _GatherRows.apply(k.reshape(-1, h, d), plan.k_index)
        vf = _GatherRows.apply(v.reshape(-1, h, d), plan.k_index)
        out = self.segments(qf, kf, vf, plan)
        scattered = out.new_zeros(b * nq, h, d).index_copy(0, plan.q_index, out)
        return scattered.view(b, nq, h, d)

    def unmasked(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _sdpa(q, k, v)

    def segments(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        """(n_q, H, D) packed queries -> (n_q, H, D); one SDPA call per segment."""
        outs = []
        for qs, ks, vs in zip(
            q.split(plan.q_lens), k.split(plan.k_lens), v.split(plan.k_lens), strict=True
        ):
            outs.append(_sdpa(qs[None], ks[None], vs[None])[0])
        return torch.cat(outs) if outs else q.new_zeros(0, *q.shape[1:])


def _cu_seqlens(lens: list[int], device: torch.device) -> Tensor:
    return F.pad(torch.tensor(lens, device=device, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))


def _require_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"attention_backend={name!r} needs a CUDA device and none is available; "
            "use 'packed' or 'reference' on CPU"
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
            q, k, v,
            _cu_seqlens(plan.q_lens, q.device), _cu_seqlens(plan.k_lens, q.device),
            max(plan.q_lens), max(plan.k_lens),
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
            rearrange(q, "n h d -> 1 h n d"), rearrange(k, "n h d -> 1 h n d"),
            rearrange(v, "n h d -> 1 h n d"), block_mask=mask,
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

    def unmasked(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self._xops.memory_efficient_attention(q, k, v)

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
