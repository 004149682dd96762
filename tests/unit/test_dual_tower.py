from dataclasses import replace

import pytest
import torch

from klear_lightning.models import ModelConfig, build_model
from klear_lightning.models.dual_tower import DualTower
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.tasks import TaskBatch
from tests.helpers.model_checks import assert_packed_matches_reference

SHAPE = InputShape(video_frames=3, video_hw=(4, 4), audio_frames=12, text_tokens=5)
MIX = ["t2v", "t2a", "t2av", "ti2v", "ti2av", "v2a", "a2v"]


def config(**overrides) -> ModelConfig:
    base = dict(
        architecture="dual_tower",
        dim=32,
        depth=2,
        heads=2,
        text_dim=24,
        video_channels=4,
        audio_channels=3,
        video_patch=2,
        audio_patch=2,
        rope_mode="aligned",
    )
    return ModelConfig.preset("tiny", **{**base, **overrides})


def randomised(cfg: ModelConfig) -> torch.nn.Module:
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs(cfg: ModelConfig, names: list[str], seed: int = 0):
    return random_inputs(cfg, TaskBatch.from_names(names), SHAPE, torch.Generator().manual_seed(seed))


def test_same_interface_and_starts_as_two_independent_towers():
    cfg = config()
    model = build_model(cfg)
    assert isinstance(model, DualTower) and model.config is cfg
    assert model.null_video_text.shape == (24,) and model.null_audio_text.shape == (24,)
    x = inputs(cfg, MIX)
    out = model(x)
    assert out.video.shape == x.video.shape and out.audio.shape == x.audio.shape
    for block in model.blocks:
        for cross in block.cross.values():
            assert (cross.proj.weight == 0).all()


def test_t2v_video_ignores_audio_exactly():
    cfg = config()
    model = randomised(cfg)
    x = inputs(cfg, ["t2v", "t2v"])
    other = inputs(cfg, ["t2v", "t2v"], seed=3)
    changed = replace(x, audio=other.audio, audio_text=other.audio_text, audio_t=other.audio_t)
    assert torch.equal(model(x).video, model(changed).video)


def test_cross_attention_couples_and_isolation_decouples():
    cfg = config()
    model = randomised(cfg)
    x = inputs(cfg, ["t2av", "ti2av"])
    other = inputs(cfg, ["t2av", "ti2av"], seed=3)
    changed = replace(x, audio=other.audio, audio_text=other.audio_text, audio_t=other.audio_t)
    assert not torch.allclose(model(x).video, model(changed).video)
    assert torch.equal(model(x, isolate_modalities=True).video, model(changed, isolate_modalities=True).video)


@pytest.mark.parametrize("isolate", [False, True])
def test_packed_equals_reference_with_gradients(isolate: bool):
    cfg = config(share_text_weights=True)
    model = randomised(cfg)
    x = inputs(cfg, MIX, seed=1)
    assert_packed_matches_reference(model, x, isolate)
