import math

import pytest
import torch
from torch import nn

from klear_lightning.flow import FrameRoles, compose_inputs, null_captions
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.sampling import SamplerConfig, sample
from klear_lightning.streams import AVBatch, ModelInputs, ModelOutputs
from klear_lightning.tasks import TaskBatch
from tests.helpers.batches import make_batch


def tiny_model() -> nn.Module:
    """The real tiny model sized for `make_batch`. Its adaLN-Zero gates start at zero (output 0
    everywhere), so every parameter is perturbed to make conditioning and guidance matter."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", text_dim=16, video_channels=4, audio_channels=6, attention_backend="reference")
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


def test_guidance_one_and_no_modality_guidance_equal_the_unguided_path(model):
    batch = make_batch()
    base = SamplerConfig(steps=3, seed=4)
    # T2V: audio is absent, so audio_guidance only forces the batched unconditional pass.
    tasks = TaskBatch.from_names(["t2v", "t2v"])
    plain = sample(model, batch, tasks, base)
    batched = sample(model, batch, tasks, SamplerConfig(steps=3, seed=4, audio_guidance=3.0))
    assert torch.allclose(batched.video, plain.video, atol=1e-5)
    # one Euler step of T2AV: video at scale 1 is the conditional prediction whatever audio's scale
    tasks = TaskBatch.from_names(["t2av", "ti2av"])
    one = sample(model, batch, tasks, SamplerConfig(steps=1, seed=4))
    guided = sample(model, batch, tasks, SamplerConfig(steps=1, seed=4, audio_guidance=4.0))
    assert torch.allclose(guided.video, one.video, atol=1e-5)
    assert not torch.allclose(guided.audio, one.audio, atol=1e-3)


def test_one_batched_forward_matches_separate_guidance_passes(model):
    batch = make_batch()
    tasks = TaskBatch.from_names(["t2av", "v2a"])
    cfg = SamplerConfig(steps=1, seed=7, video_guidance=3.0, audio_guidance=2.0, modality_guidance=0.5)
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0].batch_size))
    out = sample(model, batch, tasks, cfg)
    hook.remove()
    assert len(calls) == 1  # conditional, unconditional and isolated passes share one forward

    g = torch.Generator().manual_seed(7)
    x0_v, x0_a = torch.randn(batch.video.shape, generator=g), torch.randn(batch.audio.shape, generator=g)
    roles = FrameRoles.of(batch, tasks)
    t0 = torch.zeros(2)
    cond = compose_inputs(batch, tasks, roles, x0_v, x0_a, t0, t0)
    with torch.no_grad():
        c = model(cond)
        u = model(null_captions(cond, model, torch.ones(2, dtype=torch.bool)))
        i = model(cond, isolate_modalities=True)
    video = u.video + 3.0 * (c.video - u.video) + 0.5 * (c.video - i.video)
    audio = u.audio + 2.0 * (c.audio - u.audio) + 0.5 * (c.audio - i.audio)
    assert torch.allclose(out.video[0], (x0_v + video)[0], atol=1e-4)
    assert torch.allclose(out.audio[:, :, :5], (x0_a + audio)[:, :, :5], atol=1e-4)
    assert torch.equal(out.video[1], batch.video[1])  # V2A: video is a condition


def test_condition_tokens_are_bit_exact_and_absent_streams_zero(model):
    batch = make_batch(b=4)
    tasks = TaskBatch.from_names(["ti2v", "ti2av", "v2a", "a2v"])
    cfg = SamplerConfig(solver="heun", steps=3, video_guidance=2.0, audio_guidance=1.5, modality_guidance=0.3)
    out = sample(model, batch, tasks, cfg)
    assert torch.equal(out.video[:2, :, 0], batch.video[:2, :, 0])  # TI2V / TI2AV first latent frame
    assert not torch.equal(out.video[:2, :, 1], batch.video[:2, :, 1])
    assert torch.equal(out.video[2], batch.video[2])  # V2A video
    assert torch.equal(out.audio[3], batch.audio[3])  # A2V audio
    assert (out.audio[0] == 0).all()  # TI2V has no audio
    assert (out.video[3, :, 2] == 0).all()  # padded frame of a generated stream
    assert torch.isfinite(out.video).all() and torch.isfinite(out.audio).all()


def test_same_seed_same_bytes_other_seed_differs(model):
    batch = make_batch()
    tasks = TaskBatch.from_names(["t2av", "t2a"])
    cfg = SamplerConfig(solver="heun", steps=2, video_guidance=2.0, modality_guidance=0.5, seed=11)
    a, b = sample(model, batch, tasks, cfg), sample(model, batch, tasks, cfg)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    c = sample(
        model, batch, tasks, SamplerConfig(solver="heun", steps=2, video_guidance=2.0, modality_guidance=0.5, seed=12)
    )
    assert not torch.allclose(a.audio, c.audio)


def test_generated_audio_frames_of_a_partial_token_come_back_zero_like_padding():
    """audio_patch 2, the last sample has 5 of 8 audio latent frames: frame 4 is half a token the
    model never predicts, so it must not keep its initial noise."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", text_dim=16, video_channels=4, audio_channels=6, audio_patch=2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = make_batch()
    assert batch.audio_mask[-1].tolist() == [True] * 5 + [False] * 3
    out = sample(model, batch, TaskBatch.from_names(["t2av", "t2a"]), SamplerConfig(steps=2))
    assert (out.audio[-1, :, 4:] == 0).all()
    assert (out.audio[-1, :, :4].abs().sum(0) > 0).all() and (out.audio[0].abs().sum(0) > 0).all()


