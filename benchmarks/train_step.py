"""A full training step at the `small` config: flow-matching inputs, forward, the real flow loss,
backward and a fused AdamW step.

Field `fraction_of_matmul_peak` = model FLOPs per step / step time / this machine's fp32 matmul
FLOP/s measured in the same run (target >= 0.5). Model FLOPs follow `klear summary`:
6 * matmul weights * rows + 12 * n_q * n_k * dim per attention; the batch is all T2AV without
padding so every counted token is real. Optimizer FLOPs are not counted (its time is).
"""

from __future__ import annotations

import torch

from benchmarks.common import matmul_flops_per_second, timed, write_result
from klear_lightning.flow import FlowMatching, flow_loss
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.streams import AVBatch
from klear_lightning.summary import training_flops
from klear_lightning.tasks import TaskBatch

BATCH = 4
VIDEO = (4, 32, 32)  # latent frames, height, width: 256 tokens per frame with patch 2
AUDIO = 128
TEXT = 32


def main() -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    t, h, w = VIDEO
    ones = lambda *s: torch.ones(*s, dtype=torch.bool)  # noqa: E731
    batch = AVBatch(
        video=torch.randn(BATCH, cfg.video_channels, t, h, w),
        video_mask=ones(BATCH, t),
        audio=torch.randn(BATCH, cfg.audio_channels, AUDIO),
        audio_mask=ones(BATCH, AUDIO),
        video_text=torch.randn(BATCH, TEXT, cfg.text_dim),
        video_text_mask=ones(BATCH, TEXT),
        audio_text=torch.randn(BATCH, TEXT, cfg.text_dim),
        audio_text_mask=ones(BATCH, TEXT),
    )
    tasks = TaskBatch.from_names(["t2av"] * BATCH)
    flow = FlowMatching()
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        sample = flow.make_inputs(batch, tasks, g)
        loss = flow_loss(model(sample.inputs), sample).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = {
        "video": t * (h // cfg.video_patch) * (w // cfg.video_patch),
        "video_text": TEXT,
        "audio_text": TEXT,
        "audio": AUDIO // cfg.audio_patch,
    }
    flops = BATCH * training_flops(model, tokens)["total"]
    peak = matmul_flops_per_second()
    seconds = timed(step, warmup=1, repeats=2)
    peak = max(peak, matmul_flops_per_second())
    achieved = flops / seconds
    fraction = achieved / peak
    result = {
        "config": "small",
        "batch": BATCH,
        "tokens_per_sample": tokens,
        "step_s": seconds,
        "model_flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s": peak,
        "fraction_of_matmul_peak": fraction,
        "target": 0.5,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return write_result(
        "train_step",
        result,
        f"fraction_of_matmul_peak {fraction:.2f} ({achieved / 1e9:.1f} of {peak / 1e9:.1f} GFLOP/s, "
        f"step {seconds:.2f} s, B={BATCH}, {sum(tokens.values())} tokens/sample; target >= 0.5)",
    )


if __name__ == "__main__":
    main()
