"""Synchformer (Iashin et al. 2024), the audio-visual offset classifier, in the key layout of the
released `synchformer_state_dict.pth` (read by av-benchmark and MMAudio): `vfeat_extractor`
(MotionFormer), `afeat_extractor` (AST on log-mel), `vproj` / `aproj`, `transformer` (offset
classifier, 21 classes from -2 s to +2 s), with its loader. Its inputs are segments of 16 frames
and of 66 log-mel frames; `klear_lightning.metrics.synchformer` cuts clips into them.
"""

from __future__ import annotations

import collections
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from klear_lightning.metrics.nets.layers import Mlp, attend
from klear_lightning.safe_pickle import load_torch_file

SEGMENT_FRAMES = 16


MEL_FRAMES = 66


VIDEO_TOKENS = SEGMENT_FRAMES // 2  # per segment: 3D patches span 2 frames


AUDIO_TOKENS = (MEL_FRAMES - 16) // 10 + 1  # per segment: AST time patches (16 wide, stride 10)


@dataclass
class SynchformerConfig:
    """Architecture of the released Synchformer; the defaults are the released sizes."""

    dim: int = 768
    video_depth: int = 12
    video_heads: int = 12
    image_size: int = 224
    patch: int = 16
    audio_depth: int = 12
    audio_heads: int = 12
    mel_bins: int = 128
    global_depth: int = 3
    global_heads: int = 8
    mlp_ratio: int = 4
    segments: int = 14
    num_classes: int = 21

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> SynchformerConfig:
        """Sizes read off a checkpoint (heads keep the released values)."""

        def depth(prefix: str) -> int:
            return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})

        try:
            dim = state["vproj.weight"].shape[0]
            grid2 = state["vfeat_extractor.pos_embed"].shape[1] - 1
            patch = state["vfeat_extractor.patch_embed_3d.proj.weight"].shape[-1]
            cfg = cls(
                dim=dim,
                video_depth=depth("vfeat_extractor.blocks."),
                image_size=int(round(math.sqrt(grid2))) * patch,
                patch=patch,
                audio_depth=depth("afeat_extractor.ast.encoder.layer."),
                global_depth=depth("transformer.blocks."),
                mlp_ratio=state["transformer.blocks.0.mlp.0.weight"].shape[0] // dim,
                num_classes=state["transformer.off_head.weight"].shape[0],
            )
            rows = state["transformer.pos_emb_cfg.pos_emb"].shape[1]
        except KeyError as err:
            raise ValueError(f"not a Synchformer state dict: missing {err}") from err
        cfg.segments, extra = divmod(rows - 2, VIDEO_TOKENS + AUDIO_TOKENS)
        if extra or cfg.segments < 1:
            raise ValueError(
                f"positional table of {rows} rows is not 2 + {VIDEO_TOKENS + AUDIO_TOKENS} tokens per segment"
            )
        return cfg

    @property
    def global_length(self) -> int:
        return 2 + self.segments * (VIDEO_TOKENS + AUDIO_TOKENS)


def _holder(**children: nn.Module | nn.Parameter) -> nn.Module:
    """A bare module holding `children`: reproduces the released nesting of state-dict keys."""
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


class AggregationLayer(nn.TransformerEncoderLayer):
    """Pre-norm encoder layer with a learned CLS token; returns the CLS output (N, L, D) -> (N, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__(
            dim,
            heads,
            dim_feedforward=mlp_ratio * dim,
            dropout=0.0,
            activation=nn.GELU(),
            batch_first=True,
            norm_first=True,
            layer_norm_eps=1e-6,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class DividedAttention(nn.Module):
    """Attention within one frame (space) or one patch position (time); CLS attends to everything."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, frames: int, over: str) -> Tensor:
        b = x.shape[0]
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three (b h) n d", three=3, h=self.heads)
        cls_out = F.scaled_dot_product_attention(q[:, :1], k, v)
        group = "(bh f) n d" if over == "space" else "(bh n) f d"
        q_, k_, v_ = (rearrange(t[:, 1:], f"bh (f n) d -> {group}", f=frames) for t in (q, k, v))
        r = q_.shape[0] // q.shape[0]
        k_ = torch.cat([repeat(k[:, :1], "bh 1 d -> (bh r) 1 d", r=r), k_], dim=1)
        v_ = torch.cat([repeat(v[:, :1], "bh 1 d -> (bh r) 1 d", r=r), v_], dim=1)
        out = rearrange(F.scaled_dot_product_attention(q_, k_, v_), f"{group} -> bh (f n) d", f=frames, bh=q.shape[0])
        out = rearrange(torch.cat([cls_out, out], dim=1), "(b h) n d -> b n (h d)", b=b)
        return self.proj(out)


