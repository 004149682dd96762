"""Generation latency: seconds per 6 s T2AV clip for the demo model on CPU, and, on a GPU, seconds
per sampling step at the paper's width.

CPU: the model of configs/demo.yaml (random weights: latency does not depend on them) at a 6 s clip
of the demo's geometry (a whole number of its 4-frame audio tokens), one T2AV sample, the demo's 16 Euler steps with video / audio guidance 5 / 4
and modality guidance 2 (pretrain.yaml's scales and the demo's modality scale): the conditional,
unconditional and both isolated passes run as one batched forward per step. Also the plain
conditional sampler (no guidance) for the cost of guidance. Latent sampling only; decoding is not
timed.

GPU (skipped without CUDA; then the json says so): the paper's model (configs/pretrain.yaml: dim
3328, 26 heads, 32 blocks) in bf16 with `flash` attention, one T2AV sample of the 10.24 s clip,
seconds per guided sampling step (all passes batched), eager.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import write_result
from klear_lightning.models import build_model
from klear_lightning.sampling import SamplerConfig, sample
from klear_lightning.sequence import SequenceSpec
from klear_lightning.streams import AVBatch
from klear_lightning.tasks import TaskBatch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GUIDED = dict(video_guidance=5.0, audio_guidance=4.0, modality_guidance=2.0)
TEXT_TOKENS = 32  # the demo's captions are short; the paper's use 512


def random_batch(seq: SequenceSpec, text_dim: int, text_tokens: int, device: str) -> AVBatch:
    g = torch.Generator().manual_seed(0)
    t, (h, w), a = seq.video_latent_frames, seq.video_latent_hw, seq.audio_latent_frames
    ones = lambda n: torch.ones(1, n, dtype=torch.bool)  # noqa: E731
    return AVBatch(
        video=torch.randn(1, seq.geometry.video_channels, t, h, w, generator=g),
        video_mask=ones(t),
        audio=torch.randn(1, seq.geometry.audio_channels, a, generator=g),
        audio_mask=ones(a),
        video_text=torch.randn(1, text_tokens, text_dim, generator=g),
        video_text_mask=ones(text_tokens),
        audio_text=torch.randn(1, text_tokens, text_dim, generator=g),
        audio_text_mask=ones(text_tokens),
    ).to(device)


def seconds(fn, device: str, repeats: int) -> float:
    """Best of `repeats` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def demo_on_cpu() -> dict[str, object]:
    from klear_lightning.lightning_cli import instantiate_model_and_data as _parse

    module, data = _parse(CONFIGS / "demo.yaml")
    clip = replace(data.sequence.clip, duration=6.0)
    seq = SequenceSpec(clip, data.sequence.geometry, module.model_config.video_patch, module.model_config.audio_patch)
    cfg = replace(
        module.model_config, video_channels=seq.geometry.video_channels, audio_channels=seq.geometry.audio_channels
    )
    model = build_model(cfg).eval()
    batch = random_batch(seq, cfg.text_dim, TEXT_TOKENS, "cpu")
    tasks = TaskBatch.from_names(["t2av"])
    steps = module.val_sampler.steps
    out: dict[str, object] = {
        "clip_s": clip.duration,
        "steps": steps,
        "dim": cfg.dim,
        "depth": cfg.depth,
        "video_latents": [seq.video_latent_frames, *seq.video_latent_hw],
        "audio_latents": seq.audio_latent_frames,
    }
    with torch.no_grad():
        for name, scales in (("guided", GUIDED), ("conditional", {})):
            sampler = SamplerConfig(steps=steps, **scales)
            cpu = time.process_time()
            s = seconds(lambda sampler=sampler: sample(model, batch, tasks, sampler), "cpu", repeats=2)
            out[f"{name}_s_per_clip"] = s
            out[f"{name}_cpu_s_per_clip"] = (time.process_time() - cpu) / 3
    out["guidance_cost_ratio"] = out["guided_s_per_clip"] / out["conditional_s_per_clip"]
    return out


def paper_step_on_gpu() -> dict[str, object]:
    from klear_lightning.lightning_cli import instantiate_model_and_data as _parse

    module, data = _parse(CONFIGS / "pretrain.yaml")  # the declared codec geometry: no weights needed
    seq = data.sequence
    cfg = replace(module.model_config, attention_backend="flash")
    with torch.device("meta"):
        model = build_model(cfg).to(torch.bfloat16)
    model.to_empty(device="cuda")  # latency does not depend on the weights: small random ones, drawn on the GPU
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.02)
    model.eval()
    batch = random_batch(seq, cfg.text_dim, 512, "cuda")
    batch = replace(batch, video_text=batch.video_text.bfloat16(), audio_text=batch.audio_text.bfloat16())
    tasks = TaskBatch.from_names(["t2av"], device="cuda")
    sampler = SamplerConfig(steps=1, **GUIDED)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        step = seconds(lambda: sample(model, batch, tasks, sampler), "cuda", repeats=3)
    return {
        "device": torch.cuda.get_device_name(),
        "dim": cfg.dim,
        "depth": cfg.depth,
        "clip_s": seq.clip.duration,
        "guided_s_per_step": step,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    result: dict[str, object] = {"cpu_demo": demo_on_cpu()}
    result["gpu_paper"] = paper_step_on_gpu() if torch.cuda.is_available() else "pending: no CUDA device in this run"
    cpu = result["cpu_demo"]
    write_result(
        "generate",
        result,
        f"demo model on CPU: {cpu['guided_s_per_clip']:.2f} s per {cpu['clip_s']:g} s "
        f"T2AV clip ({cpu['steps']} steps, guidance batched; {cpu['guidance_cost_ratio']:.2f}x the unguided)",
    )


if __name__ == "__main__":
    main()
