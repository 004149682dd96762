"""The single-tower MM-DiT: four streams, per-stream weights, one joint attention per block."""

from __future__ import annotations

from torch import Tensor, nn

from klear_lightning.models.attention import AttentionBackend
from klear_lightning.models.config import ModelConfig
from klear_lightning.models.denoiser import (
    Denoiser,
    JointAttention,
    joint_attention,
    layer_key,
    query_streams,
    stream_layers,
)
from klear_lightning.models.layers import Rows, StreamLayer, joint_qkv
from klear_lightning.streams import STREAMS, ModelInputs, ModelOutputs


class JointBlock(nn.Module):
    """Per-stream adaLN-Zero / QKV / MLP around ONE attention over the concatenated streams.

    Returns the updated streams: all four, or only video and audio in the last block (where the
    text streams only give keys and values).
    """

    def __init__(self, cfg: ModelConfig, last: bool = False):
        super().__init__()
        self.cfg = cfg
        self.streams = stream_layers(cfg, last)

    def layer(self, stream: str) -> StreamLayer:
        return self.streams[layer_key(self.cfg, stream)]

    @property
    def queries(self) -> tuple[str, ...]:
        return query_streams({s: self.layer(s) for s in STREAMS})

    def forward(
        self,
        x: dict[str, Tensor],
        c: dict[str, Tensor],
        row: dict[str, Rows],
        attention: JointAttention,
        backend: AttentionBackend,
    ) -> dict[str, Tensor]:
        """x[s] (n_s, dim) flat tokens; c[s] conditioning rows, row[s] each token's row;
        `attention` planned for this block's `queries`."""
        layers = [self.layer(s) for s in STREAMS]
        mods = {s: layer.modulation(c[s], row[s]) for s, layer in zip(STREAMS, layers, strict=True)}
        q, k, v = joint_qkv(
            layers, [x[s] for s in STREAMS], list(mods.values()), attention.q_rotation, attention.k_rotation
        )
        out = backend(q, k, v, attention.plan).flatten(1)
        parts = out.split([x[s].shape[0] for s in self.queries])
        return {s: self.layer(s).residual(x[s], o, mods[s]) for s, o in zip(self.queries, parts, strict=True)}


class MMDiT(Denoiser):
    """KLEAR's single tower. `forward(inputs, isolate_modalities)` -> velocities in latent layout.

    isolate_modalities masks cross-modal attention: {video, video_text} and {audio_text, audio}
    cannot see each other (the "isolated" prediction of modality guidance). With a packed
    backend the blocks run on the valid tokens only (see `embed`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, JointBlock)

    def forward(self, inputs: ModelInputs, isolate_modalities: bool = False) -> ModelOutputs:
        tokens = self.embed(inputs, packed=not self.backend.dense, isolate_modalities=isolate_modalities)
        attention: dict[tuple[str, ...], JointAttention] = {}
        x = tokens.x
        for block in self.blocks:
            queries = block.queries
            if queries not in attention:
                attention[queries] = joint_attention(tokens, queries, STREAMS, isolate_modalities, self.backend.dense)
            x = x | block(x, tokens.c, tokens.row, attention[queries], self.backend)
        return self.heads(x, tokens, inputs)
