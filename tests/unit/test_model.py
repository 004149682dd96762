from dataclasses import replace

import pytest
import torch

from klear_lightning.flow import null_captions
from klear_lightning.models import ModelConfig, build_model
from klear_lightning.models.embed import patchify_audio, patchify_video, shared_rows, unpatchify_audio, unpatchify_video
from klear_lightning.models.inputs import InputShape, random_inputs
from klear_lightning.models.layers import Rows, StreamLayer, _Rows, modulate
from klear_lightning.streams import ModelInputs
from klear_lightning.tasks import TaskBatch
from tests.helpers.model_checks import assert_packed_matches_reference

SHAPE = InputShape(video_frames=3, video_hw=(4, 4), audio_frames=12, text_tokens=5)
MIX = ["t2v", "t2a", "t2av", "ti2v", "ti2av", "v2a", "a2v"]


def tiny(**overrides) -> ModelConfig:
    base = dict(dim=32, depth=2, heads=2, text_dim=24, video_channels=4, audio_channels=3, video_patch=2, audio_patch=2)
    return ModelConfig.preset("tiny", **{**base, **overrides})


def randomised(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """The model with every weight random (zero-initialised gates would hide interactions)."""
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs(cfg: ModelConfig, names: list[str], seed: int = 0, pad: bool = True) -> ModelInputs:
    return random_inputs(cfg, TaskBatch.from_names(names), SHAPE, torch.Generator().manual_seed(seed), pad=pad)


def with_changes(x: ModelInputs, **fields) -> ModelInputs:
    return replace(x, **fields)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="attention_backend"):
        ModelConfig(attention_backend="ring")
    with pytest.raises(ValueError, match="^model.net.dim: 30 is not divisible by model.net.heads = 4"):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="rope_sections"):
        ModelConfig(dim=64, heads=4, rope_sections=(8, 4, 2))
    with pytest.raises(ValueError, match="rope_mode"):
        ModelConfig(rope_mode="spiral")
    with pytest.raises(ValueError, match="^model.net.rope_time_scale: must be > 0"):
        ModelConfig(rope_time_scale=0.0)
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="triple_tower")
    with pytest.raises(ValueError, match="unknown override fields"):
        ModelConfig.preset("tiny", width=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")


def test_bad_input_shape_names_the_field():
    cfg = tiny()
    model = build_model(cfg)
    x = inputs(cfg, ["t2av"])
    with pytest.raises(ValueError, match="inputs.video_text"):
        model(with_changes(x, video_text=torch.zeros(1, 5, cfg.text_dim + 1)))
    with pytest.raises(ValueError, match="inputs.audio_t"):
        model(with_changes(x, audio_t=torch.zeros(1, 3)))


def test_tiny_preset_size_and_output_layout():
    cfg = ModelConfig.preset("tiny")
    n = sum(p.numel() for p in build_model(cfg).parameters())
    assert 2e5 < n < 2e6
    cfg = tiny()
    x = inputs(cfg, MIX)
    out = build_model(cfg)(x)
    assert out.video.shape == x.video.shape and out.audio.shape == x.audio.shape


def test_zero_init_blocks_are_identity_and_output_is_zero():
    cfg = tiny()
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, StreamLayer):
            assert (m.ada.weight == 0).all() and (m.ada.bias == 0).all()
    out = model(inputs(cfg, MIX))
    assert (out.video == 0).all() and (out.audio == 0).all()


def test_patchify_round_trip_and_token_order():
    video = torch.randn(2, 3, 4, 6, 8)
    tokens = patchify_video(video, 2)
    assert tokens.shape == (2, 4 * 3 * 4, 3 * 4)
    assert torch.equal(unpatchify_video(tokens, (4, 3, 4), 2), video)
    # token (t=1, h=2, w=3) holds latent patch [:, 1, 4:6, 6:8], channel-major.
    idx = 1 * 12 + 2 * 4 + 3
    assert torch.equal(tokens[:, idx], video[:, :, 1, 4:6, 6:8].reshape(2, -1))
    audio = torch.randn(2, 5, 12)
    a_tokens = patchify_audio(audio, 3)
    assert torch.equal(unpatchify_audio(a_tokens, 3), audio)
    assert torch.equal(a_tokens[:, 2], audio[:, :, 6:9].reshape(2, -1))


@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_t2v_video_ignores_audio_streams_exactly(backend: str):
    cfg = tiny(attention_backend=backend)
    model = randomised(cfg)
    x = inputs(cfg, ["t2v", "t2v"])
    other = inputs(cfg, ["t2v", "t2v"], seed=9)
    changed = with_changes(x, audio=other.audio, audio_text=other.audio_text, audio_t=other.audio_t)
    a, b = model(x), model(changed)
    assert torch.equal(a.video, b.video)
    assert (a.audio == 0).all()
    assert a.video.abs().sum() > 0


