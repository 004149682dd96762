"""Paper-width train step on one GPU (FSDP2, bf16, compiled blocks) against the bf16 matmul peak
measured in the same run.

The paper's width (dim 3328, 26 heads of 128) and as many blocks as `klear summary`'s memory
estimate fits in 80 % of the GPU (at least 2). One batch of the paper's task mix in its exact
proportions (t2v, t2a, 2 x t2av, ti2v, ti2av for weights 1:1:2:1:1; each task's absent streams
absent) at the token counts of a 10.24 s clip (configs/pretrain.yaml's clip and declared codec
geometry, 512-token captions): video 12,480, audio 441, captions 512 each. The
model is built as `klear fit` builds it under FSDP2 (meta device, `parallelize`, `materialize`) on a
one-rank process group; a step is forward, mean square of both outputs, backward, AdamW. Two
layouts, both with `torch.compile` per block: with and without activation checkpointing.

`fraction_of_bf16_matmul_peak` = model FLOPs per step (`summary.training_flops` of each sample's
present streams) / median step seconds / the bf16 matmul FLOP/s measured in this run (best layout).
Each layout also records its peak allocated memory next to `klear summary`'s estimate.

Without CUDA it prints a line and writes nothing. `python -m benchmarks.cuda_paper_block --dry_run`
runs the same code on CPU at width 64 (gloo, `packed` attention, compile) and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.device_mesh import init_device_mesh

from benchmarks.common import write_result
from klear_lightning.models import ModelConfig, build_model, materialize
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.parallelize import ParallelConfig, parallelize
from klear_lightning.sequence import ClipSpec, LatentGeometry, SequenceSpec
from klear_lightning.streams import STREAMS, ModelInputs
from klear_lightning.summary import GIB, TrainingLayout, memory_per_rank, stream_tokens, training_flops
from klear_lightning.tasks import Role, TaskBatch, get_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MIX = ["t2v", "t2a", "t2av", "t2av", "ti2v", "ti2av"]  # the paper's weights 1:1:2:1:1, exactly
TEXT_TOKENS = 512


@dataclass(frozen=True)
class Setup:
    device: str
    dim: int
    heads: int
    text_dim: int
    attention: str
    clip: dict | None = None  # overrides of the pretrain clip (the dry run's is short and small)
    memory_fraction: float = 0.8
    max_depth: int = 32
    warmup: int = 3
    steps: int = 5


GPU = Setup("cuda", dim=3328, heads=26, text_dim=3584, attention="flash")
DRY_RUN = Setup(
    "cpu",
    dim=64,
    heads=2,
    text_dim=48,
    attention="packed",
    clip={"duration": 1.28, "fps": 13.28125, "height": 96, "width": 160, "sample_rate": 16000},
    max_depth=2,
    warmup=1,
    steps=1,
)


def paper_sequence(setup: Setup) -> SequenceSpec:
    """configs/pretrain.yaml's clip (with the setup's overrides) and its declared codec geometry."""
    pretrain = yaml.safe_load((CONFIGS / "pretrain.yaml").read_text())
    data, model = pretrain["data"]["init_args"], pretrain["model"]["net"]
    clip = ClipSpec(**{**data["clip"], **(setup.clip or {})})
    return SequenceSpec(clip, LatentGeometry(**data["geometry"]), model["video_patch"], model["audio_patch"])


def model_config(setup: Setup, seq: SequenceSpec, depth: int) -> ModelConfig:
    return ModelConfig.preset(
        "paper",
        dim=setup.dim,
        heads=setup.heads,
        depth=depth,
        text_dim=setup.text_dim,
        video_channels=seq.geometry.video_channels,
        audio_channels=seq.geometry.audio_channels,
        video_patch=seq.video_patch,
        audio_patch=seq.audio_patch,
        video_latent_fps=seq.video_latent_fps,
        audio_latent_fps=seq.audio_latent_fps,
        attention_backend=setup.attention,
    )


def present_tokens(seq: SequenceSpec) -> list[dict[str, int]]:
    """Tokens per stream of each sample of the batch, absent streams 0."""
    full = stream_tokens(seq, TEXT_TOKENS)
    return [{s: full[s] if get_task(t).role(s) is not Role.ABSENT else 0 for s in STREAMS} for t in MIX]


def batch_tokens(seq: SequenceSpec) -> dict[str, int]:
    per_sample = present_tokens(seq)
    return {s: sum(t[s] for t in per_sample) for s in STREAMS}


def meta_model(cfg: ModelConfig) -> torch.nn.Module:
    """The model on the meta device for counting (no attention runs, so any backend builds on CPU)."""
    with torch.device("meta"):
        return build_model(replace(cfg, attention_backend="reference"))


def estimate(cfg: ModelConfig, seq: SequenceSpec, checkpointing: bool) -> dict[str, float]:
    meta = meta_model(cfg)
    layout = TrainingLayout(world_size=1, batch_size=1, activation_checkpointing=checkpointing, ema=False)
    return memory_per_rank(meta, batch_tokens(seq), layout)


def deepest_fitting(setup: Setup, seq: SequenceSpec, budget_bytes: float) -> int:
    """The most blocks whose estimate without checkpointing fits `budget_bytes` (at least 2)."""
    depth = 2
    for d in range(2, setup.max_depth + 1):
        if estimate(model_config(setup, seq, d), seq, checkpointing=False)["peak"] > budget_bytes:
            break
        depth = d
    return depth


def model_flops(cfg: ModelConfig, seq: SequenceSpec) -> float:
    meta = meta_model(cfg)
    return sum(training_flops(meta, t)["total"] for t in present_tokens(seq))


def bf16_matmul_flops_per_second(device: str, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def inputs(cfg: ModelConfig, seq: SequenceSpec, device: str) -> ModelInputs:
    t, hw = seq.video_latent_frames, seq.video_latent_hw
    shape = InputShape(video_frames=t, video_hw=hw, audio_frames=seq.audio_latent_frames, text_tokens=TEXT_TOKENS)
    x = random_inputs(cfg, TaskBatch.from_names(MIX), shape, torch.Generator().manual_seed(0), pad=False)
    return replace(x, **{f.name: getattr(x, f.name).to(device) for f in fields(x)})


def run_layout(setup: Setup, cfg: ModelConfig, seq: SequenceSpec, mesh, checkpointing: bool) -> dict[str, float]:
    """Median seconds of a train step (after warm-up and compilation) and peak memory."""
    if setup.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.device("meta"):
        model = build_model(cfg)
    parallelize(
        model, ParallelConfig(activation_checkpointing=checkpointing, compile=True, param_dtype="bfloat16"), mesh
    )
    materialize(model, setup.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = inputs(cfg, seq, setup.device)
    seconds = []
    for i in range(setup.warmup + setup.steps):
        sync(setup.device)
        start = time.perf_counter()
        out = model(x)
        (out.video.float().square().mean() + out.audio.float().square().mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(setup.device)
        if i >= setup.warmup:
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if setup.device == "cuda" else float("nan")
    del model, opt, out
    return {"step_s": statistics.median(seconds), "peak_memory_gib": peak / GIB}


def measure(setup: Setup) -> dict[str, object]:
    seq = paper_sequence(setup)
    if setup.device == "cuda":
        budget = setup.memory_fraction * torch.cuda.get_device_properties(0).total_memory
        depth = deepest_fitting(setup, seq, budget)
    else:
        depth = 2
    cfg = model_config(setup, seq, depth)
    flops = model_flops(cfg, seq)
    peak = bf16_matmul_flops_per_second(setup.device, 8192 if setup.device == "cuda" else 512)
    mesh = init_device_mesh(setup.device, (1,), mesh_dim_names=("data_parallel",))
    result: dict[str, object] = {
        "clip": {"duration": seq.clip.duration, "height": seq.clip.height, "width": seq.clip.width},
        "device": torch.cuda.get_device_name() if setup.device == "cuda" else "cpu (dry run)",
        "dim": cfg.dim,
        "heads": cfg.heads,
        "head_dim": cfg.head_dim,
        "depth": depth,
        "tasks": MIX,
        "tokens_per_sample": present_tokens(seq),
        "model_flops_per_step": flops,
        "bf16_matmul_peak_flops_per_s": peak,
        "attention_backend": cfg.attention_backend,
    }
    for name, checkpointing in (("compile_checkpointing", True), ("compile", False)):
        try:
            timing = run_layout(setup, cfg, seq, mesh, checkpointing)
        except torch.OutOfMemoryError as e:
            result[name] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            continue
        est = estimate(cfg, seq, checkpointing)["peak"] / GIB
        result[name] = {
            **timing,
            "flops_per_s": flops / timing["step_s"],
            "fraction_of_bf16_matmul_peak": flops / timing["step_s"] / peak,
            "estimated_peak_memory_gib": est,
            "measured_over_estimated_memory": timing["peak_memory_gib"] / est,
        }
    fractions = [v["fraction_of_bf16_matmul_peak"] for v in result.values() if isinstance(v, dict) and "step_s" in v]
    result["fraction_of_bf16_matmul_peak"] = max(fractions) if fractions else None
    return result


def main(argv: list[str] | None = None) -> dict[str, object] | None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cuda_paper_block")
    p.add_argument("--dry_run", action="store_true", help="same code on CPU at width 64; writes nothing")
    dry = p.parse_args(argv or []).dry_run
    if not dry and not torch.cuda.is_available():
        print("cuda_paper_block: skipped (no CUDA device)")
        return None
    setup = DRY_RUN if dry else GPU
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29581")
    dist.init_process_group("gloo" if dry else "nccl", rank=0, world_size=1)
    if not dry:
        torch.cuda.set_device(0)
    try:
        result = measure(setup)
    finally:
        dist.destroy_process_group()
    if dry:
        print(
            f"cuda_paper_block: dry run on CPU passed (depth {result['depth']}, "
            f"fraction {result['fraction_of_bf16_matmul_peak']:.3f} of CPU bf16 matmul)"
        )
        return result
    fraction = result["fraction_of_bf16_matmul_peak"]
    write_result("cuda_paper_block", result, f"fraction_of_bf16_matmul_peak={fraction} on {result['device']}")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
