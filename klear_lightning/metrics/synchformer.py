"""DeSync / AV-A: audio-visual offset predicted by Synchformer (Iashin et al. 2024).

The network is implemented in the key layout of the released `synchformer_state_dict.pth` (read
by av-benchmark and MMAudio) and of Synchformer's training checkpoints (the same weights under
`model`, beside an OmegaConf `args` entry that is read as an inert record, never run):
`vfeat_extractor` (MotionFormer), `afeat_extractor` (AST on log-mel), `vproj` / `aproj`,
`transformer` (offset classifier, 21 classes from -2 s to +2 s). The official code, run on the same
seeded weights, gives the same logits (`benchmarks/parity/synchformer.py`).

Both protocols cut 25 fps video and 16 kHz mono audio into 0.64 s segments with a 0.32 s hop
(16 frames / hop 8; 10240 samples / hop 5120), scale pixels to [-1, 1] and take log-mel as AST does.
- `desync_avbench` (av-benchmark): short side resized to 224 (bicubic) and centre-cropped; windows
  of 14 segments (4.8 s) at the start and the end of the clip; mean |offset|.
- `desync_versebench` (Verse-Bench AV-A, `syncformer_inferencer.py` + its `cfg.yaml`): short side
  resized to 256 (cropped to even sizes, as its ffmpeg re-encode), centre crop 224; the first 4 s
  of the clip (shorter clips are counted apart: Verse-Bench's code fails on them); 11 segments
  starting at frame 2 (audio sample 1280), pixels divided by 255 in float16 as its transforms do;
  the top-1 offset of that one window, signed, averaged over clips. The released checkpoint's
  positional table has 198 rows (14 segments); Verse-Bench's loader trims it to the 156 rows its
  11-segment window needs, and this protocol does the same, explicitly. Anywhere else a window
  whose token count differs from the table is refused.
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

from klear_lightning.media import MediaClip
from klear_lightning.metrics.audio_prep import clip_audio, resample
from klear_lightning.metrics.base import BuildContext, ClipMetric, Column, MetricUnavailable, register_metric
from klear_lightning.metrics.video_prep import normalized, resample_video
from klear_lightning.safe_pickle import load_torch_file

VIDEO_FPS = 25.0
AUDIO_SR = 16000
SEGMENT_FRAMES = 16
SEGMENT_HOP_FRAMES = 8
SEGMENT_SAMPLES = 10240
SEGMENT_HOP_SAMPLES = 5120
MEL_FRAMES = 66
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974  # Synchformer's log-mel statistics (av-benchmark)
OFFSET_GRID = torch.linspace(-2.0, 2.0, 21)
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
            return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

        try:
            dim = state["vproj.weight"].shape[0]
            grid2 = state["vfeat_extractor.pos_embed"].shape[1] - 1
            patch = state["vfeat_extractor.patch_embed_3d.proj.weight"].shape[-1]
            cfg = cls(dim=dim, video_depth=depth("vfeat_extractor.blocks."),
                      image_size=int(round(math.sqrt(grid2))) * patch, patch=patch,
                      audio_depth=depth("afeat_extractor.ast.encoder.layer."),
                      global_depth=depth("transformer.blocks."),
                      mlp_ratio=state["transformer.blocks.0.mlp.0.weight"].shape[0] // dim,
                      num_classes=state["transformer.off_head.weight"].shape[0])
            rows = state["transformer.pos_emb_cfg.pos_emb"].shape[1]
        except KeyError as err:
            raise ValueError(f"not a Synchformer state dict: missing {err}") from err
        cfg.segments, extra = divmod(rows - 2, VIDEO_TOKENS + AUDIO_TOKENS)
        if extra or cfg.segments < 1:
            raise ValueError(f"positional table of {rows} rows is not 2 + {VIDEO_TOKENS + AUDIO_TOKENS} "
                             f"tokens per segment")
        return cfg

    @property
    def global_length(self) -> int:
        return 2 + self.segments * (VIDEO_TOKENS + AUDIO_TOKENS)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head scaled dot-product attention on (B, N, H * D) projections."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


def _holder(**children: nn.Module | nn.Parameter) -> nn.Module:
    """A bare module holding `children`: reproduces the released nesting of state-dict keys."""
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


class AggregationLayer(nn.TransformerEncoderLayer):
    """Pre-norm encoder layer with a learned CLS token; returns the CLS output (N, L, D) -> (N, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__(dim, heads, dim_feedforward=mlp_ratio * dim, dropout=0.0,
                         activation=nn.GELU(), batch_first=True, norm_first=True,
                         layer_norm_eps=1e-6)
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
        out = rearrange(F.scaled_dot_product_attention(q_, k_, v_), f"{group} -> bh (f n) d",
                        f=frames, bh=q.shape[0])
        out = rearrange(torch.cat([cls_out, out], dim=1), "(b h) n d -> b n (h d)", b=b)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


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
        self.blocks = nn.ModuleList(
            DividedBlock(d, cfg.video_heads, cfg.mlp_ratio) for _ in range(cfg.video_depth))
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
            output=_holder(dense=nn.Linear(dim, dim)))
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
            patch_embeddings=_holder(projection=nn.Conv2d(1, d, 16, 10)))
        self.encoder = _holder(layer=nn.ModuleList(
            ASTLayer(d, cfg.audio_heads, cfg.mlp_ratio) for _ in range(cfg.audio_depth)))
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
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

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
        self.blocks = nn.Sequential(
            *(GlobalBlock(d, cfg.global_heads, cfg.mlp_ratio) for _ in range(cfg.global_depth)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, cfg.num_classes)

    def forward(self, v: Tensor, a: Tensor, trim_table: bool = False) -> Tensor:
        """Offset logits; the positional table must match the window's token count, or be longer
        with `trim_table` (its first rows are used, as Verse-Bench's loader trims)."""
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(a)], dim=1)
        pos = self.pos_emb_cfg.pos_emb
        tokens, rows = x.shape[1], pos.shape[1]
        if rows < tokens or (rows > tokens and not trim_table):
            raise ValueError(f"Synchformer window has {tokens} tokens but the checkpoint's positional "
                             f"table has {rows} rows ({(rows - 2) // (VIDEO_TOKENS + AUDIO_TOKENS)} "
                             f"segments); refusing to run a window the table was not made for")
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
        return rearrange(self.vfeat_extractor(rearrange(video, "b s c t h w -> (b s) c t h w")),
                         "(b s) t d -> b s t d", b=b)

    def audio_features(self, mel: Tensor) -> Tensor:
        b = mel.shape[0]
        return rearrange(self.afeat_extractor(rearrange(mel, "b s f t -> (b s) f t")),
                         "(b s) t d -> b s t d", b=b)

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
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
    *(f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode",
                                       "BooleanNode", "BytesNode", "PathNode", "EnumNode")),
    "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
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


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """HTK-scale triangular filters without area normalisation, shape (n_freqs, n_mels)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    pts = 700.0 * (10 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    diff, slopes = pts[1:] - pts[:-1], pts[None, :] - freqs[:, None]
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def log_mel(segments: Tensor, mel_bins: int = 128) -> Tensor:
    """(..., 10240) waveform segments -> normalised log-mel (..., 128, 66) as Synchformer expects."""
    lead = segments.shape[:-1]
    flat = segments.reshape(-1, segments.shape[-1])
    window = F.pad(torch.hann_window(400), (312, 312))
    spec = torch.stft(flat, n_fft=1024, hop_length=160, window=window, center=True,
                      pad_mode="reflect", return_complex=True).abs() ** 2
    mel = torch.einsum("nft,fm->nmt", spec, mel_filterbank(513, mel_bins, AUDIO_SR))
    mel = torch.log(mel + 1e-6)
    mel = F.pad(mel, (0, max(0, MEL_FRAMES - mel.shape[-1])))[..., :MEL_FRAMES]
    mel = (mel - MEL_MEAN) / (2 * MEL_STD)
    return mel.reshape(*lead, *mel.shape[-2:])


def segment_count(num_frames: int) -> int:
    """Number of 16-frame segments with hop 8 in a 25 fps video of `num_frames` frames."""
    return max(0, (num_frames - SEGMENT_FRAMES) // SEGMENT_HOP_FRAMES + 1)


def window_segments(window_seconds: float) -> int:
    """Segments in a window: 4.8 s -> 14 (av-benchmark), 3.84 s -> 11."""
    hop = SEGMENT_HOP_FRAMES / VIDEO_FPS
    return int(round((window_seconds - SEGMENT_FRAMES / VIDEO_FPS) / hop)) + 1


@dataclass(frozen=True)
class SyncInputs:
    """One clip cut into aligned segments: video (S, 3, 16, H, W), mel (S, 128, 66)."""

    video: Tensor
    mel: Tensor

    @property
    def segments(self) -> int:
        return self.video.shape[0]


def prepare_clip(video: Tensor, fps: float, audio: Tensor, sample_rate: int,
                 image_size: int = 224, mel_bins: int = 128) -> SyncInputs:
    """Resample, resize and cut a clip into the segments shared by both modalities."""
    frames = resample_video(video, fps, VIDEO_FPS)
    wave = resample(audio, sample_rate, AUDIO_SR)
    n_audio = max(0, (wave.shape[0] - SEGMENT_SAMPLES) // SEGMENT_HOP_SAMPLES + 1)
    n = min(segment_count(frames.shape[0]), n_audio)
    if n == 0:
        return SyncInputs(video=torch.zeros(0, 3, SEGMENT_FRAMES, image_size, image_size),
                          mel=torch.zeros(0, mel_bins, MEL_FRAMES))
    pixels = normalized(frames[: (n - 1) * SEGMENT_HOP_FRAMES + SEGMENT_FRAMES], image_size,
                        (0.5,) * 3, (0.5,) * 3)
    v_idx = torch.arange(n)[:, None] * SEGMENT_HOP_FRAMES + torch.arange(SEGMENT_FRAMES)
    a_idx = torch.arange(n)[:, None] * SEGMENT_HOP_SAMPLES + torch.arange(SEGMENT_SAMPLES)
    return SyncInputs(video=rearrange(pixels[v_idx], "s t c h w -> s c t h w"),
                      mel=log_mel(wave[a_idx], mel_bins))


VERSEBENCH_SHORT_SIDE = 256
VERSEBENCH_CROP_FRAMES = 100  # its TemporalCropAndOffset: the first 4 s
VERSEBENCH_START_FRAME = 2  # its GenerateMultipleSegments centres 96 frames in those 100
VERSEBENCH_SEGMENTS = 11


def versebench_pixels(frames: Tensor, image_size: int = 224) -> Tensor:
    """Verse-Bench's frames: uint8 (T, H, W, 3) -> (T, 3, size, size) in [-1, 1]. Short side to 256
    (bicubic; sizes truncated, then cropped to even, as its ffmpeg re-encode), centre crop
    `round((side - size) / 2)`, divided by 255 and normalised in float16 as its transforms do."""
    x = rearrange(frames, "t h w c -> t c h w").float()
    h, w = x.shape[-2:]
    nh, nw = int(h * VERSEBENCH_SHORT_SIDE / min(h, w)), int(w * VERSEBENCH_SHORT_SIDE / min(h, w))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    eh, ew = nh // 2 * 2, nw // 2 * 2
    top, left = (nh - eh) // 2 + int(round((eh - image_size) / 2.0)), (nw - ew) // 2 + int(round((ew - image_size) / 2.0))
    x = x[..., top: top + image_size, left: left + image_size]
    return ((x.half() / 255.0 - 0.5) / 0.5).float()


def versebench_window(video: Tensor, fps: float, audio: Tensor, sample_rate: int,
                      image_size: int = 224, mel_bins: int = 128) -> SyncInputs | None:
    """Verse-Bench's one window of 11 segments from frame 2 (audio sample 1280) of the first 4 s;
    None when the clip (video and audio cut to the shorter, at most 10 s) is under 4 s."""
    frames = resample_video(video, fps, VIDEO_FPS)
    wave = resample(audio, sample_rate, AUDIO_SR)
    seconds = min(10.0, wave.shape[0] / AUDIO_SR, frames.shape[0] / VIDEO_FPS)
    if int(VIDEO_FPS * seconds) < VERSEBENCH_CROP_FRAMES:
        return None
    span = (VERSEBENCH_SEGMENTS - 1) * SEGMENT_HOP_FRAMES + SEGMENT_FRAMES
    first = VERSEBENCH_START_FRAME
    pixels = versebench_pixels(frames[first: first + span], image_size)
    a0 = int(first / VIDEO_FPS * AUDIO_SR)
    v_idx = torch.arange(VERSEBENCH_SEGMENTS)[:, None] * SEGMENT_HOP_FRAMES + torch.arange(SEGMENT_FRAMES)
    a_idx = a0 + torch.arange(VERSEBENCH_SEGMENTS)[:, None] * SEGMENT_HOP_SAMPLES + torch.arange(SEGMENT_SAMPLES)
    return SyncInputs(video=rearrange(pixels[v_idx], "s t c h w -> s c t h w"),
                      mel=log_mel(wave[a_idx], mel_bins))


class DeSync(ClipMetric):
    """Offset (s) per window, too-short clips counted apart. `protocol_kind`:
    - "avbench": the first and the last 14-segment window of each clip; primary column mean |offset|,
      `_signed` the signed mean;
    - "versebench": Verse-Bench's one 11-segment window (table trimmed to it); primary column the
      signed mean (AV-A), `_abs` the mean |offset|."""

    modalities = ("video", "audio")

    def __init__(self, model: Synchformer, key: str, label: str, protocol: str, protocol_kind: str) -> None:
        if protocol_kind not in ("avbench", "versebench"):
            raise ValueError(f"protocol_kind must be avbench or versebench, got {protocol_kind!r}")
        other = "_signed" if protocol_kind == "avbench" else "_abs"
        self.columns = (Column(key, label, higher_is_better=False),
                        Column(f"{key}{other}", f"{label} ({other[1:]})", higher_is_better=False),
                        Column(f"{key}_too_short", f"{label}: clips too short", False))
        self.protocol = protocol
        super().__init__()
        self.model = model
        self.kind = protocol_kind
        self.segments = window_segments(4.8) if protocol_kind == "avbench" else VERSEBENCH_SEGMENTS
        for name in ("abs_sum", "signed_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_windows", "too_short"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def windows(self, clip: MediaClip) -> tuple[Tensor, Tensor] | None:
        """The clip's scored windows, video (W, S, 3, 16, H, W) and mel (W, S, 128, 66); None when
        too short."""
        assert clip.video is not None
        cfg = self.model.config
        audio = clip_audio(clip, AUDIO_SR, self.name)
        if self.kind == "versebench":
            one = versebench_window(clip.video, clip.fps, audio, AUDIO_SR, cfg.image_size, cfg.mel_bins)
            return None if one is None else (one.video[None], one.mel[None])
        inputs = prepare_clip(clip.video, clip.fps, audio, AUDIO_SR, cfg.image_size, cfg.mel_bins)
        if inputs.segments < self.segments:
            return None
        starts = [0, inputs.segments - self.segments]
        return (torch.stack([inputs.video[s: s + self.segments] for s in starts]),
                torch.stack([inputs.mel[s: s + self.segments] for s in starts]))

    @torch.no_grad()
    def offsets(self, clip: MediaClip) -> Tensor | None:
        """Predicted top-1 offsets (seconds) of the clip's scored windows; None when too short."""
        found = self.windows(clip)
        if found is None:
            return None
        device = next(self.model.parameters()).device
        video, mel = (t.to(device) for t in found)
        logits = self.model(video, mel, trim_table=self.kind == "versebench")
        return OFFSET_GRID[logits.argmax(-1).cpu()]

    def _update(self, generated: list[MediaClip], reference: list[MediaClip] | None) -> None:
        for clip in generated:
            found = self.offsets(clip)
            if found is None:
                self.too_short += 1
                continue
            self.abs_sum += found.abs().sum().double().to(self.device)
            self.signed_sum += found.sum().double().to(self.device)
            self.n_windows += found.numel()
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        self.require(self.n >= 1, f"no clip long enough for a {self.segments}-segment window "
                     f"({int(self.too_short)} too short)")
        key = self.columns[0].key
        mean_abs, mean_signed = self.abs_sum / self.n_windows, self.signed_sum / self.n_windows
        main, other = (mean_abs, mean_signed) if self.kind == "avbench" else (mean_signed, mean_abs)
        return {key: main, self.columns[1].key: other, f"{key}_too_short": self.too_short.double()}


