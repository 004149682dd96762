import math

import pytest
import torch
from torch import nn

from klear_lightning.flow import (
    FlowMatching,
    FlowSample,
    TimestepSampler,
    drop_captions,
    flow_loss,
    null_captions,
    shift_time,
)
from klear_lightning.streams import ModelInputs, ModelOutputs
from klear_lightning.tasks import TASKS, TaskBatch
from tests.helpers.batches import make_batch

# The design table, written out independently of tasks.py: V, VT, AT, A roles and first-frame condition.
G, C, A = "generate", "condition", "absent"
EXPECTED = {
    "t2v": (G, C, A, A, False),
    "t2a": (A, A, C, G, False),
    "t2av": (G, C, C, G, False),
    "ti2v": (G, C, A, A, True),
    "ti2av": (G, C, C, G, True),
    "v2a": (C, C, C, G, False),
    "a2v": (G, C, C, C, False),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_make_inputs_follows_the_task_table(task):
    assert set(EXPECTED) == set(TASKS)
    v_role, vt_role, at_role, a_role, first = EXPECTED[task]
    batch = make_batch()
    fs = FlowMatching().make_inputs(batch, TaskBatch.from_names([task, task]), torch.Generator().manual_seed(1))
    x, t = fs.inputs, fs.t_video
    assert torch.equal(fs.t_video, fs.t_audio)
    assert ((t > 0) & (t < 1)).all()

    # video
    frames = torch.ones(2, 3, dtype=torch.bool)
    if v_role == A:
        assert not x.video_mask.any() and not fs.video_loss_mask.any()
        assert (x.video == 0).all() and (x.video_t == 1).all()
    elif v_role == C:
        assert torch.equal(x.video, batch.video) and (x.video_t == 1).all()
        assert torch.equal(x.video_mask, batch.video_mask) and not fs.video_loss_mask.any()
    else:
        gen = frames.clone()
        if first:
            gen[:, 0] = False
            assert torch.equal(x.video[:, :, 0], batch.video[:, :, 0])
        assert torch.equal(x.video_mask, batch.video_mask)
        assert torch.equal(fs.video_loss_mask, gen & batch.video_mask)
        expected_t = torch.where(gen, t[:, None].expand(2, 3), torch.ones(2, 3))
        assert torch.equal(x.video_t, expected_t)
        noise = batch.video - fs.targets.video
        noised = (1 - t.view(2, 1, 1, 1, 1)) * noise + t.view(2, 1, 1, 1, 1) * batch.video
        assert torch.allclose(x.video[:, :, gen[0]], noised[:, :, gen[0]], atol=1e-6)

    # audio
    if a_role == A:
        assert not x.audio_mask.any() and not fs.audio_loss_mask.any()
        assert (x.audio == 0).all() and (x.audio_t == 1).all()
    elif a_role == C:
        assert torch.equal(x.audio, batch.audio) and (x.audio_t == 1).all()
        assert torch.equal(x.audio_mask, batch.audio_mask) and not fs.audio_loss_mask.any()
    else:
        assert torch.equal(x.audio_mask, batch.audio_mask)
        assert torch.equal(fs.audio_loss_mask, batch.audio_mask)
        assert torch.equal(x.audio_t, t[:, None].expand(2, 8))
        noise = batch.audio - fs.targets.audio
        assert torch.allclose(x.audio, (1 - t.view(2, 1, 1)) * noise + t.view(2, 1, 1) * batch.audio, atol=1e-6)

    # captions: conditions pass through unchanged, absent ones are masked out entirely
    for stream, role in (("video_text", vt_role), ("audio_text", at_role)):
        if role == C:
            assert torch.equal(getattr(x, stream), getattr(batch, stream))
            assert torch.equal(x.mask(stream), getattr(batch, f"{stream}_mask"))
        else:
            assert not x.mask(stream).any()


def test_mixed_batch_noise_is_standard_normal_and_t_is_per_sample():
    batch = make_batch(b=64)
    names = list(TASKS) * 10
    fs = FlowMatching().make_inputs(batch, TaskBatch.from_names(names[:64]), torch.Generator().manual_seed(0))
    noise = batch.video - fs.targets.video
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    assert fs.t_video.unique().numel() == 64


def test_independent_times_differ_per_modality():
    batch = make_batch(b=16)
    tasks = TaskBatch.from_names(["t2av"] * 16)
    fs = FlowMatching(independent=True).make_inputs(batch, tasks, torch.Generator().manual_seed(0))
    assert not torch.equal(fs.t_video, fs.t_audio)
    assert torch.equal(fs.inputs.video_t[:, 0], fs.t_video)
    assert torch.equal(fs.inputs.audio_t[:, 0], fs.t_audio)


def test_fixed_times_replace_the_draw_for_both_modalities():
    batch, tasks = make_batch(b=3), TaskBatch.from_names(["t2av"] * 3)
    t = torch.tensor([0.2, 0.5, 0.9])
    fs = FlowMatching(independent=True).make_inputs(batch, tasks, torch.Generator().manual_seed(0), t=t)
    assert torch.equal(fs.t_video, t) and torch.equal(fs.t_audio, t)
    expected = (1 - t[:, None, None]) * (batch.audio - fs.targets.audio) + t[:, None, None] * batch.audio
    assert torch.allclose(fs.inputs.audio, expected, atol=1e-6)  # x_t = (1 - t) noise + t data
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        FlowMatching().make_inputs(batch, tasks, t=torch.tensor([0.5]))


def test_make_inputs_is_reproducible_under_a_generator():
    batch, tasks = make_batch(), TaskBatch.from_names(["t2av", "ti2v"])
    a = FlowMatching().make_inputs(batch, tasks, torch.Generator().manual_seed(3))
    b = FlowMatching().make_inputs(batch, tasks, torch.Generator().manual_seed(3))
    assert torch.equal(a.inputs.video, b.inputs.video) and torch.equal(a.targets.audio, b.targets.audio)


def test_make_inputs_rejects_a_task_batch_of_the_wrong_size():
    with pytest.raises(ValueError, match="TaskBatch has 1 tasks for a batch of 2"):
        FlowMatching().make_inputs(make_batch(), TaskBatch.from_names(["t2v"]))


def _hand_sample() -> tuple[ModelOutputs, FlowSample]:
    g = torch.Generator().manual_seed(5)
    targets = ModelOutputs(video=torch.randn(2, 2, 3, 1, 2, generator=g), audio=torch.randn(2, 3, 4, generator=g))
    pred = ModelOutputs(video=torch.randn(2, 2, 3, 1, 2, generator=g), audio=torch.randn(2, 3, 4, generator=g))
    vmask = torch.tensor([[False, True, True], [True, True, False]])
    amask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    sample = FlowSample(None, targets, vmask, amask, torch.zeros(2), torch.zeros(2))  # type: ignore[arg-type]
    return pred, sample


def test_loss_equals_hand_computed_masked_mse():
    pred, sample = _hand_sample()
    terms = flow_loss(pred, sample, lambda_video=1.0, lambda_audio=1.0)
    v_sq, v_n, a_sq, a_n = 0.0, 0, 0.0, 0
    per_v = []
    for b in range(2):
        s, n = 0.0, 0
        for t in range(3):
            if sample.video_loss_mask[b, t]:
                for c in range(2):
                    for w in range(2):
                        s += (pred.video[b, c, t, 0, w].item() - sample.targets.video[b, c, t, 0, w].item()) ** 2
                        n += 1
        per_v.append(s / n)
        v_sq, v_n = v_sq + s, v_n + n
    for t in range(4):
        if sample.audio_loss_mask[0, t]:
            for c in range(3):
                a_sq += (pred.audio[0, c, t].item() - sample.targets.audio[0, c, t].item()) ** 2
                a_n += 1
    assert math.isclose(terms.video.item(), v_sq / v_n, rel_tol=1e-5)
    assert math.isclose(terms.audio.item(), a_sq / a_n, rel_tol=1e-5)
    assert torch.allclose(terms.video_per_sample, torch.tensor(per_v), rtol=1e-5)
    assert terms.video_count.tolist() == [8.0, 8.0] and terms.audio_count.tolist() == [6.0, 0.0]
    assert terms.audio_per_sample[1].item() == 0.0
    assert math.isclose(terms.total.item(), v_sq / v_n + a_sq / a_n, rel_tol=1e-5)
    regrouped = (terms.video_per_sample * terms.video_count).sum() / terms.video_count.sum()
    assert torch.allclose(regrouped, terms.video)


def test_lambda_weights_the_modalities():
    pred, sample = _hand_sample()
    terms = flow_loss(pred, sample, lambda_video=0.85, lambda_audio=0.15)
    assert torch.allclose(terms.total, 0.85 * terms.video + 0.15 * terms.audio)
    video = pred.video.clone().requires_grad_(True)
    audio = pred.audio.clone().requires_grad_(True)
    flow_loss(ModelOutputs(video, audio), sample, lambda_video=2.0, lambda_audio=0.0).total.backward()
    assert video.grad.abs().sum() > 0 and audio.grad.abs().sum() == 0


def test_unsupervised_tokens_get_no_gradient_and_no_audio_gives_zero_not_nan():
    batch = make_batch()
    fs = FlowMatching().make_inputs(batch, TaskBatch.from_names(["ti2v", "t2v"]), torch.Generator().manual_seed(0))
    video = torch.randn_like(batch.video, requires_grad=True)
    audio = torch.randn_like(batch.audio, requires_grad=True)
    terms = flow_loss(ModelOutputs(video, audio), fs)
    assert terms.audio.item() == 0.0 and torch.isfinite(terms.total)
    terms.total.backward()
    assert (video.grad[0, :, 0] == 0).all()  # TI2V first frame: condition, no loss
    assert (video.grad[1, :, 2] == 0).all()  # padded frame
    assert (video.grad[1, :, 1] != 0).all()
    assert audio.grad.abs().sum() == 0


def test_uniform_sampler_mean_and_logit_normal_median():
    g = torch.Generator().manual_seed(0)
    u = TimestepSampler("uniform").sample(200_000, g)
    assert abs(u.mean().item() - 0.5) < 0.005 and u.min() >= 0 and u.max() <= 1
    ln = TimestepSampler("logit_normal", mean=0.5, std=1.0).sample(200_000, g)
    assert abs(ln.median().item() - 1 / (1 + math.exp(-0.5))) < 0.005
    assert abs(torch.logit(ln).std().item() - 1.0) < 0.01


def test_shift_is_monotone_keeps_endpoints_and_matches_sd3():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (0.5, 1.0, 3.0):
        s = shift_time(t, shift)
        assert s[0] == 0 and s[-1] == 1
        assert (s.diff() > 0).all()
        sigma = 1 - t  # SD3 noise level
        assert torch.allclose(1 - s, shift * sigma / (1 + (shift - 1) * sigma))
    assert (shift_time(t[1:-1], 3.0) < t[1:-1]).all()  # shift > 1: more noise
    shifted = TimestepSampler("uniform", shift=3.0).sample(100_000, torch.Generator().manual_seed(0))
    assert shifted.mean() < 0.4


def test_split_shift_shifts_each_sample_by_its_split():
    """`split_shift: {sound: 1}` beside `shift: 3`: a `sound` sample keeps the unshifted draw, every
    other sample (a split without its own shift, or none named) gets shift 3; through make_inputs,
    which reads each sample's split from the batch."""
    draw = TimestepSampler("logit_normal").sample(4, torch.Generator().manual_seed(0))
    sampler = TimestepSampler("logit_normal", shift=3.0, split_shift={"sound": 1.0})
    splits = ["sound", "speech_single", None, "sound"]
    expected = torch.where(torch.tensor([True, False, False, True]), draw, shift_time(draw, 3.0))
    assert torch.allclose(sampler.sample(4, torch.Generator().manual_seed(0), splits), expected)
    batch = make_batch(b=4)
    batch.meta = [{"split": s} if s else {} for s in splits]
    fs = FlowMatching(sampler).make_inputs(batch, TaskBatch.from_names(["t2av"] * 4), torch.Generator().manual_seed(0))
    assert torch.allclose(fs.t_video, expected) and torch.equal(fs.t_audio, fs.t_video)
    with pytest.raises(ValueError, match="timesteps.split_shift.sound"):
        TimestepSampler(split_shift={"sound": 0.0})


@pytest.mark.parametrize(
    "kwargs, field",
    [({"kind": "beta"}, "timesteps.kind"), ({"std": 0.0}, "timesteps.std"), ({"shift": -1.0}, "timesteps.shift")],
)
def test_timestep_sampler_rejects_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TimestepSampler(**kwargs)


class NullCaptions(nn.Module):
    """Holds learned null captions the way the model does (tests of caption dropout only)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.null_video_text = nn.Parameter(torch.randn(dim))
        self.null_audio_text = nn.Parameter(torch.randn(dim))


def _inputs(seed: int, text_len: int) -> ModelInputs:
    batch = make_batch(seed=seed, text_len=text_len)
    return (
        FlowMatching()
        .make_inputs(batch, TaskBatch.from_names(["t2av", "t2v"]), torch.Generator().manual_seed(0))
        .inputs
    )


def test_dropped_captions_are_the_null_embedding_whatever_the_caption():
    holder = NullCaptions()
    a, b = _inputs(seed=0, text_len=5), _inputs(seed=1, text_len=9)
    drop = torch.tensor([True, True])
    da, db = null_captions(a, holder, drop), null_captions(b, holder, drop)
    assert torch.equal(da.video_text[0, 0], holder.null_video_text.detach())
    assert torch.equal(da.video_text_mask[0], torch.tensor([True, False, False, False, False]))
    # independent of the caption's content and length: same valid tokens, same mask pattern
    for x, y in ((da, db), (da, da)):
        assert torch.equal(x.video_text[x.video_text_mask], y.video_text[y.video_text_mask])
        assert x.video_text_mask.sum(1).tolist() == [1, 1]
    assert (da.video_text[:, 1:] == 0).all()
    # T2V's absent audio caption stays absent; T2AV's is replaced
    assert da.audio_text_mask[0].tolist() == [True, False, False, False, False]
    assert not da.audio_text_mask[1].any()
    # latents are untouched
    assert torch.equal(da.video, a.video) and torch.equal(da.audio_t, a.audio_t)


def test_drop_probability_and_gradient_to_null_embeddings():
    holder = NullCaptions()
    x = _inputs(seed=0, text_len=5)
    kept = drop_captions(x, holder, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept.video_text, x.video_text) and torch.equal(kept.audio_text_mask, x.audio_text_mask)
    dropped = drop_captions(x, holder, 1.0, torch.Generator().manual_seed(0))
    dropped.video_text.sum().backward()
    assert torch.equal(holder.null_video_text.grad, torch.full((16,), 2.0))
    big = make_batch(b=4000)
    inputs = FlowMatching().make_inputs(big, TaskBatch.from_names(["t2av"] * 4000)).inputs
    out = drop_captions(inputs, holder, 0.1, torch.Generator().manual_seed(0))
    frac = (out.video_text_mask.sum(1) == 1).float().mean().item()
    assert abs(frac - 0.1) < 0.015
    assert torch.equal(out.video_text_mask.sum(1) == 1, out.audio_text_mask.sum(1) == 1)  # both captions together
    with pytest.raises(ValueError, match="caption_dropout"):
        drop_captions(x, holder, 1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_make_inputs_on_cuda_with_a_cpu_generator_matches_cpu():
    batch, tasks = make_batch(), TaskBatch.from_names(["ti2av", "v2a"])
    cpu = FlowMatching().make_inputs(batch, tasks, torch.Generator().manual_seed(2))
    gpu = FlowMatching().make_inputs(batch.to("cuda"), tasks, torch.Generator().manual_seed(2))
    assert gpu.inputs.video.is_cuda and gpu.video_loss_mask.is_cuda
    assert torch.equal(gpu.t_video.cpu(), cpu.t_video) and torch.equal(gpu.targets.audio.cpu(), cpu.targets.audio)
    assert torch.allclose(gpu.inputs.video.cpu(), cpu.inputs.video, atol=1e-6)
    assert torch.equal(gpu.inputs.video[0, :, 0].cpu(), batch.video[0, :, 0])
    assert torch.equal(gpu.video_loss_mask.cpu(), cpu.video_loss_mask)
