"""Streams in and out of the tower: patchify, pack, embed, conditioning rows, RoPE, unpack.

Video latents (B, C, T, H, W) become T * (H/p) * (W/p) tokens (t-major) over (1, p, p) patches;
audio latents (B, C, T) become T / p_a tokens. A token is valid when its mask is True (an audio
token only when all its latent frames are). Each stream is flat, (n_s, dim), sample-major:
- packed layout (packed attention backends): only valid tokens, taken ONCE here, so every layer
  of every block skips padding and absent streams; the output heads unpack;
- dense layout (``reference``): every token, B * L_s rows, invalid ones zeroed on entry and
  excluded from attention (the ground truth).
Conditioning: a video frame's row is the embedding of its timestep plus the pooled video
caption (one row per sample when all its frames share t); an audio token's row its (patch-mean)
timestep plus the pooled audio caption; a text stream has one row per sample at t = 1 plus its
own pooled caption. So the video side ({video, video_text}) never reads the audio side
({audio_text, audio}) except through attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from klear_lightning.models.config import ModelConfig
from klear_lightning.models.layers import FinalLayer, PooledText, Rows, TimestepEmbedding
from klear_lightning.models.rope import StreamShapes, rope_angles, rope_table, stream_positions, video_lengths
from klear_lightning.streams import STREAMS, ModelInputs, ModelOutputs

# Attention groups for isolate_modalities: video side 0, audio side 1 (streams are in this order).
STREAM_GROUP: dict[str, int] = {"video": 0, "video_text": 0, "audio_text": 1, "audio": 1}


def patchify_video(video: Tensor, p: int) -> Tensor:
    """(B, C, T, H, W) -> (B, T * H/p * W/p, C * p * p), tokens t-major then h, w."""
    return rearrange(video, "b c t (h p) (w q) -> b (t h w) (c p q)", p=p, q=p)


def unpatchify_video(tokens: Tensor, grid: tuple[int, int, int], p: int) -> Tensor:
    """Inverse of `patchify_video` for a (T, H/p, W/p) token grid."""
    t, h, w = grid
    return rearrange(tokens, "b (t h w) (c p q) -> b c t (h p) (w q)", t=t, h=h, w=w, p=p, q=p)


def patchify_audio(audio: Tensor, p: int) -> Tensor:
    """(B, C, T) -> (B, T / p, C * p)."""
    return rearrange(audio, "b c (n p) -> b n (c p)", p=p)


def unpatchify_audio(tokens: Tensor, p: int) -> Tensor:
    return rearrange(tokens, "b n (c p) -> b c (n p)", p=p)


@dataclass
class StreamTokens:
    """Embedded streams of one batch, all keyed by stream name in `STREAMS` order."""

    x: dict[str, Tensor]  # (n_s, dim) flat tokens, sample-major
    c: dict[str, Tensor]  # (B * R_s, dim) conditioning rows
    row: dict[str, Rows]  # each token's row in c
    valid: dict[str, Tensor]  # (B, L_s) bool, dense
    flat: dict[str, Tensor]  # (B, L_s) long: each dense position's row in x (-1: not there)
    keep: dict[str, Tensor | None]  # (n_s,) long: dense index b * L_s + j of each row; None: all, in order
    rotation: dict[str, Tensor]  # (n_s, 1, head_dim / 2) complex RoPE rotations
    shapes: StreamShapes

    def flat_index(self, streams: tuple[str, ...]) -> Tensor:
        """(B, sum L_s) map of the concatenation of `streams` (their x concatenated in order)."""
        parts, offset = [], 0
        for s in streams:
            f = self.flat[s]
            parts.append(torch.where(f >= 0, f + offset, f))
            offset += self.x[s].shape[0]
        return torch.cat(parts, dim=1)

    def joint_rotation(self, streams: tuple[str, ...]) -> Tensor:
        return torch.cat([self.rotation[s] for s in streams])

    def unpack(self, y: Tensor, stream: str) -> Tensor:
        """(n_s, F) per-token values -> (B, L_s, F), zeros where a token is invalid."""
        b, length = self.valid[stream].shape
        keep = self.keep[stream]
        if keep is None:
            return y.view(b, length, -1) * self.valid[stream][..., None].to(y.dtype)
        return y.new_zeros(b * length, y.shape[-1]).index_copy(0, keep, y).view(b, length, -1)


def _layout(valid: Tensor, packed: bool) -> tuple[Tensor, Tensor | None]:
    """(flat map, keep) of one stream: packed keeps the valid tokens, dense keeps all."""
    if not packed:
        return torch.arange(valid.numel(), device=valid.device).view(valid.shape), None
    keep = valid.flatten().nonzero().squeeze(-1)
    flat = torch.full((valid.numel(),), -1, dtype=torch.long, device=valid.device)
    flat[keep] = torch.arange(keep.numel(), device=valid.device)
    return flat.view(valid.shape), keep


def _take(x: Tensor, keep: Tensor | None) -> Tensor:
    """(B, L, F) -> (n, F) rows `keep` of the flattened (B * L, F)."""
    flat = rearrange(x, "b l f -> (b l) f")
    return flat if keep is None else flat.index_select(0, keep)


def _dense_index(valid: Tensor, keep: Tensor | None) -> Tensor:
    return torch.arange(valid.numel(), device=valid.device) if keep is None else keep


class StreamEmbedder(nn.Module):
    """Input side shared by both towers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.video = nn.Linear(cfg.video_channels * cfg.video_patch**2, d)
        self.audio = nn.Linear(cfg.audio_channels * cfg.audio_patch, d)
        self.video_text = nn.Linear(cfg.text_dim, d)
        self.video_text_pool = PooledText(cfg.text_dim, d)
        if not cfg.share_text_weights:
            self.audio_text = nn.Linear(cfg.text_dim, d)
            self.audio_text_pool = PooledText(cfg.text_dim, d)
        self.time = TimestepEmbedding(cfg.time_freq_dim, d)

    def text_layers(self, stream: str) -> tuple[nn.Linear, PooledText]:
        if self.cfg.share_text_weights or stream == "video_text":
            return self.video_text, self.video_text_pool
        return self.audio_text, self.audio_text_pool

    def forward(self, inputs: ModelInputs, packed: bool, isolate_modalities: bool = False) -> StreamTokens:
        """`isolate_modalities`: the audio side cannot see the video, so (offset RoPE) its ids start
        at 0, as for a sample without video: the isolated prediction is the single-modality one."""
        cfg = self.cfg
        _check_inputs(cfg, inputs)
        p, pa = cfg.video_patch, cfg.audio_patch
        b, _, t, h, w = inputs.video.shape
        n_patches = (h // p) * (w // p)
        valid = {
            "video": repeat(inputs.video_mask, "b t -> b (t r)", r=n_patches),
            "video_text": inputs.video_text_mask,
            "audio_text": inputs.audio_text_mask,
            "audio": rearrange(inputs.audio_mask, "b (n p) -> b n p", p=pa).all(-1),
        }
        layout = {s: _layout(valid[s], packed) for s in STREAMS}
        features = {
            "video": patchify_video(inputs.video, p),
            "video_text": inputs.video_text,
            "audio_text": inputs.audio_text,
            "audio": patchify_audio(inputs.audio, pa),
        }
        x, pooled = {}, {}
        for s in STREAMS:
            keep = layout[s][1]
            x[s] = self.embedding(s)(_take(features[s], keep))
            if keep is None:
                x[s] = x[s] * valid[s].flatten()[:, None].to(x[s].dtype)
        for s in ("video_text", "audio_text"):
            pooled[s] = self.text_layers(s)[1](features[s], valid[s])[:, None]

        audio_t = rearrange(inputs.audio_t, "b (n p) -> b n p", p=pa).mean(-1)
        text_t = self.time(torch.ones(b, 1, device=inputs.video.device))
        c = {
            "video": self.time(shared_rows(inputs.video_t, inputs.video_mask)) + pooled["video_text"],
            "video_text": text_t + pooled["video_text"],
            "audio_text": text_t + pooled["audio_text"],
            "audio": self.time(shared_rows(audio_t, valid["audio"])) + pooled["audio_text"],
        }
        shapes = StreamShapes(
            video_grid=(t, h // p, w // p),
            audio_tokens=valid["audio"].shape[1],
            video_text_tokens=valid["video_text"].shape[1],
            audio_text_tokens=valid["audio_text"].shape[1],
        )
        video_frames = video_lengths(inputs.video_mask)
        positions = self.positions(shapes, torch.zeros_like(video_frames) if isolate_modalities else video_frames)
        row, rotation = {}, {}
        for s in STREAMS:
            length = valid[s].shape[1]
            rows = c[s].shape[1]
            index = _dense_index(valid[s], layout[s][1])
            sample, position = torch.div(index, length, rounding_mode="floor"), index % length
            row[s] = Rows(
                sample * rows + position // max(length // rows, 1),
                run=length // rows if index.numel() == valid[s].numel() and length % rows == 0 and length else None,
            )
            angles = rope_angles(positions[s][sample, position], cfg.sections, cfg.rope_theta)
            rotation[s] = rope_table(angles, x[s].device)
        return StreamTokens(
            x=x,
            c={s: rearrange(c[s], "b r d -> (b r) d") for s in STREAMS},
            row=row,
            valid=valid,
            flat={s: layout[s][0] for s in STREAMS},
            keep={s: layout[s][1] for s in STREAMS},
            rotation=rotation,
            shapes=shapes,
        )

    def embedding(self, stream: str) -> nn.Linear:
        return self.text_layers(stream)[0] if stream in ("video_text", "audio_text") else getattr(self, stream)

    def positions(self, shapes: StreamShapes, video_frames: Tensor) -> dict[str, Tensor]:
        """MixD-RoPE position ids (B, L_s, 3) per stream; `video_frames` (B,) each sample's own video length."""
        cfg = self.cfg
        return stream_positions(
            shapes,
            video_frames,
            cfg.rope_mode,
            cfg.video_latent_fps,
            cfg.audio_latent_fps,
            cfg.audio_patch,
            cfg.text_rope,
            cfg.rope_time_scale,
        )


def shared_rows(t: Tensor, valid: Tensor) -> Tensor:
    """Per-row timesteps (B, R), or (B, 1) when every valid row of each sample has the first row's t.

    One row per sample is the same conditioning as R equal rows, at 1 / R of the adaLN cost.
    Invalid rows (padding, absent) never reach an output, so their t does not decide the path:
    otherwise padding content could change the numerics of the valid rows.
    """
    return t[:, :1] if bool(((t == t[:, :1]) | ~valid).all()) else t


class OutputHeads(nn.Module):
    """Final adaLN layer per generated modality, unpacked and unpatchified to latent layout, masked."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.video = FinalLayer(cfg.dim, cfg.video_channels * cfg.video_patch**2, cfg.norm_eps)
        self.audio = FinalLayer(cfg.dim, cfg.audio_channels * cfg.audio_patch, cfg.norm_eps)

    def forward(self, x: dict[str, Tensor], tokens: StreamTokens, inputs: ModelInputs) -> ModelOutputs:
        p, pa = self.cfg.video_patch, self.cfg.audio_patch
        video = tokens.unpack(self.video(x["video"], tokens.c["video"], tokens.row["video"]), "video")
        audio = tokens.unpack(self.audio(x["audio"], tokens.c["audio"], tokens.row["audio"]), "audio")
        video = unpatchify_video(video, tokens.shapes.video_grid, p)
        audio = unpatchify_audio(audio, pa)
        video = video * inputs.video_mask[:, None, :, None, None].to(video.dtype)
        audio = audio * inputs.audio_mask[:, None, :].to(audio.dtype)
        return ModelOutputs(video=video, audio=audio)


def _check_inputs(cfg: ModelConfig, inputs: ModelInputs) -> None:
    """Shape checks with messages naming the offending field."""
    b = inputs.video.shape[0]
    if inputs.video.dim() != 5 or inputs.video.shape[1] != cfg.video_channels:
        raise ValueError(f"inputs.video must be (B, {cfg.video_channels}, T, H, W), got {tuple(inputs.video.shape)}")
    if inputs.audio.dim() != 3 or inputs.audio.shape[1] != cfg.audio_channels:
        raise ValueError(f"inputs.audio must be (B, {cfg.audio_channels}, T), got {tuple(inputs.audio.shape)}")
    _, _, t, h, w = inputs.video.shape
    if h % cfg.video_patch or w % cfg.video_patch:
        raise ValueError(f"inputs.video spatial size {h}x{w} is not divisible by model.video_patch = {cfg.video_patch}")
    if inputs.audio.shape[2] % cfg.audio_patch:
        raise ValueError(
            f"inputs.audio length {inputs.audio.shape[2]} is not divisible by model.audio_patch = {cfg.audio_patch}"
        )
    for s in ("video_text", "audio_text"):
        emb = getattr(inputs, s)
        if emb.dim() != 3 or emb.shape[2] != cfg.text_dim:
            raise ValueError(f"inputs.{s} must be (B, L, {cfg.text_dim}) (model.text_dim), got {tuple(emb.shape)}")
    expected = {
        "video_mask": (b, t),
        "video_t": (b, t),
        "audio_mask": (b, inputs.audio.shape[2]),
        "audio_t": (b, inputs.audio.shape[2]),
        "video_text_mask": tuple(inputs.video_text.shape[:2]),
        "audio_text_mask": tuple(inputs.audio_text.shape[:2]),
    }
    for name, shape in expected.items():
        got = tuple(getattr(inputs, name).shape)
        if got != shape:
            raise ValueError(f"inputs.{name} must have shape {shape}, got {got}")
    for s in STREAMS:
        if getattr(inputs, s).shape[0] != b:
            raise ValueError(f"inputs.{s} batch size {getattr(inputs, s).shape[0]} != video batch size {b}")
