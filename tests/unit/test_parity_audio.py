"""Audio extractors compute what the official implementations compute (benchmarks/parity), and their
official checkpoint files load through the allow-list reader while malicious ones are refused."""

import os
from pathlib import Path

import pytest
import torch

from benchmarks.parity import panns as panns_parity
from klear_lightning.metrics.panns import Cnn14, load_cnn14
from klear_lightning.safe_pickle import UnsafeFileError


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _require(result):
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-4, result
    return result


def test_panns_matches_panns_inference_on_identical_weights():
    _require(panns_parity.check())


def _light_cnn14_state():
    """Cnn14's keys and shapes, every tensor a view of one shared storage (a small file to write)."""
    shapes = {k: v.shape for k, v in Cnn14().state_dict().items()}
    pool = torch.arange(max(s.numel() for s in shapes.values()), dtype=torch.float32) / 1e6
    return {k: pool[: s.numel()].view(s) for k, s in shapes.items()}


def test_panns_official_training_checkpoint_loads_where_plain_weights_only_refuses(tmp_path):
    state = _light_cnn14_state()
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save(panns_parity.official_checkpoint(state), path)
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)  # the reported failure: numpy arrays in the sampler state
    for legacy in (False, True):
        torch.save(panns_parity.official_checkpoint(state), path, _use_new_zipfile_serialization=not legacy)
        model = load_cnn14(path)
        assert torch.equal(model.fc1.weight, state["fc1.weight"])


def test_panns_malicious_checkpoint_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = panns_parity.official_checkpoint({"fc1.weight": torch.zeros(2, 2)})
    checkpoint["sampler"]["queue"] = _Exploit(marker)
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeFileError, match="Cnn14_16k_mAP=0.438.pth"):
        load_cnn14(path)
    assert not marker.exists()


@pytest.mark.slow
def test_clap_fusion_model_matches_verse_bench_laion_code():
    from benchmarks.parity import clap as clap_parity

    _require(clap_parity.check(kinds=("fusion",)))


def test_clap_malicious_laion_checkpoint_is_refused_naming_the_file(tmp_path):
    from klear_lightning.metrics.clap import load_laion_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "630k-audioset-fusion-best.pt"
    torch.save({"epoch": 45, "name": _Exploit(marker), "state_dict": {"module.logit_scale_a": torch.zeros(())}}, path)
    with pytest.raises(UnsafeFileError, match="630k-audioset-fusion-best.pt"):
        load_laion_checkpoint(path)
    assert not marker.exists()


def test_passt_and_versebench_kl_match_verse_bench_code():
    from benchmarks.parity import passt as passt_parity

    _require(passt_parity.check())


def test_passt_malicious_checkpoint_is_refused_naming_the_file(tmp_path):
    from klear_lightning.metrics.nets.passt import load_passt

    marker = tmp_path / "pwned"
    path = tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save({"cls_token": torch.zeros(1, 1, 8), "extra": _Exploit(marker)}, path)
    with pytest.raises(UnsafeFileError, match="passt-s-f128-p16-s10-ap.476-swa.pt"):
        load_passt(path)
    assert not marker.exists()


def test_whisper_through_faster_whisper_matches_transformers_whisper():
    from benchmarks.parity import whisper as whisper_parity

    _require(whisper_parity.check())


def test_parity_runner_writes_one_entry_per_extractor(tmp_path, monkeypatch):
    """`python -m benchmarks metric_parity` runs every module's check() and records each result,
    skipped ones with their reason (here with the heavy checks stubbed out)."""
    import json

    import benchmarks.common
    from benchmarks import metric_parity
    from benchmarks.parity import ParityResult

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    fake = {name: ParityResult(name, "ref", 1e-6, ("fmt",)) for name in ("clap", "panns", "passt", "whisper")}
    monkeypatch.setattr(
        metric_parity,
        "run",
        lambda names=None: [*fake.values(), ParityResult("mos_predictor", "x", None, (), skipped="not implemented")],
    )
    metric_parity.main()
    out = json.loads((tmp_path / "metric_parity.json").read_text())["extractors"]
    assert set(out) == set(fake) | {"mos_predictor"}
    assert out["panns"]["passed"] is True and out["mos_predictor"]["skipped"] == "not implemented"
    assert {"clap", "panns", "passt", "sensevoice", "whisper", "imagebind", "mos"} <= set(metric_parity.modules())
