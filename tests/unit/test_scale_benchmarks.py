"""The GPU benchmarks' set-up (cheap checks on CPU; the dry run itself is `python -m
benchmarks.cuda_paper_block --dry_run`, too slow for the suite: it compiles two layouts)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import cuda_paper_block as bench
from klear_lightning.summary import GIB


def test_paper_block_runs_the_paper_width_and_token_counts_with_absent_streams():
    seq = bench.paper_sequence(bench.GPU)
    cfg = bench.model_config(bench.GPU, seq, depth=2)
    assert (cfg.dim, cfg.heads, cfg.head_dim, cfg.depth) == (3328, 26, 128, 2)
    tokens = dict(zip(bench.MIX, bench.present_tokens(seq), strict=False))
    assert tokens["t2av"] == {"video": 12480, "video_text": 512, "audio_text": 512, "audio": 441}
    assert tokens["t2v"] == {"video": 12480, "video_text": 512, "audio_text": 0, "audio": 0}
    assert tokens["t2a"] == {"video": 0, "video_text": 0, "audio_text": 512, "audio": 441}
    assert sorted(bench.MIX) == sorted(["t2v", "t2a", "t2av", "t2av", "ti2v", "ti2av"])
    # model FLOPs count each sample's present streams only
    full = bench.model_flops(cfg, seq)
    t2av = bench.training_flops(bench.meta_model(cfg), tokens["t2av"])["total"]
    assert 3 * t2av < full < 6 * t2av


def test_paper_block_depth_is_what_the_memory_estimate_fits():
    seq = bench.paper_sequence(bench.GPU)
    h100, h200 = 0.8 * 80 * GIB, 0.8 * 141 * GIB
    small, large = bench.deepest_fitting(bench.GPU, seq, h100), bench.deepest_fitting(bench.GPU, seq, h200)
    assert 2 <= small < large
    assert bench.estimate(bench.model_config(bench.GPU, seq, large), seq, False)["peak"] <= h200
    assert bench.estimate(bench.model_config(bench.GPU, seq, large + 1), seq, False)["peak"] > h200


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_paper_block_skips_cleanly_without_cuda(capsys):
    assert bench.main([]) is None
    assert capsys.readouterr().out.strip() == "cuda_paper_block: skipped (no CUDA device)"