@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_t2a_audio_ignores_video_streams_exactly(backend: str):
    cfg = tiny(attention_backend=backend)
    model = randomised(cfg)
    x = inputs(cfg, ["t2a", "t2a"])
    other = inputs(cfg, ["t2a", "t2a"], seed=9)
    changed = with_changes(x, video=other.video, video_text=other.video_text, video_t=other.video_t)
    a, b = model(x), model(changed)
    assert torch.equal(a.audio, b.audio)
    assert (a.video == 0).all()


def test_isolate_modalities_separates_video_and_audio_when_both_present():
    cfg = tiny()
    model = randomised(cfg)
    x = inputs(cfg, ["t2av", "ti2av"])
    other = inputs(cfg, ["t2av", "ti2av"], seed=4)
    audio_side = with_changes(x, audio=other.audio, audio_text=other.audio_text, audio_t=other.audio_t)
    video_side = with_changes(x, video=other.video, video_text=other.video_text, video_t=other.video_t)
    assert torch.equal(model(x, isolate_modalities=True).video, model(audio_side, isolate_modalities=True).video)
    assert torch.equal(model(x, isolate_modalities=True).audio, model(video_side, isolate_modalities=True).audio)
    # without isolation the joint attention couples them
    assert not torch.allclose(model(x).video, model(audio_side).video)


@pytest.mark.parametrize("mode", ["offset", "aligned"])
def test_isolated_joint_prediction_equals_single_modality_task(mode: str):
    """Isolated video = the T2V prediction, isolated audio = the T2A prediction (in offset mode the
    audio ids then start at 0, as for a sample without video)."""
    cfg = tiny(rope_mode=mode)
    model = randomised(cfg)
    joint = inputs(cfg, ["t2av"], pad=False)
    t2v = with_changes(
        joint, audio_mask=torch.zeros_like(joint.audio_mask), audio_text_mask=torch.zeros_like(joint.audio_text_mask)
    )
    t2a = with_changes(
        joint, video_mask=torch.zeros_like(joint.video_mask), video_text_mask=torch.zeros_like(joint.video_text_mask)
    )
    isolated = model(joint, isolate_modalities=True)
    torch.testing.assert_close(isolated.video, model(t2v).video)
    torch.testing.assert_close(isolated.audio, model(t2a).audio)


def test_padding_content_cannot_influence_outputs():
    cfg = tiny()
    model = randomised(cfg)
    x = inputs(cfg, MIX, seed=3)
    assert not x.video_mask[x.video_mask.any(1)].all() or not x.audio_mask[x.audio_mask.any(1)].all()
    noise = inputs(cfg, MIX, seed=7)

    def swap(a, b, mask, dims):
        m = mask.reshape(mask.shape + (1,) * dims)
        return torch.where(m, a, b)

    changed = with_changes(
        x,
        video=torch.where(x.video_mask[:, None, :, None, None], x.video, noise.video),
        audio=torch.where(x.audio_mask[:, None, :], x.audio, noise.audio),
        video_text=swap(x.video_text, noise.video_text, x.video_text_mask, 1),
        audio_text=swap(x.audio_text, noise.audio_text, x.audio_text_mask, 1),
        video_t=torch.where(x.video_mask, x.video_t, noise.video_t),
        audio_t=torch.where(x.audio_mask, x.audio_t, noise.audio_t),
    )
    a, b = model(x), model(changed)
    torch.testing.assert_close(a.video, b.video, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.audio, b.audio, atol=1e-6, rtol=1e-6)
    assert (a.video.permute(0, 2, 1, 3, 4)[~x.video_mask] == 0).all()
    assert (a.audio.permute(0, 2, 1)[~x.audio_mask] == 0).all()


