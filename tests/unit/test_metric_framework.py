import pytest
import torch

from klear_lightning.errors import ConfigError
from klear_lightning.media import MediaClip
from klear_lightning.metrics.base import BuildContext, MetricUnavailable, MetricUndefined
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite
from klear_lightning.tasks import TASKS
from tests.helpers.metric_doubles import AVPair, MeanPeak


def audio_clip(peak: float, video: bool = False) -> MediaClip:
    wave = torch.zeros(100)
    wave[10] = -peak
    frames = torch.zeros(2, 4, 4, 3, dtype=torch.uint8) if video else None
    return MediaClip(video=frames, fps=8.0, audio=wave, sample_rate=16000)


def test_applicability_follows_task_roles():
    peak, av = MeanPeak(), AVPair()
    assert {t for t, r in TASKS.items() if peak.applies_to(r)} == {"t2a", "t2av", "ti2av", "v2a"}
    # a2v generates video with audio as condition: AV metrics apply; audio-only metrics do not
    assert {t for t, r in TASKS.items() if av.applies_to(r)} == {"t2av", "ti2av", "v2a", "a2v"}


def test_metric_rejects_clips_missing_its_modality():
    with pytest.raises(ValueError, match="has no audio"):
        MeanPeak().update(
            [MediaClip(video=torch.zeros(1, 2, 2, 3, dtype=torch.uint8), fps=8.0, audio=None, sample_rate=16000)]
        )


def test_count_state_reduces_by_sum():
    a, b = MeanPeak(), MeanPeak()
    a.update([audio_clip(1.0), audio_clip(3.0)])
    b.update([audio_clip(5.0)])
    a.merge_state(b)
    result = a.results()["peak_test"]
    assert result.n == 3 and result.value == pytest.approx(3.0)


def test_unknown_metric_and_bad_fields_fail_at_config_time():
    with pytest.raises(ValueError, match=r"metrics\.metrics: unknown metric 'nope'"):
        MetricsConfig(metrics=["nope"])
    with pytest.raises(ValueError, match="unknown task"):
        MetricsConfig(metrics=[], tasks=["t3a"])
    with pytest.raises(ValueError, match="clips_per_task"):
        MetricsConfig(metrics=[], clips_per_task=0)


def test_configured_path_that_does_not_exist_is_an_error(tmp_path):
    ctx = BuildContext.create({"panns": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match=r"^metrics\.checkpoints\.panns: .*missing\.pth does not exist"):
        ctx.checkpoint("panns", "a Cnn14 checkpoint")


def test_suite_routes_by_task_skips_unconfigured_and_reports_undefined(test_metrics):
    cfg = MetricsConfig(metrics=["peak_test", "av_test", "weights_test"], tasks=["t2a", "t2av", "t2v"])
    suite = MetricSuite(cfg)
    assert suite.skipped == {"weights_test": "set metrics.checkpoints.fake_net to a fake checkpoint"}
    assert set(suite.metrics["t2a"]) == {"peak_test"}
    assert set(suite.metrics["t2av"]) == {"peak_test", "av_test"}
    assert suite.metrics["t2v"] == {}

    suite.update("t2a", [audio_clip(2.0), audio_clip(4.0)], [audio_clip(1.0), audio_clip(1.0)])
    suite.update("t2av", [audio_clip(1.0, video=True)], None)  # no reference: av_test cannot run
    results, undefined = suite.compute()
    assert results["t2a"]["peak_test"].value == pytest.approx(3.0) and results["t2a"]["peak_test"].n == 2
    assert results["t2av"]["peak_test"].n == 1
    assert "av_a_test" not in results["t2av"]
    assert "reference" in undefined[("t2av", "av_test")]

    suite.reset()
    suite.update("t2av", [audio_clip(1.0, video=True)], [audio_clip(1.0, video=True)])
    results, undefined = suite.compute()
    assert results["t2av"]["av_b_test"].value == 2.0 and results["t2av"]["av_a_test"].n == 1
    assert "no clips" in undefined[("t2a", "peak_test")]


def test_unavailable_error_is_one_line():
    ctx = BuildContext.create({})
    with pytest.raises(MetricUnavailable) as err:
        ctx.checkpoint("synchformer", "the Synchformer state dict")
    assert "\n" not in str(err.value)


def test_undefined_is_raised_not_zero():
    with pytest.raises(MetricUndefined, match="peak_test: no clips"):
        MeanPeak().compute()


def test_missing_checkpoint_path_fails_at_config_time(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\.checkpoints\.panns: .*missing\.pth does not exist"):
        MetricsConfig(metrics=["fd_panns_avbench"], checkpoints={"panns": str(tmp_path / "missing.pth")})
