"""Packed vs reference attention, forward + backward, at the `small` config.

The batch is drawn with the paper's task mix (T2V, T2A, T2AV, TI2V, TI2AV, equal weights) with
random trailing padding, so absent streams and padding are what the packed backend removes.
Field `packed_speedup` = reference time / packed time (target >= 2.0); `ideal_speedup` is the
bound set by the attention scores each computes (B * N^2 / sum of segment n_q * n_k): both run
the same CPU SDPA kernel, so packing can only win the work it removes.
"""

from __future__ import annotations

import torch

from benchmarks.common import timed, write_result
from klear_lightning.models import ModelConfig
from klear_lightning.models.attention import make_backend, plan_attention
from klear_lightning.models.embed import StreamEmbedder
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.streams import STREAMS
from klear_lightning.tasks import PAPER_TASKS, TaskBatch, TaskSampler

BATCH = 8
SHAPE = InputShape(video_frames=5, video_hw=(32, 32), audio_frames=160, text_tokens=32)


def main() -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    g = torch.Generator().manual_seed(0)
    names = TaskSampler({t: 1.0 for t in PAPER_TASKS}).sample(BATCH, g)
    inputs = random_inputs(cfg, TaskBatch.from_names(names), SHAPE, g)
    with torch.no_grad():
        tokens = StreamEmbedder(cfg)(inputs)
    valid = torch.cat([tokens.valid[s] for s in STREAMS], dim=1)
    n = valid.shape[1]
    q, k, v = (torch.randn(BATCH, n, cfg.heads, cfg.head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(BATCH, n, cfg.heads, cfg.head_dim)

    def step(name: str):
        backend = make_backend(name)
        plan = plan_attention(valid, valid, dense=backend.dense)

        def run() -> None:
            out = backend(q, k, v, plan)
            torch.autograd.grad(out, (q, k, v), grad)

        return run

    reference = timed(step("reference"), warmup=1, repeats=5)
    packed = timed(step("packed"), warmup=1, repeats=5)
    speedup = reference / packed
    plan = plan_attention(valid, valid, dense=False)
    pairs = sum(a * b for a, b in zip(plan.q_lens, plan.k_lens, strict=True))
    ideal = BATCH * n * n / pairs
    result = {
        "config": "small", "batch": BATCH, "tokens_per_sample": n, "tasks": names,
        "valid_token_fraction": float(valid.float().mean()),
        "reference_s": reference, "packed_s": packed, "packed_speedup": speedup, "target": 2.0,
        "ideal_speedup": ideal,
    }
    return write_result(
        "attention", result,
        f"packed_speedup {speedup:.2f}x (reference {reference * 1e3:.1f} ms, packed {packed * 1e3:.1f} ms, "
        f"fwd+bwd, B={BATCH}, N={n}, {valid.float().mean():.0%} valid; score-count bound {ideal:.2f}x; target >= 2.0)",
    )


if __name__ == "__main__":
    main()
