"""One of our joint blocks vs diffusers' SD3 `JointTransformerBlock`, forward + backward.

Weight and input gradients are computed (`backward`) for both. Same width (512), heads (8 x 64) and total tokens (1280 per sample), measured side by side in
one run. Ours carries four streams (video 4 frames x 256 patches, video text 64, audio text 64,
audio 128) with MixD-RoPE and one adaLN row per stream and sample (what the embedder gives when a
sample's frames share t, the paper's setting); the peer carries the same tokens as image (video +
audio) and context (both captions) with one adaLN row per sample, and QK-RMSNorm.
Field `block_time_ratio` = our time / peer time (target <= 1.0). diffusers is a benchmark-only
extra: `pip install -c constraints.txt 'klear-lightning[diffusers]'`.
"""

from __future__ import annotations

import torch

from benchmarks.common import matmul_flops_per_second, timed, write_result
from klear_lightning.models import ModelConfig
from klear_lightning.models.attention import make_backend, plan_attention
from klear_lightning.models.denoiser import JointAttention
from klear_lightning.models.layers import Rows
from klear_lightning.models.mmdit import JointBlock
from klear_lightning.models.rope import StreamShapes, rope_angles, rope_table, stream_positions
from klear_lightning.streams import STREAMS

BATCH = 2
FRAMES, GRID = 4, (16, 16)
TOKENS = {"video": FRAMES * GRID[0] * GRID[1], "video_text": 64, "audio_text": 64, "audio": 128}


def _peer_block(cfg: ModelConfig) -> torch.nn.Module:
    try:
        from diffusers.models.attention import JointTransformerBlock
    except ImportError as e:
        raise SystemExit(
            "block_vs_peer needs diffusers: .venv/bin/pip install -c constraints.txt 'klear-lightning[diffusers]'"
        ) from e
    block = JointTransformerBlock(cfg.dim, cfg.heads, cfg.head_dim, context_pre_only=False, qk_norm="rms_norm")
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    return block


def main() -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    d = cfg.dim
    ours = JointBlock(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    # flat tokens (B * n_s, d), sample-major per stream, one adaLN row per sample
    x = {s: torch.randn(BATCH * n, d, requires_grad=True) for s, n in TOKENS.items()}
    c = {s: torch.randn(BATCH, d) for s in STREAMS}
    row = {s: Rows(torch.arange(BATCH).repeat_interleave(n), run=n) for s, n in TOKENS.items()}
    shapes = StreamShapes((FRAMES, *GRID), TOKENS["audio"], TOKENS["video_text"], TOKENS["audio_text"])
    pos = stream_positions(
        shapes,
        torch.full((BATCH,), FRAMES),
        cfg.rope_mode,
        cfg.video_latent_fps,
        cfg.audio_latent_fps,
        cfg.audio_patch,
        False,
        cfg.rope_time_scale,
    )
    rotation = torch.cat(
        [
            rope_table(rope_angles(pos[s].reshape(-1, 3), cfg.sections, cfg.rope_theta), torch.device("cpu"))
            for s in STREAMS
        ]
    )
    total = sum(TOKENS.values())
    offsets = torch.tensor([0, *TOKENS.values()]).cumsum(0) * BATCH
    flat = torch.cat(
        [offsets[i] + torch.arange(BATCH * n).view(BATCH, n) for i, n in enumerate(TOKENS.values())], dim=1
    )
    valid = torch.ones(BATCH, total, dtype=torch.bool)
    backend = make_backend("packed")
    attention = JointAttention(plan_attention(valid, valid, dense=False, q_flat=flat, k_flat=flat), rotation, rotation)

    def run_ours() -> None:
        out = ours(x, c, row, attention, backend)
        sum(o.sum() for o in out.values()).backward()
        ours.zero_grad(set_to_none=True)

    peer = _peer_block(cfg)
    image = torch.randn(BATCH, TOKENS["video"] + TOKENS["audio"], d, requires_grad=True)
    context = torch.randn(BATCH, TOKENS["video_text"] + TOKENS["audio_text"], d, requires_grad=True)
    temb = torch.randn(BATCH, d)

    def run_peer() -> None:
        ctx_out, img_out = peer(image, context, temb)
        (ctx_out.sum() + img_out.sum()).backward()
        peer.zero_grad(set_to_none=True)

    peak = matmul_flops_per_second()
    times = {"ours": [], "peer": []}
    for _ in range(5):  # interleaved, so both see the same machine load
        times["ours"].append(timed(run_ours, warmup=1, repeats=1))
        times["peer"].append(timed(run_peer, warmup=1, repeats=1))
    ours_s, peer_s = min(times["ours"]), min(times["peer"])
    per_token = sum(p.numel() for n, p in peer.named_parameters() if p.dim() == 2 and "norm1" not in n) / 2
    peer_flops = BATCH * (6 * per_token * total + 12 * total**2 * d)
    ratio = ours_s / peer_s
    result = {
        "config": "small",
        "batch": BATCH,
        "tokens": TOKENS,
        "total_tokens": total,
        "ours_s": ours_s,
        "peer_s": peer_s,
        "block_time_ratio": ratio,
        "target": 1.0,
        "peer_fraction_of_matmul_peak": peer_flops / peer_s / peak,
        "matmul_peak_flops_per_s": peak,
        "peer": "diffusers.models.attention.JointTransformerBlock(qk_norm='rms_norm')",
    }
    return write_result(
        "block_vs_peer",
        result,
        f"block_time_ratio {ratio:.2f} (ours {ours_s * 1e3:.0f} ms, SD3 peer {peer_s * 1e3:.0f} ms, fwd+bwd, "
        f"width {d}, {total} tokens, B={BATCH}; target <= 1.0)",
    )


if __name__ == "__main__":
    main()
