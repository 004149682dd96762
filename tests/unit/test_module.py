"""KlearModule without a Trainer: LR schedule, loss breakdown, loss masks, per-rank validation draws, generate."""

from __future__ import annotations

import math

import pytest
import torch

from klear_lightning.optim import OptimConfig, lr_factor
from klear_lightning.sampling import SamplerConfig
from tests.helpers.tiny import GEOMETRY, SEQUENCE, RandomAVData, random_batch, tiny_config, tiny_module


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    got = [lr_factor(s, cfg, total_steps=14) for s in range(15)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]
    assert got[4] == pytest.approx(1.0)
    assert got[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert got[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(got[4:], got[5:]))


def test_breakdown_matches_per_sample_losses():
    module = tiny_module(lambda_video=1.0, lambda_audio=0.5)
    batch = random_batch(torch.Generator().manual_seed(1), batch_size=6)
    terms, fs, tasks = module._loss(batch, (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)), 0.0)
    got = module._breakdown(terms, fs, tasks.names)
    per = terms.video_per_sample + 0.5 * terms.audio_per_sample
    for name in set(tasks.names):
        idx = [i for i, n in enumerate(tasks.names) if n == name]
        assert got[f"loss_task/{name}"] == pytest.approx(per[idx].mean().item(), rel=1e-5)
    assert sum(k.startswith("loss_t/") for k in got) >= 1


def test_audio_frames_of_a_partial_token_are_never_supervised():
    """audio_patch 2 and a clip with 7 of 8 audio latent frames: its last token is partial, so the
    model treats it as padding (output 0); none of its frames may be in the loss, and every
    supervised frame is one the model predicts."""
    module = tiny_module(net=tiny_config(audio_patch=2), task_weights={"t2a": 1.0, "t2av": 1.0})
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = random_batch(torch.Generator().manual_seed(1), batch_size=2)
    batch.audio_mask[0, 7:] = False
    terms, fs, _ = module._loss(batch, (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)), 0.0)
    assert fs.audio_loss_mask[0].tolist() == [True] * 6 + [False] * 2
    assert fs.audio_loss_mask[1].all()
    predicted = module.model(fs.inputs).audio.abs().sum(1) > 0
    assert predicted[fs.audio_loss_mask].all()
    assert terms.audio_count[0] == 6 * GEOMETRY.audio_channels


def test_validation_noise_and_times_differ_between_ranks():
    """Each rank validates its own clips with its own t and noise (not rank 0's draws again)."""
    from types import SimpleNamespace

    module = tiny_module(task_weights={"t2av": 1.0})
    module.log = lambda *args, **kwargs: None
    module.on_validation_epoch_start()
    batch = random_batch(torch.Generator().manual_seed(3))

    def loss(rank: int) -> float:
        module._trainer = SimpleNamespace(global_rank=rank)
        return module.validation_step(batch, 0).item()

    assert loss(0) == loss(0)
    assert loss(1) != loss(0)


def test_generate_returns_media_for_each_task():
    module = tiny_module()
    module.decoders = RandomAVData().decoders()
    batch = random_batch(torch.Generator().manual_seed(2), batch_size=2)
    clips = module.generate(batch, "t2v", SamplerConfig(steps=2))
    assert len(clips) == 2 and clips[0].audio is None
    assert clips[0].video.dtype == torch.uint8 and clips[0].video.shape == (SEQUENCE.video_latent_frames, 16, 16, 3)
    clips = module.generate(batch, "t2a", SamplerConfig(steps=2))
    assert clips[0].video is None and clips[0].audio.shape == (SEQUENCE.clip.samples,)
    clips = module.generate(batch, "v2a", SamplerConfig(steps=2))
    ref = module.reference_media(batch)
    assert torch.equal(clips[0].video, ref[0].video)
    assert clips[0].meta["key"] == "k0"
