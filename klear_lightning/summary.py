"""`klear summary`: parameters per component and stream, tokens per stream, training FLOPs.

The model is built on the meta device, so the paper config (26B) costs no memory. FLOPs are
estimated for one sample with every stream present (T2AV, no padding):
- forward matmuls = 2 * sum over linear layers of (weights * rows they see): per-token layers
  see their stream's tokens, adaLN / timestep / pooled-caption layers one row per sample (one t
  shared by the sample's frames, the paper's setting);
- forward attention = 4 * n_q * n_k * dim per attention call (QK^T and AV);
- training = 3 * forward (backward is twice the forward), i.e. 6 * matmul params * tokens + attention.

Memory per rank under FSDP2 (`world_size` ranks, rank 0 holds the largest shards): the sharded
parameters (fp32 master weights), their gradients (fp32), AdamW's state (exp_avg and exp_avg_sq in
fp32 plus a 4-byte step per tensor) and the EMA shadow (fp32) are exact byte counts of the tensors
FSDP2 keeps per rank (dim-0 chunks of ceil(rows / world_size)). Two parts are estimates until
measured on a GPU:
- gathered parameters in the compute dtype: the root (embeddings, final layers, null captions) and
  the last block stay gathered from forward to backward, two blocks are in flight (the current and
  the prefetched one), and one block's unsharded gradient exists in the compute dtype and in fp32
  for the reduce-scatter;
- activations in the compute dtype: per token and block, a joint block keeps about
  `14 * dim + 2 * mlp_dim` values for backward (block input, norms and modulations, fused QKV,
  normalised and rotated Q and K, attention output, projection, MLP hidden before and after GELU);
  with activation checkpointing only each block's input (`dim` values per token) is kept and one
  block is recomputed at a time. Embeddings, output heads and attention kernels' workspace are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jsonargparse import Namespace
from torch import nn

from klear_lightning.errors import ConfigError
from klear_lightning.lightning_cli import parse_config
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
            raise ConfigError(f"model.net.{name}: {model_value}, but the sequence / codecs give {seq_value}")


def stream_tokens(seq: SequenceSpec, text_tokens: int) -> dict[str, int]:
    return {"video": seq.video_tokens, "video_text": text_tokens, "audio_text": text_tokens, "audio": seq.audio_tokens}


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
            for streams in TOWERS.values():
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


GIB = 1024**3


def shard_numel(shape: torch.Size, world_size: int, rank: int) -> int:
    """Elements of a parameter of `shape` that FSDP2 keeps on `rank` (dim-0 chunks of ceil(n / world_size))."""
    rows = shape[0] if len(shape) else 1
    chunk = math.ceil(rows / world_size)
    kept = max(0, min(chunk, rows - rank * chunk))
    return kept * math.prod(shape[1:])


def sharded_bytes(model: nn.Module, world_size: int, rank: int = 0) -> dict[str, int]:
    """Exact bytes `rank` holds for the model's sharded parameters (in their own dtype, the fp32
    master weights), the gradients of the trainable ones (same dtype) and AdamW's state of those
    (exp_avg and exp_avg_sq like the parameter, plus a 4-byte fp32 `step` per tensor)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]

    def local(p: nn.Parameter) -> int:
        return shard_numel(p.shape, world_size, rank) * p.element_size()

    return {
        "parameters": sum(local(p) for p in params),
        "gradients": sum(local(p) for p in trainable),
        "optimizer": sum(2 * local(p) + 4 for p in trainable),
    }


@dataclass(frozen=True)
class TrainingLayout:
    """What sets the memory of a training run besides the model: ranks, batch, FSDP2 settings."""

    world_size: int = 1
    batch_size: int = 1
    param_dtype: str = "bfloat16"
    activation_checkpointing: bool = True
    ema: bool = True