def own_frames(mask: torch.Tensor, unit: int = 1) -> int:
    """One past the last valid frame of a (T,) mask, rounded up to `unit` (at least `unit`)."""
    valid = mask.nonzero()
    n = int(valid.max()) + 1 if valid.numel() else 1
    return -(-n // unit) * unit


def sample(x: ModelInputs, i: int, video_frames: int | None = None, audio_frames: int | None = None) -> ModelInputs:
    """Sample i of `x` alone, its video / audio cut to the given number of latent frames."""
    cut = {
        "video": video_frames,
        "video_t": video_frames,
        "video_mask": video_frames,
        "audio": audio_frames,
        "audio_t": audio_frames,
        "audio_mask": audio_frames,
    }
    out = {}
    for f in x.__dataclass_fields__:
        value = getattr(x, f)[i : i + 1]
        n = cut.get(f)
        out[f] = value if n is None else value[:, :, :n] if f in ("video", "audio") else value[:, :n]
    return ModelInputs(**out)


def padded(x: ModelInputs, video_frames: int, audio_frames: int, seed: int = 1) -> ModelInputs:
    """`x` with random content appended up to the given latent frames, masked out (padding)."""
    g = torch.Generator().manual_seed(seed)
    b, c, t, h, w = x.video.shape
    dv, da = video_frames - t, audio_frames - x.audio.shape[2]

    def more(value: torch.Tensor, shape: tuple[int, ...], dim: int) -> torch.Tensor:
        extra = torch.zeros(shape, dtype=torch.bool) if value.dtype == torch.bool else torch.randn(shape, generator=g)
        return torch.cat([value, extra], dim)

    return replace(
        x,
        video=more(x.video, (b, c, dv, h, w), 2),
        video_t=more(x.video_t, (b, dv), 1),
        video_mask=more(x.video_mask, (b, dv), 1),
        audio=more(x.audio, (b, x.audio.shape[1], da), 2),
        audio_t=more(x.audio_t, (b, da), 1),
        audio_mask=more(x.audio_mask, (b, da), 1),
    )


def stacked(*xs: ModelInputs) -> ModelInputs:
    return ModelInputs(**{f: torch.cat([getattr(x, f) for x in xs]) for f in xs[0].__dataclass_fields__})


ROPE_MODES = ["offset", "aligned"]


@pytest.mark.parametrize("mode", ROPE_MODES)
@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_samples_are_independent_of_their_batch(mode: str, backend: str):
    """Each sample of a padded mixed batch, run alone at its own length (its trailing padding
    cut off), gives the same outputs as in the batch."""
    cfg = tiny(rope_mode=mode, attention_backend=backend)
    model = randomised(cfg)
    x = inputs(cfg, MIX, seed=5)
    assert (x.video_mask.sum(1) < x.video.shape[2]).any() and (x.audio_mask.sum(1) < x.audio.shape[2]).any()
    out = model(x)
    for i in range(len(MIX)):
        tv, ta = own_frames(x.video_mask[i]), own_frames(x.audio_mask[i], cfg.audio_patch)
        alone = model(sample(x, i, tv, ta))
        torch.testing.assert_close(alone.video, out.video[i : i + 1, :, :tv], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.audio, out.audio[i : i + 1, :, :ta], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ROPE_MODES)
@pytest.mark.parametrize("backend", ["packed", "reference"])
@pytest.mark.parametrize("architecture", ["single_tower", "dual_tower"])
def test_masked_frames_padding_a_sample_do_not_change_it(mode: str, backend: str, architecture: str):
    """One T2AV sample, its video padded by 2 masked latent frames (and its audio by 4): outputs
    change by <= 1e-5."""
    cfg = tiny(rope_mode=mode, attention_backend=backend, architecture=architecture)
    model = randomised(cfg)
    x = inputs(cfg, ["t2av"], pad=False)
    out = model(x)
    for video_pad, audio_pad in ((2, 0), (2, 4)):
        more = model(padded(x, SHAPE.video_frames + video_pad, SHAPE.audio_frames + audio_pad))
        torch.testing.assert_close(more.video[:, :, : SHAPE.video_frames], out.video, atol=1e-5, rtol=0)
        torch.testing.assert_close(more.audio[:, :, : SHAPE.audio_frames], out.audio, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ROPE_MODES)
@pytest.mark.parametrize("backend", ["packed", "reference"])
@pytest.mark.parametrize("architecture", ["single_tower", "dual_tower"])
def test_a_sample_batched_with_a_longer_clip_is_unchanged(mode: str, backend: str, architecture: str):
    cfg = tiny(rope_mode=mode, attention_backend=backend, architecture=architecture)
    model = randomised(cfg)
    short = inputs(cfg, ["t2av"], pad=False)
    shape = InputShape(video_frames=5, video_hw=SHAPE.video_hw, audio_frames=20, text_tokens=SHAPE.text_tokens)
    long = random_inputs(cfg, TaskBatch.from_names(["ti2av"]), shape, torch.Generator().manual_seed(3), pad=False)
    out = model(stacked(padded(short, 5, 20), long))
    alone = model(short)
    torch.testing.assert_close(out.video[:1, :, : SHAPE.video_frames], alone.video, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio[:1, :, : SHAPE.audio_frames], alone.audio, atol=1e-5, rtol=0)


@pytest.mark.parametrize("isolate", [False, True])
def test_model_packed_equals_reference_with_gradients(isolate: bool):
    cfg = tiny(text_rope=True, rope_mode="aligned")
    model = randomised(cfg, seed=1)
    x = inputs(cfg, MIX, seed=2)
    assert_packed_matches_reference(model, x, isolate)


def test_share_text_weights_shares_layers():
    shared, separate = tiny(share_text_weights=True), tiny()
    n_shared = sum(p.numel() for p in build_model(shared).parameters())
    n_separate = sum(p.numel() for p in build_model(separate).parameters())
    layer = sum(p.numel() for p in StreamLayer(32, 2, 128, 1e-6).parameters())
    last = sum(p.numel() for p in StreamLayer(32, 2, 128, 1e-6, pre_only=True).parameters())
    text_in = 24 * 32 + 32 + (24 * 32 + 32) + (32 * 32 + 32)  # embed + pooled MLP
    assert n_separate - n_shared == layer + last + text_in
    model = randomised(shared)
    x = inputs(shared, ["t2av"])
    assert model(x).video.abs().sum() > 0


def test_paper_config_is_26b_on_meta_device():
    cfg = ModelConfig.preset("paper")
    assert cfg.depth == 32
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert abs(n - 26e9) <= 0.1 * 26e9, n


def test_bf16_autocast_forward_runs():
    cfg = tiny()
    model = randomised(cfg)
    x = inputs(cfg, MIX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    ref = model(x)
    assert torch.isfinite(out.video).all()
    torch.testing.assert_close(out.video.float(), ref.video, atol=0.3, rtol=0.1)


def test_shared_timestep_rows_collapse_without_changing_modulation():
    t = torch.tensor([[0.3, 0.3, 0.3], [1.0, 1.0, 1.0]])
    all_valid = torch.ones(2, 3, dtype=torch.bool)
    assert shared_rows(t, all_valid).shape == (2, 1)
    mixed = torch.tensor([[1.0, 0.3, 0.3], [0.5, 0.5, 0.5]])
    assert torch.equal(shared_rows(mixed, all_valid), mixed)
    padded = torch.tensor([[0.3, 0.3, 0.9], [0.5, 0.5, 0.5]])
    last_is_padding = torch.tensor([[True, True, False], [True, True, True]])
    assert shared_rows(padded, last_is_padding).shape == (2, 1)
    # One row per sample gives the per-token adaLN vectors of one equal row per frame.
    layer = StreamLayer(8, 2, 16, 1e-6)
    torch.nn.init.normal_(layer.ada.weight)
    c = torch.randn(2, 8)
    per_sample = layer.modulation(c, Rows(torch.tensor([0] * 6 + [1] * 6)))
    per_frame = layer.modulation(c.repeat_interleave(3, dim=0), Rows(torch.arange(6).repeat_interleave(2)))
    for a, b in zip(per_sample, per_frame, strict=True):
        torch.testing.assert_close(a, b)
    shift, scale = layer.ada(torch.nn.functional.silu(c)).chunk(6, dim=-1)[:2]
    torch.testing.assert_close(per_sample[1][0, 0], 1 + scale[0])
    x = torch.randn(12, 8)
    expected = x * (1 + scale[[0] * 6 + [1] * 6]) + shift[[0] * 6 + [1] * 6]
    torch.testing.assert_close(modulate(x, per_sample[0], per_sample[1]), expected)
    broadcast = layer.modulation(c, Rows(torch.tensor([0] * 6 + [1] * 6), run=6))
    assert broadcast[0].shape == (2, 1, 8)
    torch.testing.assert_close(modulate(x, broadcast[0], broadcast[1]), expected)


@pytest.mark.parametrize("rows", [5, 100])
def test_per_token_adaln_gather_and_its_gradient(rows: int):
    """Both backward paths (run sums for few rows, index_add for many) against plain indexing."""
    layer = StreamLayer(8, 2, 16, 1e-6)
    torch.nn.init.normal_(layer.ada.weight)
    g = torch.Generator().manual_seed(rows)
    c = torch.randn(rows, 8, generator=g, requires_grad=True)
    row = torch.sort(torch.randint(0, rows, (300,), generator=g)).values
    weights = [torch.randn(300, 8, generator=g) for _ in range(6)]
    got = [v.squeeze(1) for v in layer.modulation(c, Rows(row))]
    expected = [v + 1 if i in (1, 4) else v for i, v in enumerate(layer.ada(torch.nn.functional.silu(c)).chunk(6, -1))]
    expected = [v[row] for v in expected]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    grad = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, weights)), c)[0]
    ref = torch.autograd.grad(sum((b * w).sum() for b, w in zip(expected, weights)), c)[0]
    torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5)