def _shared_synchformer(ctx: BuildContext) -> Synchformer:
    return ctx.load("synchformer", "the Synchformer weights (synchformer_state_dict.pth or a Synchformer "
                    "training checkpoint such as 24-01-04T16-39-21.pt)",
                    lambda path: load_synchformer(path).to(ctx.device))


@register_metric("desync_avbench", group="av",
                 description="Synchformer offset, mean |offset| over the first and last 4.8 s")
def build_desync_avbench(ctx: BuildContext) -> ClipMetric:
    return DeSync(_shared_synchformer(ctx), "desync_avbench", "DeSync",
                  protocol="av-benchmark: Synchformer, 25 fps 224 px, 16 kHz, 14 segments of 0.64 s "
                           "(hop 0.32 s), first and last 4.8 s windows, mean |offset| in s",
                  protocol_kind="avbench")


@register_metric("desync_versebench", group="av",
                 description="Verse-Bench AV-A: signed Synchformer offset of one 11-segment window")
def build_desync_versebench(ctx: BuildContext) -> ClipMetric:
    model = _shared_synchformer(ctx)
    rows = model.transformer.pos_emb_cfg.pos_emb.shape[1]
    need = 2 + VERSEBENCH_SEGMENTS * (VIDEO_TOKENS + AUDIO_TOKENS)
    if rows < need:
        raise MetricUnavailable(f"desync_versebench: the Synchformer checkpoint's positional table has "
                                f"{rows} rows, the 11-segment window needs {need}")
    trim = f"positional table {rows} -> {need} rows as Verse-Bench's loader trims" if rows > need else \
        f"positional table {rows} rows"
    return DeSync(model, "desync_versebench", "AV-A",
                  protocol="Verse-Bench AV-A: Synchformer, 25 fps, short side 256, centre crop 224, "
                           "16 kHz; the first 4 s, 11 segments of 0.64 s (hop 0.32 s) from frame 2; "
                           f"{trim}; top-1 offset in s, signed mean over clips",
                  protocol_kind="versebench")
