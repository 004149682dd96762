"""Packed vs reference, forward + backward, at the `small` config.

The batch is drawn with the paper's task mix (T2V, T2A, T2AV, TI2V, TI2AV, equal weights) with
random trailing padding, so absent streams and padding are what the packed backend removes.
The backend decides the model's token layout (see `klear_lightning.models.embed`): `reference`
runs every block on every token with a dense attention mask (the ground truth); `packed` packs
the valid tokens once at model entry, so every linear layer and every attention skips them.
- `packed_speedup` (target >= 2.0): reference / packed time of the whole model's forward +
  backward (weight and input gradients), what choosing the backend buys a training step;
  `ideal_speedup` is its bound from the work removed: (reference matmul + attention FLOPs) /
  (packed matmul + attention FLOPs), both counted as in `klear summary`.
- `attention_speedup`: the attention call alone (q, k, v given in each backend's layout), with
  its bound `attention_ideal_speedup` = B * N^2 / sum of segment n_q * n_k.
"""

from __future__ import annotations

import torch

from benchmarks.common import timed, write_result
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.models.attention import make_backend
from klear_lightning.models.denoiser import joint_attention
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.streams import STREAMS
from klear_lightning.tasks import PAPER_TASKS, TaskBatch, TaskSampler

BATCH = 8
SHAPE = InputShape(video_frames=5, video_hw=(32, 32), audio_frames=160, text_tokens=32)


def _model_step(model: torch.nn.Module, inputs, name: str):
    def run() -> None:
        model.backend = make_backend(name)
        out = model(inputs)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        model.zero_grad(set_to_none=True)

    return run


def _attention_step(model: torch.nn.Module, inputs, name: str):
    backend = make_backend(name)
    tokens = model.embed(inputs, packed=not backend.dense)
    plan = joint_attention(tokens, STREAMS, STREAMS, False, backend.dense).plan
    n = sum(tokens.x[s].shape[0] for s in STREAMS)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, cfg.heads, cfg.head_dim, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(n, cfg.heads, cfg.head_dim, generator=g)

    def run() -> None:
        torch.autograd.grad(backend(q, k, v, plan), (q, k, v), grad)

    return run, plan


def _interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Fastest time of each run over `rounds` interleaved rounds (so all see the same machine
    load); the first round is the warm-up."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run, warmup=0, repeats=1))
    return {name: min(t[1:]) for name, t in times.items()}


def _flops(cfg: ModelConfig, rows: int, attention_pairs: int) -> float:
    """Forward FLOPs of the blocks: 2 * 12 d^2 per token (QKV, output, MLP) + 4 d per score."""
    return cfg.depth * (2 * (4 + 2 * cfg.mlp_ratio) * cfg.dim**2 * rows + 4 * cfg.dim * attention_pairs)


def main() -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    g = torch.Generator().manual_seed(0)
    names = TaskSampler({t: 1.0 for t in PAPER_TASKS}).sample(BATCH, g)
    inputs = random_inputs(cfg, TaskBatch.from_names(names), SHAPE, g)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)

    attention = {name: _attention_step(model, inputs, name) for name in ("reference", "packed")}
    attention_times = _interleaved({name: run for name, (run, _) in attention.items()}, rounds=4)
    packed_plan = attention["packed"][1]
    valid = attention["reference"][1].q_ok
    n = valid.shape[1]
    pairs = sum(a * b for a, b in zip(packed_plan.q_lens, packed_plan.k_lens, strict=True))
    valid_rows = int(valid.sum())

    times = _interleaved({name: _model_step(model, inputs, name) for name in ("reference", "packed")}, rounds=5)
    reference, packed = times["reference"], times["packed"]
    speedup = reference / packed
    ideal = _flops(cfg, BATCH * n, BATCH * n * n) / _flops(cfg, valid_rows, pairs)
    attention_speedup = attention_times["reference"] / attention_times["packed"]
    result = {
        "config": "small",
        "batch": BATCH,
        "tokens_per_sample": n,
        "tasks": names,
        "valid_token_fraction": valid_rows / (BATCH * n),
        "reference_s": reference,
        "packed_s": packed,
        "packed_speedup": speedup,
        "target": 2.0,
        "ideal_speedup": ideal,
        "attention_reference_s": attention_times["reference"],
        "attention_packed_s": attention_times["packed"],
        "attention_speedup": attention_speedup,
        "attention_ideal_speedup": BATCH * n * n / pairs,
    }
    return write_result(
        "attention",
        result,
        f"packed_speedup {speedup:.2f}x (model fwd+bwd: reference {reference:.2f} s, packed {packed:.2f} s; "
        f"FLOP bound {ideal:.2f}x; attention alone {attention_speedup:.2f}x of bound "
        f"{BATCH * n * n / pairs:.2f}x; B={BATCH}, N={n}, {valid_rows / (BATCH * n):.0%} valid; target >= 2.0)",
    )


if __name__ == "__main__":
    main()