def memory_per_rank(model: nn.Module, tokens: dict[str, int], layout: TrainingLayout) -> dict[str, float]:
    """Bytes per rank (see the module docstring): the exact sharded parts of rank 0, the gathered
    parameters and the activations with and without checkpointing (estimates), and `peak`, their
    sum for the layout's checkpointing setting."""
    cfg: ModelConfig = model.config
    exact = sharded_bytes(model, layout.world_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ema = sum(shard_numel(p.shape, layout.world_size, 0) * 4 for p in trainable) if layout.ema else 0
    compute = torch.finfo(getattr(torch, layout.param_dtype)).bits // 8
    blocks = list(model.blocks)
    block = max(_params(b) for b in blocks)
    root = _params(model) - sum(_params(b) for b in blocks)
    gathered = compute * (root + _params(blocks[-1]) + 2 * block) + (compute + 4) * block
    n = sum(tokens.values()) * layout.batch_size
    per_block = (14 * cfg.dim + 2 * cfg.mlp_dim) * n * compute
    full = len(blocks) * per_block
    checkpointed = len(blocks) * cfg.dim * n * compute + per_block
    activations = checkpointed if layout.activation_checkpointing else full
    parts = {
        **exact,
        "ema": ema,
        "gathered": gathered,
        "activations_checkpointed": checkpointed,
        "activations_full": full,
    }
    parts["peak"] = sum(exact.values()) + ema + gathered + activations
    return parts


def memory_lines(model: nn.Module, tokens: dict[str, int], layout: TrainingLayout) -> list[str]:
    m = {k: v / GIB for k, v in memory_per_rank(model, tokens, layout).items()}
    ac = "with" if layout.activation_checkpointing else "without"
    return [
        f"memory per rank (GiB; FSDP2 over {layout.world_size} ranks, batch {layout.batch_size} x "
        f"{sum(tokens.values()):,} tokens, {layout.param_dtype} compute; exact for sharded tensors, estimates marked ~):",
        f"  parameters (fp32 master shards)               {m['parameters']:>10.2f}",
        f"  gradients (fp32 shards)                       {m['gradients']:>10.2f}",
        f"  optimizer (AdamW exp_avg + exp_avg_sq fp32)   {m['optimizer']:>10.2f}",
        f"  ema shadow (fp32 shards)                      {m['ema']:>10.2f}",
        f"  ~gathered parameters and block gradient       {m['gathered']:>10.2f}",
        f"  ~activations with checkpointing               {m['activations_checkpointed']:>10.2f}",
        f"  ~activations without checkpointing            {m['activations_full']:>10.2f}",
        f"peak_memory_per_rank_gib: {m['peak']:.2f}   (estimate, {ac} activation checkpointing as configured)",
    ]


def summarize(
    model_cfg: ModelConfig,
    seq: SequenceSpec,
    text_tokens: int = 128,
    layout: TrainingLayout | None = None,
    trainable_null_captions: bool = True,
) -> str:
    """A printable report; the last line is exactly `parameters: <integer>`, the one before it
    `peak_memory_per_rank_gib: <GiB> ...` (memory per rank for `layout`, one rank by default).
    `trainable_null_captions` False: the null captions are frozen (no caption dropout)."""
    layout = layout or TrainingLayout()
    check_compatible(model_cfg, seq)
    if text_tokens <= 0:
        raise ValueError(f"text_tokens must be > 0, got {text_tokens}")
    with torch.device("meta"):
        model = build_model(model_cfg)
    if not trainable_null_captions:
        model.null_video_text.requires_grad_(False)
        model.null_audio_text.requires_grad_(False)
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
    ]
    lines += memory_lines(model, tokens, layout)
    lines.append(f"parameters: {total}")
    return "\n".join(lines)


def summary(config: Path, world_size: int = 1) -> None:
    """Print parameters per component, tokens per stream, training FLOPs and memory per rank of a training config.

    The model is built on the meta device. Stream shapes come from the data module: the codecs'
    geometry and the caption encoder's width it declares (`data.init_args.geometry`, `text_dim`; the
    paper config does, so no weights need to be on this machine), else from its codecs. Memory per
    rank is for FSDP2 over `world_size` ranks with the config's batch size, caption length
    (`text_encoder.max_tokens`), EMA callback and `model.parallel` settings (those apply under
    ModelParallelStrategy only; otherwise fp32 compute without activation checkpointing).

    Args:
        config: a training config (e.g. configs/pretrain.yaml).
        world_size: the number of ranks the model and optimizer state are sharded over.
    """
    if world_size < 1:
        raise ConfigError(f"world_size: must be >= 1, got {world_size}")
    cli = parse_config("--config", str(config))
    cfg = cli.config
    init = cli.parser.instantiate_classes(Namespace(model=cfg.model, data=cfg.data))
    module, data = init.model, init.data
    # Counting on the meta device runs no attention: a CUDA-only backend must not stop it on a CPU machine.
    model_cfg = replace(module.model_config, attention_backend="reference")
    seq = data.sequence
    data_args = cfg.data.get("init_args") or Namespace()
    text_encoder = data_args.get("text_encoder")
    strategy = cfg.trainer.get("strategy")
    fsdp = "ModelParallelStrategy" in str(getattr(strategy, "class_path", strategy))
    layout = TrainingLayout(
        world_size=world_size,
        batch_size=int(data_args.get("batch_size") or 1),
        param_dtype=module.parallel.param_dtype if fsdp else "float32",  # model.parallel applies under FSDP2 only
        activation_checkpointing=module.parallel.activation_checkpointing and fsdp,
        ema=any(
            str(getattr(cb, "class_path", "")).rsplit(".", 1)[-1] == "EMA" for cb in cfg.trainer.get("callbacks") or []
        ),
    )
    print(
        summarize(
            model_cfg,
            SequenceSpec(seq.clip, seq.geometry, model_cfg.video_patch, model_cfg.audio_patch),
            text_tokens=int(text_encoder.get("max_tokens") or 128) if text_encoder else 128,
            layout=layout,
            trainable_null_captions=module.caption_dropout > 0,
        )
    )