def test_broadcast_modulation_equals_per_token_copies_with_gradients():
    """Rows with a uniform `run` broadcast the adaLN vectors; same outputs and gradients as copies."""
    layer = StreamLayer(8, 2, 16, 1e-6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    c = torch.randn(3, 8, generator=g)
    x = torch.randn(12, 8, generator=g)
    attn = torch.randn(12, 8, generator=g)
    index = torch.arange(3).repeat_interleave(4)
    results = []
    for rows in (Rows(index), Rows(index, run=4)):
        leaves = [t.clone().requires_grad_() for t in (c, x, attn)]
        mod = layer.modulation(leaves[0], rows)
        out = layer.residual(leaves[1], leaves[2], mod).square().sum() + layer.qkv_tokens(leaves[1], mod).square().sum()
        weights = [p for n, p in layer.named_parameters() if "norm" not in n]  # QK norms act in joint_qkv
        results.append((out, torch.autograd.grad(out, [*leaves, *weights])))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_model_broadcast_modulation_equals_per_token_copies(monkeypatch: pytest.MonkeyPatch):
    """Without padding every stream's rows have a uniform run (the fast path); forcing per-token
    copies gives the same outputs and gradients."""
    cfg = tiny()
    model = randomised(cfg, seed=3)
    x = inputs(cfg, ["t2av", "ti2av"], seed=4, pad=False)
    assert all(r.run is not None for r in model.embed(x, packed=True).row.values())
    results = []
    for copies in (False, True):
        if copies:
            monkeypatch.setattr(Rows, "spread", lambda self, table: _Rows.apply(table, self.index)[:, None])
        model.zero_grad()
        out = model(x)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast.video, ref.video)
    torch.testing.assert_close(fast.audio, ref.audio)
    assert fast_grads.keys() == ref_grads.keys()
    for n, g in ref_grads.items():
        torch.testing.assert_close(fast_grads[n], g, atol=1e-6, rtol=1e-5, msg=n)


