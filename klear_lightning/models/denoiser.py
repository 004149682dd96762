"""What the single tower and the dual-tower baseline share: the `Denoiser` base (embedder, blocks,
output heads, null captions, attention backend), the per-stream layers of a block and the joint
attention over concatenated streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from klear_lightning.models.attention import AttentionPlan, make_backend, plan_attention
from klear_lightning.models.config import ModelConfig
from klear_lightning.models.embed import STREAM_GROUP, OutputHeads, StreamEmbedder, StreamTokens
from klear_lightning.models.layers import StreamLayer, init_param, init_weights
from klear_lightning.streams import GENERATED_STREAMS, STREAMS, TEXT_STREAMS


def stream_layers(cfg: ModelConfig, last: bool) -> nn.ModuleDict:
    """Per-stream layers; with share_text_weights both text streams use the one under "text".
    In the last block the text streams' outputs are unused: their layers are `pre_only`."""
    names = ("video", "text", "audio") if cfg.share_text_weights else STREAMS
    return nn.ModuleDict(
        {
            n: StreamLayer(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.norm_eps, pre_only=last and n not in GENERATED_STREAMS)
            for n in names
        }
    )


def layer_key(cfg: ModelConfig, stream: str) -> str:
    return "text" if cfg.share_text_weights and stream in TEXT_STREAMS else stream


@dataclass
class JointAttention:
    """One attention over concatenated streams: who sees whom, and the RoPE of queries and keys."""

    plan: AttentionPlan
    q_rotation: Tensor  # (Nq, 1, head_dim / 2) of the concatenated query streams
    k_rotation: Tensor  # (N, 1, head_dim / 2) of all the concatenated streams


def query_streams(layers: dict[str, StreamLayer]) -> tuple[str, ...]:
    """The streams (of `layers`, in order) that ask queries: those whose layer is not pre_only."""
    return tuple(s for s, layer in layers.items() if not layer.pre_only)


class Denoiser(nn.Module):
    """What every KLEAR denoiser shares: the stream embedder, `depth` blocks built by `block`,
    the output heads, the learned null captions and the attention backend."""

    def __init__(self, cfg: ModelConfig, block: Callable[..., nn.Module]):
        super().__init__()
        self.config = cfg
        self.embed = StreamEmbedder(cfg)
        self.blocks = nn.ModuleList(block(cfg, last=i == cfg.depth - 1) for i in range(cfg.depth))
        self.heads = OutputHeads(cfg)
        self.null_video_text = nn.Parameter(torch.empty(cfg.text_dim))
        self.null_audio_text = nn.Parameter(torch.empty(cfg.text_dim))
        self.backend = make_backend(cfg.attention_backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        init_param(self.null_video_text, partial(nn.init.normal_, std=0.02))
        init_param(self.null_audio_text, partial(nn.init.normal_, std=0.02))


def joint_attention(
    tokens: StreamTokens, queries: tuple[str, ...], keys: tuple[str, ...], isolate_modalities: bool, dense: bool
) -> JointAttention:
    """Plan and rotations of an attention from the concatenated `queries` streams to `keys`."""

    def groups(streams: tuple[str, ...]) -> Tensor | None:
        if not isolate_modalities:
            return None
        return torch.cat(
            [
                torch.full(
                    (tokens.valid[s].shape[1],), STREAM_GROUP[s], dtype=torch.long, device=tokens.valid[s].device
                )
                for s in streams
            ]
        )

    plan = plan_attention(
        torch.cat([tokens.valid[s] for s in queries], dim=1),
        torch.cat([tokens.valid[s] for s in keys], dim=1),
        groups(queries),
        groups(keys),
        dense=dense,
        q_flat=tokens.flat_index(queries),
        k_flat=tokens.flat_index(keys),
    )
    return JointAttention(plan, tokens.joint_rotation(queries), tokens.joint_rotation(keys))
