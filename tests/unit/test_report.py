import json

import pytest
import torch

from klear_lightning.media import MediaClip
from klear_lightning.metrics.report import build_report, report_markdown, write_report
from klear_lightning.metrics.suite import MetricsConfig, MetricSuite


def clip(peak: float, video: bool = False) -> MediaClip:
    wave = torch.full((50,), peak)
    frames = torch.zeros(2, 4, 4, 3, dtype=torch.uint8) if video else None
    return MediaClip(video=frames, fps=8.0, audio=wave, sample_rate=16000)


@pytest.fixture
def suite(test_metrics):
    cfg = MetricsConfig(metrics=["weights_test", "peak_test", "gap_test", "av_test"], tasks=["t2v", "t2a", "t2av"])
    s = MetricSuite(cfg)
    s.update("t2a", [clip(0.5), clip(0.25)], [clip(0.0), clip(0.0)])
    s.update("t2av", [clip(1.0, video=True)], None)
    return s


def test_report_cells_say_value_and_n_or_why_not(suite):
    report = build_report(suite, {"checkpoint": "demo.ckpt"})
    t2a, t2av, t2v = report["tasks"]["t2a"], report["tasks"]["t2av"], report["tasks"]["t2v"]
    assert t2a["peak_test"] == {
        "status": "ok",
        "value": pytest.approx(0.375),
        "n": 2,
        "protocol": "test: mean max |audio|",
    }
    assert t2a["gap_test"]["value"] == pytest.approx(0.375)
    assert t2a["weights_test"] == {
        "status": "not computed",
        "reason": "set metrics.checkpoints.fake_net to a fake checkpoint",
    }
    assert t2v["peak_test"]["status"] == "n/a"
    assert t2av["gap_test"]["status"] == "not computed" and "reference" in t2av["gap_test"]["reason"]
    assert t2av["av_a_test"]["status"] == "not computed"
    assert t2a["av_b_test"]["status"] == "n/a"
    assert report["skipped"] == {"weights_test": "set metrics.checkpoints.fake_net to a fake checkpoint"}


def test_columns_are_grouped_like_table_1(suite):
    report = build_report(suite)
    groups = [c["group"] for c in report["columns"]]
    assert groups == ["video", "audio", "audio", "av", "av"]
    assert [c["key"] for c in report["columns"]] == ["weights_test", "peak_test", "gap_test", "av_a_test", "av_b_test"]


def test_markdown_table_layout(suite):
    md = report_markdown(build_report(suite, {"checkpoint": "demo.ckpt"}))
    lines = md.splitlines()
    lines = lines[lines.index("## All metrics") :] + lines[: lines.index("## All metrics")]
    header = next(line for line in lines if line.startswith("| Task"))
    assert (
        header
        == "| Task | Video: weights_test | Audio: Peak ↑ | Audio: Gap ↓ | AV consistency: A ↓ | AV consistency: B ↑ |"
    )
    row = next(line for line in lines if line.startswith("| t2a "))
    assert row == "| t2a | not computed [1] | 0.375 (N=2) | 0.375 (N=2) | n/a | n/a |"
    assert "[1] set metrics.checkpoints.fake_net to a fake checkpoint" in lines
    assert "- checkpoint: demo.ckpt" in lines
    assert "- `peak_test`: test: mean max |audio|" in lines


def test_write_report_round_trips(suite, tmp_path):
    report = build_report(suite)
    json_path, md_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert md_path.read_text() == report_markdown(report)


def test_metric_applying_to_no_configured_task_keeps_its_label(test_metrics):
    s = MetricSuite(MetricsConfig(metrics=["peak_test"], tasks=["t2v"]))
    report = build_report(s)
    assert report["columns"][0]["label"] == "Peak" and report["columns"][0]["higher_is_better"] is True
    assert report["tasks"]["t2v"]["peak_test"]["status"] == "n/a"


def _ok(value, protocol):
    return {"status": "ok", "value": value, "n": 3, "protocol": protocol}


def test_table1_prefers_the_papers_protocol_and_marks_another():
    from klear_lightning.metrics.report import table1, table1_markdown

    tasks = {
        "t2av": {
            "fd_panns_avbench": _ok(1.5, "av-benchmark PANNs"),
            "kl_panns_avbench": _ok(0.7, "av-benchmark PANNs KL"),
            "clap_score_versebench": _ok(0.3, "Verse-Bench CLAP"),
            "wer_whisper_tiny_en_seedtts": _ok(0.2, "Seed-TTS whisper"),
            "wer_sensevoice_versebench": {"status": "not computed", "reason": "needs FunASR"},
            "desync_versebench_abs": _ok(0.4, "abs"),
            "desync_versebench": _ok(-0.1, "signed"),
        }
    }
    cells = table1(tasks)["t2av"]
    assert cells["FD"]["key"] == "fd_panns_avbench" and cells["FD"]["paper_protocol"] is False
    assert cells["CLAP"]["key"] == "clap_score_versebench" and cells["CLAP"]["paper_protocol"] is True
    assert cells["WER"]["key"] == "wer_whisper_tiny_en_seedtts" and cells["WER"]["paper_protocol"] is False
    assert cells["AV-A"]["key"] == "desync_versebench" and cells["AV-A"]["value"] == -0.1
    assert cells["SNC"] == {"status": "not computed", "reason": "no metric for this column is configured"}
    md = table1_markdown(table1(tasks))
    assert md[2] == "| Row | MS | AS | ID | FD | KL | CLAP | WER | AV-A | SNC | MOS | IB |"
    assert (
        "| t2av | not computed | not computed | not computed | 1.5 † (N=3) | 0.7 † (N=3) | 0.3 (N=3) | 0.2 † (N=3) | -0.1 (N=3) |"
        in md[4]
    )
    assert any(
        line.startswith("- FD: `fd_panns_avbench`: av-benchmark PANNs † (the paper's: LAION CLAP") for line in md
    )
    assert "- CLAP: `clap_score_versebench`: Verse-Bench CLAP" in md