class LinearField(nn.Module):
    """Stand-in velocity field v(x, t) = t * x: dx/dt = t x has the solution x(1) = x(0) * e^(1/2)."""

    config = ModelConfig()

    def forward(self, inputs: ModelInputs, isolate_modalities: bool = False) -> ModelOutputs:
        return ModelOutputs(
            video=inputs.video_t[:, None, :, None, None] * inputs.video,
            audio=inputs.audio_t[:, None, :] * inputs.audio,
        )


def _ode_error(solver: str, steps: int, batch: AVBatch, tasks: TaskBatch) -> float:
    out = sample(LinearField(), batch, tasks, SamplerConfig(solver=solver, steps=steps, seed=0))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch.video.shape, generator=g)
    exact = x0 * math.exp(0.5)
    return (out.video - exact)[:, :, :2].abs().max().item()


def test_heun_is_second_order_and_euler_first_order_on_a_linear_ode():
    batch, tasks = make_batch(), TaskBatch.from_names(["t2v", "t2v"])
    e8, e16 = _ode_error("euler", 8, batch, tasks), _ode_error("euler", 16, batch, tasks)
    h8, h16 = _ode_error("heun", 8, batch, tasks), _ode_error("heun", 16, batch, tasks)
    assert h8 < e8 / 20 and h16 < e16 / 40
    assert 1.7 < e8 / e16 < 2.2  # first order: halving the step halves the error
    assert 3.5 < h8 / h16 < 4.8  # second order: quarters it


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"solver": "rk4"}, "sampler.solver"),
        ({"steps": 0}, "sampler.steps"),
        ({"video_guidance": -1.0}, "sampler.video_guidance"),
        ({"modality_guidance": float("nan")}, "sampler.modality_guidance"),
        ({"shift": 0.0}, "sampler.shift"),
    ],
)
def test_sampler_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**kwargs)


def test_shifted_time_grid_is_increasing_from_zero_to_one():
    grid = SamplerConfig(steps=10, shift=3.0).time_grid()
    assert grid[0] == 0.0 and grid[-1] == 1.0 and all(b > a for a, b in zip(grid, grid[1:]))
    assert grid[5] < 0.5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_matches_cpu_under_the_same_seed(model):
    batch, tasks = make_batch(), TaskBatch.from_names(["ti2av", "t2a"])
    cfg = SamplerConfig(solver="heun", steps=3, video_guidance=2.0, audio_guidance=3.0, modality_guidance=0.5, seed=3)
    cpu = sample(model, batch, tasks, cfg)
    gpu_model = tiny_model().cuda()
    gpu = sample(gpu_model, batch.to("cuda"), tasks, cfg)
    again = sample(gpu_model, batch.to("cuda"), tasks, cfg)
    assert torch.equal(gpu.video, again.video) and torch.equal(gpu.audio, again.audio)
    assert torch.allclose(gpu.video.cpu(), cpu.video, atol=1e-3) and torch.allclose(
        gpu.audio.cpu(), cpu.audio, atol=1e-3
    )
    assert torch.equal(gpu.video[0, :, 0].cpu(), batch.video[0, :, 0])