class DividedBlock(nn.Module):
    """MotionFormer block: time attention (norm3), then space attention (norm1), then MLP (norm2)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = x + self.timeattn(self.norm3(x), frames, "time")
        x = x + self.attn(self.norm1(x), frames, "space")
        return x + self.mlp(self.norm2(x))


class MotionFormer(nn.Module):
    """Video segment encoder: (N, 3, 16, H, W) in [-1, 1] -> (N, 8, D), one vector per frame pair."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d, p = cfg.dim, cfg.patch
        self.grid = cfg.image_size // p
        self.frames = VIDEO_TOKENS
        # `patch_embed` (2D) is in the released state dict but unused: the 3D patch embedding is used.
        self.patch_embed = _holder(proj=nn.Conv2d(3, d, p, p))
        self.patch_embed_3d = _holder(proj=nn.Conv3d(3, d, (2, p, p), (2, p, p)))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.frames, d))
        self.blocks = nn.ModuleList(DividedBlock(d, cfg.video_heads, cfg.mlp_ratio) for _ in range(cfg.video_depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.spatial_attn_agg = AggregationLayer(d, cfg.video_heads, cfg.mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(self.patch_embed_3d.proj(x), "n d t h w -> n (t h w) d")
        space = self.pos_embed[:, 1:].repeat(1, self.frames, 1)
        time = self.temp_embed.repeat_interleave(self.grid**2, dim=1)
        pos = torch.cat([self.pos_embed[:, :1], space + time], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        for block in self.blocks:
            x = block(x, self.frames)
        x = self.norm(x[:, 1:])
        x = rearrange(x, "n (t s) d -> (n t) s d", t=self.frames)
        return rearrange(self.spatial_attn_agg(x), "(n t) d -> n t d", t=self.frames)


class ASTLayer(nn.Module):
    """Pre-norm ViT layer in the Hugging Face AST key layout (transformers < 4.48 names)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _holder(
            attention=_holder(query=nn.Linear(dim, dim), key=nn.Linear(dim, dim), value=nn.Linear(dim, dim)),
            output=_holder(dense=nn.Linear(dim, dim)),
        )
        self.intermediate = _holder(dense=nn.Linear(dim, mlp_ratio * dim))
        self.output = _holder(dense=nn.Linear(mlp_ratio * dim, dim))
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        att = self.attention.attention
        h = self.layernorm_before(x)
        x = x + self.attention.output.dense(attend(att.query(h), att.key(h), att.value(h), self.heads))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ASTEncoder(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.freq_tokens = (cfg.mel_bins - 16) // 10 + 1
        self.time_tokens = AUDIO_TOKENS
        self.embeddings = _holder(
            cls_token=nn.Parameter(torch.zeros(1, 1, d)),
            distillation_token=nn.Parameter(torch.zeros(1, 1, d)),
            position_embeddings=nn.Parameter(torch.zeros(1, self.freq_tokens * self.time_tokens + 2, d)),
            patch_embeddings=_holder(projection=nn.Conv2d(1, d, 16, 10)),
        )
        self.encoder = _holder(
            layer=nn.ModuleList(ASTLayer(d, cfg.audio_heads, cfg.mlp_ratio) for _ in range(cfg.audio_depth))
        )
        self.layernorm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, mel: Tensor) -> Tensor:
        """mel (N, F, T) -> tokens (N, f * t, D) ordered frequency-major, aux tokens removed."""
        emb = self.embeddings
        x = rearrange(emb.patch_embeddings.projection(mel[:, None]), "n d f t -> n (f t) d")
        aux = torch.cat([emb.cls_token, emb.distillation_token], dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat([aux, x], dim=1) + emb.position_embeddings
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)[:, 2:]


class AST(nn.Module):
    """Audio segment encoder: log-mel (N, 128, 66) -> (N, 6, D), one vector per time patch."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.ast = ASTEncoder(cfg)
        self.freq_attn_agg = AggregationLayer(cfg.dim, cfg.audio_heads, cfg.mlp_ratio)

    def forward(self, mel: Tensor) -> Tensor:
        x = rearrange(self.ast(mel), "n (f t) d -> (n t) f d", f=self.ast.freq_tokens)
        return rearrange(self.freq_attn_agg(x), "(n t) d -> n t d", t=self.ast.time_tokens)


class GlobalAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(attend(self.query(x), self.key(x), self.value(x), self.heads))


class GlobalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = GlobalAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class OffsetClassifier(nn.Module):
    """Joint transformer over [OFF, video..., MOD, audio...]; classifies the offset from OFF."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.vis_in_lnorm = nn.LayerNorm(d)
        self.aud_in_lnorm = nn.LayerNorm(d)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_emb_cfg = _holder(pos_emb=nn.Parameter(torch.zeros(1, cfg.global_length, d)))
        self.blocks = nn.Sequential(*(GlobalBlock(d, cfg.global_heads, cfg.mlp_ratio) for _ in range(cfg.global_depth)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, cfg.num_classes)

    def forward(self, v: Tensor, a: Tensor, trim_table: bool = False) -> Tensor:
        """Offset logits; the positional table must match the window's token count, or be longer
        with `trim_table` (its first rows are used, as Verse-Bench's loader trims)."""
        b = v.shape[0]
        x = torch.cat(
            [
                self.OFF_tok.expand(b, -1, -1),
                self.vis_in_lnorm(v),
                self.MOD_tok.expand(b, -1, -1),
                self.aud_in_lnorm(a),
            ],
            dim=1,
        )
        pos = self.pos_emb_cfg.pos_emb
        tokens, rows = x.shape[1], pos.shape[1]
        if rows < tokens or (rows > tokens and not trim_table):
            raise ValueError(
                f"Synchformer window has {tokens} tokens but the checkpoint's positional "
                f"table has {rows} rows ({(rows - 2) // (VIDEO_TOKENS + AUDIO_TOKENS)} "
                f"segments); refusing to run a window the table was not made for"
            )
        x = self.ln_f(self.blocks(x + pos[:, :tokens]))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """Offset logits for windows of segments: video (B, S, 3, 16, H, W), mel (B, S, 128, 66)."""

    def __init__(self, cfg: SynchformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or SynchformerConfig()
        d = self.config.dim
        self.vfeat_extractor = MotionFormer(self.config)
        self.afeat_extractor = AST(self.config)
        self.vproj = nn.Linear(d, d)
        self.aproj = nn.Linear(d, d)
        self.transformer = OffsetClassifier(self.config)

    def video_features(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        return rearrange(
            self.vfeat_extractor(rearrange(video, "b s c t h w -> (b s) c t h w")), "(b s) t d -> b s t d", b=b
        )

    def audio_features(self, mel: Tensor) -> Tensor:
        b = mel.shape[0]
        return rearrange(self.afeat_extractor(rearrange(mel, "b s f t -> (b s) f t")), "(b s) t d -> b s t d", b=b)

    def compare(self, vfeat: Tensor, afeat: Tensor, trim_table: bool = False) -> Tensor:
        """Offset logits (B, 21) for per-segment features (B, S, tv, D) and (B, S, ta, D)."""
        v = rearrange(self.vproj(vfeat), "b s t d -> b (s t) d")
        a = rearrange(self.aproj(afeat), "b s t d -> b (s t) d")
        return self.transformer(v, a, trim_table)

    def forward(self, video: Tensor, mel: Tensor, trim_table: bool = False) -> Tensor:
        return self.compare(self.video_features(video), self.audio_features(mel), trim_table)


# What a Synchformer training checkpoint (`{'args': cfg, 'model': ..., 'optimizer': ..., 'metrics':
# ..., 'scaler': ..., 'lr_scheduler': ...}`) pickles besides tensors: plain builtins referenced by
# OmegaConf's metadata, and foreign classes kept as inert records (never constructed).
CHECKPOINT_ALLOWED = (dict, list, int, float, str, bool, tuple, collections.defaultdict, typing.Any)


CHECKPOINT_OPAQUE = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    *(
        f"omegaconf.nodes.{n}"
        for n in (
            "AnyNode",
            "StringNode",
            "IntegerNode",
            "FloatNode",
            "BooleanNode",
            "BytesNode",
            "PathNode",
            "EnumNode",
        )
    ),
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


def load_synchformer(path: str | Path) -> Synchformer:
    """Load the released `synchformer_state_dict.pth` or a Synchformer training checkpoint (weights
    under `model`, `module.` prefixes stripped) strictly into the project's network; sizes are read
    off the file. Read with the allow-list reader: anything else in the file is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synchformer checkpoint not found: {path}")
    state = load_torch_file(path, allowed=CHECKPOINT_ALLOWED, opaque=CHECKPOINT_OPAQUE)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a Synchformer state dict (found {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model = Synchformer(SynchformerConfig.from_state_dict(state))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    model.load_state_dict(state, strict=True)
    return model.eval()
