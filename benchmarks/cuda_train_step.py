"""FSDP2 bf16 train step of KlearModule on one CUDA GPU, against the GPU's measured bf16 matmul peak.

`ModelParallelStrategy` (FSDP2 `fully_shard` per block, bf16 parameters, fp32 reduction) on one device,
the `flash` attention backend, a width-1024 / 8-block model, batch 4 of ~3.8k tokens drawn with the
paper's task mix. Three layouts side by side: activation checkpointing, none, and `torch.compile` per
block. Without CUDA it prints a line and writes nothing.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

from benchmarks.common import write_result
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.module import KlearModule
from klear_lightning.optim import OptimConfig
from klear_lightning.parallelize import ParallelConfig
from klear_lightning.streams import AVBatch
from klear_lightning.summary import training_flops

BATCH, VIDEO_C, FRAMES, SIDE, AUDIO_C, AUDIO_T, TEXT = 4, 16, 13, 32, 16, 216, 128
STEPS, WARMUP = 25, 5
PAPER_MIX = {"t2v": 1.0, "t2a": 1.0, "t2av": 2.0, "ti2v": 1.0, "ti2av": 1.0}


def random_batch(indices: list[int]) -> AVBatch:
    g = torch.Generator().manual_seed(sum(indices))
    b = len(indices)
    ones = lambda n: torch.ones(b, n, dtype=torch.bool)  # noqa: E731
    return AVBatch(
        video=torch.randn(b, VIDEO_C, FRAMES, SIDE, SIDE, generator=g),
        video_mask=ones(FRAMES),
        audio=torch.randn(b, AUDIO_C, AUDIO_T, generator=g),
        audio_mask=ones(AUDIO_T),
        video_text=torch.randn(b, TEXT, 384, generator=g),
        video_text_mask=ones(TEXT),
        audio_text=torch.randn(b, TEXT, 384, generator=g),
        audio_text_mask=ones(TEXT),
        meta=[{} for _ in indices],
    )


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


def bf16_matmul_peak(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def train_step_seconds(cfg: ModelConfig, parallel: ParallelConfig) -> tuple[float, float]:
    """Median step seconds after warm-up, and peak GPU memory in GiB."""
    torch.cuda.reset_peak_memory_stats()
    module = KlearModule(
        net=cfg, task_weights=PAPER_MIX, optim=OptimConfig(lr=1e-4, warmup_steps=WARMUP), parallel=parallel, seed=0
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        precision="32-true",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader(range(10_000), batch_size=BATCH, collate_fn=random_batch)
    trainer.fit(module, loader)
    steady = sorted(timer.seconds[WARMUP:])
    return steady[len(steady) // 2], torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    if not torch.cuda.is_available():
        print("cuda_train_step: skipped (no CUDA device)")
        return
    cfg = ModelConfig(
        dim=1024,
        depth=8,
        heads=16,
        text_dim=384,
        video_channels=VIDEO_C,
        audio_channels=AUDIO_C,
        video_patch=2,
        audio_patch=1,
        attention_backend="flash",
        video_latent_fps=3.0,
        audio_latent_fps=43.0,
    )
    with torch.device("meta"):
        meta_model = build_model(cfg)
    tokens = {"video": FRAMES * (SIDE // 2) ** 2, "audio": AUDIO_T, "video_text": TEXT, "audio_text": TEXT}
    flops_per_step = training_flops(meta_model, tokens)["total"] * BATCH
    peak = bf16_matmul_peak()
    layouts = {
        "activation_checkpointing": ParallelConfig(activation_checkpointing=True),
        "no_checkpointing": ParallelConfig(activation_checkpointing=False),
        "compile": ParallelConfig(activation_checkpointing=False, compile=True),
    }
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(),
        "bf16_matmul_peak_flops_per_s": peak,
        "flops_per_step": flops_per_step,
        "tokens_per_sample": sum(tokens.values()),
    }
    for name, parallel in layouts.items():
        seconds, memory = train_step_seconds(cfg, parallel)
        result[name] = {
            "step_s": seconds,
            "flops_per_s": flops_per_step / seconds,
            "fraction_of_bf16_matmul_peak": flops_per_step / seconds / peak,
            "peak_memory_gib": memory,
        }
    best = max(result[n]["fraction_of_bf16_matmul_peak"] for n in layouts)  # type: ignore[index]
    result["fraction_of_bf16_matmul_peak"] = best
    write_result("cuda_train_step", result, f"best fraction_of_bf16_matmul_peak={best:.3f} on {result['device']}")


if __name__ == "__main__":
    main()
