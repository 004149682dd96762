import math
import os
import pickle

import numpy as np
import pytest
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics import (
    REGISTRY,
    BuildContext,
    MetricUnavailable,
    MetricUndefined,
)
from klear_lightning.metrics import synchformer as sf
from klear_lightning.metrics.nets import synchformer as sfnet
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite
from klear_lightning.safe_pickle import UnsafeFileError

TINY = sfnet.SynchformerConfig(dim=48, video_depth=1, audio_depth=1, global_depth=1, image_size=32)


def _clip(seconds: float, fps: float = 30.0, sr: int = 22050, size: int = 40) -> MediaClip:
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (int(seconds * fps), size, size + 8, 3), generator=g, dtype=torch.uint8)
    audio = 0.1 * torch.randn(int(seconds * sr), generator=g)
    return MediaClip(video=frames, fps=fps, audio=audio, sample_rate=sr, meta={"key": f"c{seconds}"})


def _save(model: sfnet.Synchformer, path) -> None:
    torch.save(model.state_dict(), path)


def test_segment_and_window_counts():
    assert sf.segment_count(200) == 24  # 8 s at 25 fps, as av-benchmark
    assert sf.segment_count(120) == 14  # 4.8 s: exactly one window
    assert sf.segment_count(15) == 0
    assert sf.window_segments(4.8) == 14
    assert sf.window_segments(3.84) == 11
    assert TINY.global_length == 2 + 14 * (8 + 6)
    assert sfnet.SynchformerConfig().global_length == 198  # the released positional table


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
        expected = sf.normalized(frames[8 * s : 8 * s + 16], 32, (0.5,) * 3, (0.5,) * 3)
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
    attn = sfnet.DividedAttention(16, 2).eval()
    frames, patches = 4, 3
    x = torch.randn(1, 1 + frames * patches, 16)
    y = x.clone()
    y[0, 1 + 2 * patches : 1 + 3 * patches] += 5.0  # perturb frame 2 only
    out_x, out_y = attn(x, frames, "space"), attn(y, frames, "space")
    touched = torch.zeros(1 + frames * patches, dtype=torch.bool)
    touched[0] = True  # CLS attends to everything
    touched[1 + 2 * patches : 1 + 3 * patches] = True
    assert torch.allclose(out_x[0, ~touched], out_y[0, ~touched], atol=1e-6)
    assert not torch.allclose(out_x[0, touched], out_y[0, touched])
    t_x, t_y = attn(x, frames, "time"), attn(y, frames, "time")
    # in time attention, every patch position sees frame 2
    assert not torch.allclose(t_x[0, 1:], t_y[0, 1:])