def test_packed_layout_holds_only_valid_tokens():
    cfg = tiny()
    model = build_model(cfg)
    x = inputs(cfg, MIX)
    packed, dense = model.embed(x, packed=True), model.embed(x, packed=False)
    for s, valid in dense.valid.items():
        assert packed.x[s].shape[0] == int(valid.sum())
        assert dense.x[s].shape[0] == valid.numel()
        torch.testing.assert_close(packed.x[s], dense.x[s][valid.flatten()])
        assert torch.equal(packed.rotation[s], dense.rotation[s][valid.flatten()])
        assert torch.equal(packed.row[s].index, dense.row[s].index[valid.flatten()])
        assert dense.row[s].run is not None and (packed.row[s].run is None) == (not bool(valid.all()))
        for rows in (packed.row[s], dense.row[s]):
            if rows.run is not None:
                assert torch.equal(rows.index, torch.arange(len(rows.index)) // rows.run)


@pytest.mark.parametrize("share", [False, True])
def test_last_block_text_layers_only_give_keys_and_values(share: bool):
    cfg = tiny(share_text_weights=share, depth=3)
    model = build_model(cfg)
    for i, block in enumerate(model.blocks):
        for s in ("video_text", "audio_text"):
            layer = block.layer(s)
            assert layer.pre_only == (i == 2)
            assert hasattr(layer, "mlp") != layer.pre_only and hasattr(layer, "proj") != layer.pre_only
            assert layer.ada.out_features == (2 if layer.pre_only else 6) * cfg.dim
        assert not block.layer("video").pre_only and not block.layer("audio").pre_only


@pytest.mark.parametrize("backend", ["packed", "reference"])
@pytest.mark.parametrize("architecture", ["single_tower", "dual_tower"])
@pytest.mark.parametrize("share", [False, True])
def test_every_parameter_gets_a_gradient(architecture: str, backend: str, share: bool):
    """One training-like backward (caption dropout on two samples) reaches every parameter: none
    is left without a gradient at initialisation, and with random weights none gets zeros."""
    cfg = tiny(architecture=architecture, attention_backend=backend, share_text_weights=share)
    drop = torch.tensor([False, False, True, False, True, False, False])
    for model, nonzero in ((build_model(cfg), False), (randomised(cfg), True)):
        x = null_captions(inputs(cfg, MIX), model, drop)
        out = model(x)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            if nonzero:
                assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
