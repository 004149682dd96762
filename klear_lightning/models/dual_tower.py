"""The dual-tower baseline (the paper's Table 2, Ovi-like), with the single tower's interface.

Two towers of `depth` blocks: the video tower attends jointly over {video, video_text}, the audio
tower over {audio_text, audio}, each with per-stream MM-DiT weights. In every block, after self
attention, video tokens cross-attend to audio tokens and audio tokens to video tokens (both from
the same pre-cross states), then each stream runs its MLP. Cross-attention uses the MixD-RoPE
positions of both sides and a zero-initialised output, so training starts from two independent
towers. isolate_modalities turns the cross-attention off. In the last block the text streams only
give keys / values (`pre_only` layers). Tokens are flat as in the single tower (see `embed`).
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from klear_lightning.models.attention import AttentionBackend, AttentionPlan, plan_attention
from klear_lightning.models.config import ModelConfig
from klear_lightning.models.denoiser import (
    Denoiser,
    JointAttention,
    joint_attention,
    layer_key,
    query_streams,
    stream_layers,
)
from klear_lightning.models.layers import QKNorm, Rows, StreamLayer, init_param, joint_qkv
from klear_lightning.models.rope import apply_rope
from klear_lightning.streams import STREAMS, ModelInputs, ModelOutputs

TOWERS: dict[str, tuple[str, str]] = {"video": ("video", "video_text"), "audio": ("audio_text", "audio")}
OTHER = {"video": "audio", "audio": "video"}


class CrossAttention(nn.Module):
    """Queries from one modality's latent tokens, keys / values from the other's."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = QKNorm(dim // heads, eps=eps)
        self.k_norm = QKNorm(dim // heads, eps=eps)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, other: Tensor, rope_q: Tensor, rope_k: Tensor, plan: AttentionPlan, backend: AttentionBackend
    ) -> Tensor:
        q = rearrange(self.q(self.norm_q(x)), "n (h d) -> n h d", h=self.heads)
        k, v = rearrange(self.kv(self.norm_kv(other)), "n (two h d) -> two n h d", two=2, h=self.heads)
        q = apply_rope(self.q_norm(q), rope_q)
        k = apply_rope(self.k_norm(k), rope_k)
        return self.proj(backend(q, k, v, plan).flatten(1))


class DualBlock(nn.Module):
    """Tower self-attention, audio <-> video cross-attention, MLPs; returns the updated streams
    (only video and audio in the last block)."""

    def __init__(self, cfg: ModelConfig, last: bool = False):
        super().__init__()
        self.cfg = cfg
        self.streams = stream_layers(cfg, last)
        self.cross = nn.ModuleDict({m: CrossAttention(cfg.dim, cfg.heads, cfg.norm_eps) for m in TOWERS})

    def layer(self, stream: str) -> StreamLayer:
        return self.streams[layer_key(self.cfg, stream)]

    def queries(self, tower: str) -> tuple[str, ...]:
        return query_streams({s: self.layer(s) for s in TOWERS[tower]})

    def forward(
        self,
        x: dict[str, Tensor],
        c: dict[str, Tensor],
        row: dict[str, Rows],
        towers: dict[str, JointAttention],
        ropes: dict[str, Tensor],
        plans: dict[str, AttentionPlan],
        backend: AttentionBackend,
        cross: bool,
    ) -> dict[str, Tensor]:
        """`towers[t]` planned for `queries(t)`; ropes / plans of the cross-attention by modality."""
        mods = {s: self.layer(s).modulation(c[s], row[s]) for s in STREAMS}
        out = {}
        for tower, streams in TOWERS.items():
            layers = [self.layer(s) for s in streams]
            att = towers[tower]
            q, k, v = joint_qkv(
                layers, [x[s] for s in streams], [mods[s] for s in streams], att.q_rotation, att.k_rotation
            )
            attn = backend(q, k, v, att.plan).flatten(1)
            queries = self.queries(tower)
            for s, a in zip(queries, attn.split([x[s].shape[0] for s in queries]), strict=True):
                out[s] = self.layer(s).attn_residual(x[s], a, mods[s])
        if cross:
            latent = {m: out[m] for m in TOWERS}
            for m in TOWERS:
                o = OTHER[m]
                out[m] = latent[m] + self.cross[m](latent[m], latent[o], ropes[m], ropes[o], plans[m], backend)
        return {s: self.layer(s).mlp_residual(h, mods[s]) for s, h in out.items()}


class DualTower(Denoiser):
    """Two towers with bidirectional audio-video cross-attention; same interface as `MMDiT`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, DualBlock)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for block in self.blocks:
            for cross in block.cross.values():
                init_param(cross.proj.weight, nn.init.zeros_)
                init_param(cross.proj.bias, nn.init.zeros_)

    def forward(self, inputs: ModelInputs, isolate_modalities: bool = False) -> ModelOutputs:
        tokens = self.embed(inputs, packed=not self.backend.dense, isolate_modalities=isolate_modalities)
        dense = self.backend.dense
        ropes = {m: tokens.rotation[m] for m in TOWERS}
        plans = {}
        if not isolate_modalities:
            plans = {
                m: plan_attention(
                    tokens.valid[m],
                    tokens.valid[OTHER[m]],
                    dense=dense,
                    q_flat=tokens.flat[m],
                    k_flat=tokens.flat[OTHER[m]],
                )
                for m in TOWERS
            }
        attention: dict[tuple[tuple[str, ...], tuple[str, ...]], JointAttention] = {}
        x = tokens.x
        for block in self.blocks:
            towers = {}
            for tower, streams in TOWERS.items():
                key = (block.queries(tower), streams)
                if key not in attention:
                    attention[key] = joint_attention(tokens, *key, False, dense)
                towers[tower] = attention[key]
            x = x | block(x, tokens.c, tokens.row, towers, ropes, plans, self.backend, cross=not isolate_modalities)
        return self.heads(x, tokens, inputs)