def test_load_round_trip_and_strict_errors(tmp_path):
    model = sfnet.Synchformer(TINY).eval()
    path = tmp_path / "synchformer_state_dict.pth"
    _save(model, path)
    loaded = sfnet.load_synchformer(path)
    assert loaded.config == TINY
    v = torch.randn(1, 14, 3, 16, 32, 32)
    a = torch.randn(1, 14, 128, 66)
    with torch.no_grad():
        assert torch.allclose(loaded(v, a), model(v, a), atol=1e-5)
    torch.save({"model": model.state_dict()}, tmp_path / "train.pt")
    assert sfnet.load_synchformer(tmp_path / "train.pt").config == TINY
    state = model.state_dict()
    state.pop("vproj.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="vproj.weight"):
        sfnet.load_synchformer(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        sfnet.load_synchformer(tmp_path / "missing.pth")


def _fixed_offset_model(cls: int) -> sfnet.Synchformer:
    model = sfnet.Synchformer(TINY).eval()
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
    assert "198 -> 156 rows" in metric.protocol  # the trim Verse-Bench's loader does, named
    metric.update([_clip(4.0), _clip(3.9)])  # Verse-Bench crops the first 4 s: 3.9 s is too short
    out = metric.compute()
    assert float(out["desync_versebench"]) == pytest.approx(-1.4)  # AV-A: signed
    assert float(out["desync_versebench_abs"]) == pytest.approx(1.4)
    assert float(out["desync_versebench_too_short"]) == 1.0
    assert int(metric.n_windows) == 1


def test_versebench_window_geometry():
    # frame k is filled with k, audio sample i with i: the window must start at frame 2 / sample 1280
    frames = torch.arange(110, dtype=torch.uint8)[:, None, None, None].expand(110, 256, 300, 3)
    wave = torch.arange(110 * 640, dtype=torch.float32)
    window = sf.versebench_window(frames, 25.0, wave, 16000, image_size=224)
    assert window is not None and window.video.shape == (11, 3, 16, 224, 224)
    firsts = ((window.video[:, 0, :, 0, 0] + 1) / 2 * 255).round()  # undo [-1, 1]
    assert firsts[:, 0].tolist() == [2 + 8 * s for s in range(11)]
    assert firsts[0].tolist() == list(range(2, 18))
    assert sf.versebench_window(frames[:99], 25.0, wave, 16000) is None  # under 4 s
    assert sf.versebench_window(frames, 25.0, wave[: 99 * 640], 16000) is None  # audio under 4 s
    # a 640 x 360 frame: short side to 256 (455 x 256, cropped to 454), centre crop 224
    x = torch.zeros(1, 360, 640, 3, dtype=torch.uint8)
    x[:, :, 320:] = 255
    px = sf.versebench_pixels(x)
    assert px.shape == (1, 3, 224, 224)
    assert px[0, 0, 0, 111] == -1 and px[0, 0, 0, 113] == 1  # the edge stays centred


def test_window_must_match_positional_table():
    model = sfnet.Synchformer(TINY).eval()  # 198 rows: 14 segments
    v, a = torch.randn(1, 11, 3, 16, 32, 32), torch.randn(1, 11, 128, 66)
    with pytest.raises(ValueError, match="156 tokens.*198 rows"):
        model(v, a)
    assert model(v, a, trim_table=True).shape == (1, 21)  # explicit, as Verse-Bench's loader
    with pytest.raises(ValueError, match="226 tokens.*198 rows"):
        model(torch.randn(1, 16, 3, 16, 32, 32), torch.randn(1, 16, 128, 66), trim_table=True)


def test_versebench_refuses_a_table_shorter_than_its_window(tmp_path):
    path = tmp_path / "sync.pth"
    _save(
        sfnet.Synchformer(
            sfnet.SynchformerConfig(dim=48, video_depth=1, audio_depth=1, global_depth=1, image_size=32, segments=8)
        ),
        path,
    )
    with pytest.raises(MetricUnavailable, match="114 rows, the 11-segment window needs 156"):
        REGISTRY["desync_versebench"].build(BuildContext.create({"synchformer": str(path)}))


def test_parity_with_official_synchformer():
    from benchmarks.parity import synchformer as parity

    result = parity.check()
    assert result.passed, result
    assert any("training checkpoint" in f for f in result.checkpoint_format)


def test_training_checkpoint_with_omegaconf_args_loads(tmp_path):
    from omegaconf import OmegaConf

    model = sfnet.Synchformer(TINY).eval()
    path = tmp_path / "24-01-04T16-39-21.pt"
    torch.save(
        {
            "args": OmegaConf.create({"model": {"params": {"block_shape": [198]}}}),
            "model": {f"module.{k}": v for k, v in model.state_dict().items()},
            "metrics": {"accuracy_1": np.float64(0.5)},
            "epoch": 3,
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the plain weights-only reader does
    assert sfnet.load_synchformer(path).config == TINY


def test_malicious_checkpoint_is_refused_and_reported_not_computed(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "24-01-04T16-39-21.pt"
    torch.save({"args": _Payload(str(marker)), "model": sfnet.Synchformer(TINY).state_dict()}, path)
    with pytest.raises(UnsafeFileError, match=str(path)):
        sfnet.load_synchformer(path)
    suite = MetricSuite(
        MetricsConfig(
            metrics=["desync_versebench", "desync_avbench"], checkpoints={"synchformer": str(path)}, tasks=["t2av"]
        )
    )
    assert set(suite.skipped) == {"desync_versebench", "desync_avbench"}
    assert str(path) in suite.skipped["desync_avbench"] and "refused" in suite.skipped["desync_avbench"]
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_desync_refuses_without_clips_and_skips_without_checkpoint(tmp_path):
    with pytest.raises(MetricUnavailable, match="metrics.checkpoints.synchformer"):
        REGISTRY["desync_avbench"].build(BuildContext.create({}))
    path = tmp_path / "sync.pth"
    _save(_fixed_offset_model(10), path)
    metric = REGISTRY["desync_avbench"].build(BuildContext.create({"synchformer": str(path)}))
    metric.update([_clip(1.0)])
    with pytest.raises(MetricUndefined, match="too short"):
        metric.compute()
