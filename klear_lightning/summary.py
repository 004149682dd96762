"""`klear summary`: parameters per component and stream, tokens per stream, training FLOPs.

The model is built on the meta device, so the paper config (26B) costs no memory. FLOPs are
estimated for one sample with every stream present (T2AV, no padding):
- forward matmuls = 2 * sum over linear layers of (weights * rows they see): per-token layers
  see their stream's tokens, adaLN / timestep / pooled-caption layers one row per sample (one t
  shared by the sample's frames, the paper's setting);
- forward attention = 4 * n_q * n_k * dim per attention call (QK^T and AV);
- training = 3 * forward (backward is twice the forward), i.e. 6 * matmul params * tokens + attention.
"""

from __future__ import annotations

import torch
from torch import nn

from klear_lightning.models import ModelConfig, build_model
from klear_lightning.models.dual_tower import TOWERS, DualTower
from klear_lightning.models.layers import StreamLayer
from klear_lightning.sequence import SequenceSpec
from klear_lightning.streams import STREAMS


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _matmul(m: nn.Module) -> int:
    return sum(x.weight.numel() for x in m.modules() if isinstance(x, nn.Linear))


def check_compatible(cfg: ModelConfig, seq: SequenceSpec) -> None:
    """The sequence spec and the model must agree on patches and latent channels."""
    pairs = {
        "video_patch": (cfg.video_patch, seq.video_patch),
        "audio_patch": (cfg.audio_patch, seq.audio_patch),
        "video_channels": (cfg.video_channels, seq.geometry.video_channels),
        "audio_channels": (cfg.audio_channels, seq.geometry.audio_channels),
    }
    for name, (model_value, seq_value) in pairs.items():
        if model_value != seq_value:
            raise ValueError(f"model.{name} = {model_value} but the sequence / codecs give {seq_value}")


def stream_tokens(seq: SequenceSpec, text_tokens: int) -> dict[str, int]:
    return {"video": seq.video_tokens, "video_text": text_tokens, "audio_text": text_tokens,
            "audio": seq.audio_tokens}


def training_flops(model: nn.Module, tokens: dict[str, int]) -> dict[str, float]:
    """Estimated training FLOPs of one sample with `tokens` per stream, all present (no padding),
    one t per sample (one adaLN row per stream). Returns {"matmul", "attention", "total"}."""
    cfg: ModelConfig = model.config
    n = tokens
    rows = {s: 1 for s in STREAMS}
    embed = model.embed
    fwd = _matmul(embed.video) * n["video"] + _matmul(embed.audio) * n["audio"]
    for s in ("video_text", "audio_text"):
        linear, pool = embed.text_layers(s)
        fwd += _matmul(linear) * n[s] + _matmul(pool)
    fwd += _matmul(embed.time) * 3
    heads = model.heads
    fwd += _matmul(heads.video.linear) * n["video"] + _matmul(heads.video.ada) * rows["video"]
    fwd += _matmul(heads.audio.linear) * n["audio"] + _matmul(heads.audio.ada) * rows["audio"]
    attention = 0
    for block in model.blocks:
        for s in STREAMS:
            layer: StreamLayer = block.layer(s)
            fwd += (_matmul(layer) - _matmul(layer.ada)) * n[s] + _matmul(layer.ada) * rows[s]
        if isinstance(model, DualTower):
            for tower, streams in TOWERS.items():
                attention += 4 * sum(n[s] for s in streams) ** 2 * cfg.dim
            for m, cross in block.cross.items():
                other = "audio" if m == "video" else "video"
                fwd += (_matmul(cross.q) + _matmul(cross.proj)) * n[m] + _matmul(cross.kv) * n[other]
                attention += 4 * n[m] * n[other] * cfg.dim
        else:
            attention += 4 * sum(n.values()) ** 2 * cfg.dim
    matmul = 3 * 2 * fwd
    return {"matmul": float(matmul), "attention": float(3 * attention), "total": float(matmul + 3 * attention)}


def _stream_params(model: nn.Module) -> dict[str, int]:
    """Parameters owned by each stream (blocks, embeddings, final layer); shared text counted once."""
    cfg: ModelConfig = model.config
    out: dict[str, int] = {}
    for s in STREAMS:
        key = "text (shared)" if cfg.share_text_weights and s != "video" and s != "audio" else s
        if key in out:
            continue
        total = sum(_params(block.layer(s)) for block in model.blocks)
        if s in ("video", "audio"):
            total += _params(getattr(model.embed, s)) + _params(getattr(model.heads, s))
        else:
            total += sum(_params(m) for m in model.embed.text_layers(s))
        out[key] = total
    if isinstance(model, DualTower):
        for m in TOWERS:
            out[f"cross-attention into {m}"] = sum(_params(block.cross[m]) for block in model.blocks)
    out["timestep embedding"] = _params(model.embed.time)
    out["null captions"] = model.null_video_text.numel() + model.null_audio_text.numel()
    return out


def summarize(model_cfg: ModelConfig, seq: SequenceSpec, text_tokens: int = 128) -> str:
    """A printable report; the last line is exactly `parameters: <integer>`."""
    check_compatible(model_cfg, seq)
    if text_tokens <= 0:
        raise ValueError(f"text_tokens must be > 0, got {text_tokens}")
    with torch.device("meta"):
        model = build_model(model_cfg)
    total = _params(model)
    cfg = model_cfg
    t, (h, w) = seq.video_latent_frames, seq.video_latent_hw
    tokens = stream_tokens(seq, text_tokens)
    lines = [
        f"model: {cfg.architecture}, dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads} "
        f"(head dim {cfg.head_dim}, rope sections {cfg.sections}), mlp ratio {cfg.mlp_ratio}, "
        f"share_text_weights {cfg.share_text_weights}, rope {cfg.rope_mode}",
        f"clip: {seq.clip.duration} s, {seq.clip.frames} frames {seq.clip.height}x{seq.clip.width}, "
        f"{seq.clip.samples} audio samples -> video latents {t}x{h}x{w}, audio latents {seq.audio_latent_frames}",
        "tokens per sample:",
    ]
    lines += [f"  {s:<12}{n:>14,}" for s, n in tokens.items()]
    lines.append(f"  {'total':<12}{sum(tokens.values()):>14,}")
    components = {
        "embeddings": _params(model.embed),
        "blocks": sum(_params(b) for b in model.blocks),
        "final layers": _params(model.heads),
        "null captions": model.null_video_text.numel() + model.null_audio_text.numel(),
    }
    lines.append("parameters per component:")
    lines += [f"  {k:<28}{v:>18,}" for k, v in components.items()]
    lines.append("parameters per stream (blocks + embeddings + final layer):")
    lines += [f"  {k:<28}{v:>18,}" for k, v in _stream_params(model).items()]
    flops = training_flops(model, tokens)
    lines += [
        "training FLOPs per sample (T2AV; 3 x forward; forward = 2 x matmul weights x rows + 4 n_q n_k dim per attention):",
        f"  matmul      {flops['matmul']:.4g}",
        f"  attention   {flops['attention']:.4g}",
        f"  total       {flops['total']:.4g}",
        f"parameters: {total}",
    ]
    return "\n".join(lines)
