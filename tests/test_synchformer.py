import math

import pytest
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics import REGISTRY, BuildContext, MetricUnavailable, MetricUndefined
from klear_lightning.metrics import synchformer as sf

TINY = sf.SynchformerConfig(dim=48, video_depth=1, audio_depth=1, global_depth=1, image_size=32)


def _clip(seconds: float, fps: float = 30.0, sr: int = 22050, size: int = 40) -> MediaClip:
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (int(seconds * fps), size, size + 8, 3), generator=g, dtype=torch.uint8)
    audio = 0.1 * torch.randn(int(seconds * sr), generator=g)
    return MediaClip(video=frames, fps=fps, audio=audio, sample_rate=sr, meta={"key": f"c{seconds}"})


def _save(model: sf.Synchformer, path) -> None:
    torch.save(model.state_dict(), path)


def test_segment_and_window_counts():
    assert sf.segment_count(200) == 24  # 8 s at 25 fps, as av-benchmark
    assert sf.segment_count(120) == 14  # 4.8 s: exactly one window
    assert sf.segment_count(15) == 0
    assert sf.window_segments(4.8) == 14
    assert sf.window_segments(3.84) == 11
    assert TINY.global_length == 2 + 14 * (8 + 6)
    assert sf.SynchformerConfig().global_length == 198  # the released positional table


def test_resample_video_picks_earlier_frames():
    frames = torch.arange(60)  # 2 s at 30 fps
    out = sf.resample_video(frames, 30.0, 25.0)
    assert out.shape[0] == 50
    assert out.tolist() == [math.floor(k * 30 / 25) for k in range(50)]


def test_prepare_clip_segments_and_times():
    clip = _clip(5.0)  # 150 frames at 30 fps -> 125 at 25 fps -> 14 segments; audio -> 14
    inputs = sf.prepare_clip(clip.video, clip.fps, clip.audio, clip.sample_rate, image_size=32)
    assert inputs.segments == 14
    assert inputs.video.shape == (14, 3, 16, 32, 32)
    assert inputs.mel.shape == (14, 128, 66)
    assert inputs.video.min() >= -1 and inputs.video.max() <= 1
    frames = sf.resample_video(clip.video, clip.fps, 25.0)
    for s in (0, 5, 13):  # segment s starts at frame 8 s (0.32 s hop) and spans 16 frames
        expected = sf.normalized(frames[8 * s: 8 * s + 16], 32, (0.5,) * 3, (0.5,) * 3)
        assert torch.allclose(inputs.video[s].transpose(0, 1), expected, atol=1e-5)
    short = _clip(0.5)
    assert sf.prepare_clip(short.video, short.fps, short.audio, short.sample_rate, 32).segments == 0


def test_log_mel_peak_at_tone_frequency():
    t = torch.arange(sf.SEGMENT_SAMPLES) / sf.AUDIO_SR
    mel = sf.log_mel(0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None])[0]
    # HTK mel centre frequencies, computed independently
    top = 2595 * math.log10(1 + 8000 / 700)
    centres = [700 * (10 ** (top * (i + 1) / 129 / 2595) - 1) for i in range(128)]
    expected = min(range(128), key=lambda i: abs(centres[i] - 1000.0))
    assert abs(int(mel[:, 10:50].mean(1).argmax()) - expected) <= 1
    assert mel.shape == (128, 66)


def test_space_attention_stays_within_a_frame():
    torch.manual_seed(0)
    attn = sf.DividedAttention(16, 2).eval()
    frames, patches = 4, 3
    x = torch.randn(1, 1 + frames * patches, 16)
    y = x.clone()
    y[0, 1 + 2 * patches: 1 + 3 * patches] += 5.0  # perturb frame 2 only
    out_x, out_y = attn(x, frames, "space"), attn(y, frames, "space")
    touched = torch.zeros(1 + frames * patches, dtype=torch.bool)
    touched[0] = True  # CLS attends to everything
    touched[1 + 2 * patches: 1 + 3 * patches] = True
    assert torch.allclose(out_x[0, ~touched], out_y[0, ~touched], atol=1e-6)
    assert not torch.allclose(out_x[0, touched], out_y[0, touched])
    t_x, t_y = attn(x, frames, "time"), attn(y, frames, "time")
    # in time attention, every patch position sees frame 2
    assert not torch.allclose(t_x[0, 1:], t_y[0, 1:])


def test_load_round_trip_and_strict_errors(tmp_path):
    model = sf.Synchformer(TINY).eval()
    path = tmp_path / "synchformer_state_dict.pth"
    _save(model, path)
    loaded = sf.load_synchformer(path)
    assert loaded.config == TINY
    v = torch.randn(1, 14, 3, 16, 32, 32)
    a = torch.randn(1, 14, 128, 66)
    with torch.no_grad():
        assert torch.allclose(loaded(v, a), model(v, a), atol=1e-5)
    torch.save({"model": model.state_dict()}, tmp_path / "train.pt")
    assert sf.load_synchformer(tmp_path / "train.pt").config == TINY
    state = model.state_dict()
    state.pop("vproj.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="vproj.weight"):
        sf.load_synchformer(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        sf.load_synchformer(tmp_path / "missing.pth")


def _fixed_offset_model(cls: int) -> sf.Synchformer:
    model = sf.Synchformer(TINY).eval()
    with torch.no_grad():
        model.transformer.off_head.weight.zero_()
        model.transformer.off_head.bias.zero_()
        model.transformer.off_head.bias[cls] = 10.0
    return model


def test_desync_avbench_through_registry(tmp_path):
    path = tmp_path / "sync.pth"
    _save(_fixed_offset_model(15), path)  # class 15 of linspace(-2, 2, 21) = +1.0 s
    ctx = BuildContext.create({"synchformer": str(path)})
    metric = REGISTRY["desync_avbench"].build(ctx)
    metric.update([_clip(5.0), _clip(6.5), _clip(2.0)])
    out = metric.compute()
    assert float(out["desync_avbench"]) == pytest.approx(1.0)
    assert float(out["desync_avbench_signed"]) == pytest.approx(1.0)
    assert float(out["desync_avbench_too_short"]) == 1.0
    assert int(metric.n) == 2
    assert int(metric.n_windows) == 4  # first and last window of each long-enough clip


def test_desync_versebench_signed_one_window(tmp_path):
    path = tmp_path / "sync.pth"
    _save(_fixed_offset_model(3), path)  # -1.4 s
    metric = REGISTRY["desync_versebench"].build(BuildContext.create({"synchformer": str(path)}))
    metric.update([_clip(4.0)])  # 3.84 s window fits in 4 s; 4.8 s would not
    out = metric.compute()
    assert float(out["desync_versebench_signed"]) == pytest.approx(-1.4)
    assert float(out["desync_versebench"]) == pytest.approx(1.4)
    assert int(metric.n_windows) == 1


def test_desync_refuses_without_clips_and_skips_without_checkpoint(tmp_path):
    with pytest.raises(MetricUnavailable, match="metrics.checkpoints.synchformer"):
        REGISTRY["desync_avbench"].build(BuildContext.create({}))
    path = tmp_path / "sync.pth"
    _save(_fixed_offset_model(10), path)
    metric = REGISTRY["desync_avbench"].build(BuildContext.create({"synchformer": str(path)}))
    metric.update([_clip(1.0)])
    with pytest.raises(MetricUndefined, match="too short"):
        metric.compute()
