"""The single-tower MM-DiT: four streams, per-stream weights, one joint attention per block."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from klear_lightning.models.attention import AttentionBackend, AttentionPlan, make_backend, plan_attention
from klear_lightning.models.config import ModelConfig
from klear_lightning.models.embed import STREAM_GROUP, OutputHeads, StreamEmbedder, StreamTokens, joint_rope
from klear_lightning.models.layers import StreamLayer, init_weights, joint_qkv
from klear_lightning.streams import STREAMS, ModelInputs, ModelOutputs


def stream_layers(cfg: ModelConfig) -> nn.ModuleDict:
    """Per-stream layers; with share_text_weights both text streams use the one under "text"."""
    names = ("video", "text", "audio") if cfg.share_text_weights else STREAMS
    return nn.ModuleDict({n: StreamLayer(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.norm_eps) for n in names})


def layer_key(cfg: ModelConfig, stream: str) -> str:
    return "text" if cfg.share_text_weights and stream in ("video_text", "audio_text") else stream


class JointBlock(nn.Module):
    """Per-stream adaLN-Zero / QKV / MLP around ONE attention over the concatenated streams."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.streams = stream_layers(cfg)

    def layer(self, stream: str) -> StreamLayer:
        return self.streams[layer_key(self.cfg, stream)]

    def forward(
        self,
        x: dict[str, Tensor],
        c: dict[str, Tensor],
        rotation: Tensor,
        plan: AttentionPlan,
        backend: AttentionBackend,
    ) -> dict[str, Tensor]:
        layers = [self.layer(s) for s in STREAMS]
        mods = {s: layer.modulation(c[s]) for s, layer in zip(STREAMS, layers, strict=True)}
        q, k, v = joint_qkv(layers, [x[s] for s in STREAMS], [mods[s] for s in STREAMS], rotation)
        out = rearrange(backend(q, k, v, plan), "b n h d -> b n (h d)")
        parts = out.split([x[s].shape[1] for s in STREAMS], dim=1)
        return {s: self.layer(s).residual(x[s], o, mods[s]) for s, o in zip(STREAMS, parts, strict=True)}


class MMDiT(nn.Module):
    """KLEAR's single tower. `forward(inputs, isolate_modalities)` -> velocities in latent layout.

    isolate_modalities masks cross-modal attention: {video, video_text} and {audio_text, audio}
    cannot see each other (the "isolated" prediction of modality guidance).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = StreamEmbedder(cfg)
        self.blocks = nn.ModuleList(JointBlock(cfg) for _ in range(cfg.depth))
        self.heads = OutputHeads(cfg)
        self.null_video_text = nn.Parameter(torch.empty(cfg.text_dim))
        self.null_audio_text = nn.Parameter(torch.empty(cfg.text_dim))
        self.backend = make_backend(cfg.attention_backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.normal_(self.null_video_text, std=0.02)
        nn.init.normal_(self.null_audio_text, std=0.02)

    def attention_plan(self, tokens: StreamTokens, isolate_modalities: bool) -> AttentionPlan:
        valid = torch.cat([tokens.valid[s] for s in STREAMS], dim=1)
        groups = None
        if isolate_modalities:
            groups = torch.cat([
                torch.full((tokens.x[s].shape[1],), STREAM_GROUP[s], dtype=torch.long, device=valid.device)
                for s in STREAMS
            ])
        return plan_attention(valid, valid, groups, groups, dense=self.backend.dense)

    def forward(self, inputs: ModelInputs, isolate_modalities: bool = False) -> ModelOutputs:
        tokens = self.embed(inputs)
        x = tokens.x
        rotation = joint_rope(self.embed.rope(tokens.shapes), STREAMS, x["video"].device)
        plan = self.attention_plan(tokens, isolate_modalities)
        for block in self.blocks:
            x = block(x, tokens.c, rotation, plan, self.backend)
        return self.heads(x, tokens, inputs)
