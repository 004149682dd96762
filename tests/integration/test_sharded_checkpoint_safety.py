"""A sharded checkpoint folder's `.metadata` (a pickle) is read with an allow-list everywhere the
project reads such folders: `model.init_from`, `klear generate` / `klear test` (load_for_inference),
and `--ckpt_path` of fit / validate / test / predict (before Lightning reads it)."""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.api import CheckpointException

from klear_lightning.safe_pickle import SafeFileSystemReader, UnsafeFileError, load_dcp_metadata
from tests.helpers.tiny import tiny_config


class _Exploit:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_model() -> torch.nn.Module:
    from klear_lightning.models import build_model

    return build_model(tiny_config(dim=32, depth=2, heads=2))


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """A genuine sharded folder whose `.metadata` was replaced by one that runs a command."""
    folder = tmp_path / "step=4.ckpt"
    dcp.save({"state_dict": {f"model.{k}": v for k, v in _tiny_model().state_dict().items()}}, checkpoint_id=folder)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Exploit(marker)))
    return folder, marker


def test_real_metadata_passes_the_allow_list(tmp_path):
    state = {
        "state_dict": {"model.w": torch.randn(4, 3), "model.h": torch.zeros(5, dtype=torch.bfloat16)},
        "step": 7,
        "extra": {"names": ["a", "b"]},
    }
    dcp.save(state, checkpoint_id=tmp_path)
    metadata = load_dcp_metadata(tmp_path)
    assert {"state_dict.model.w", "state_dict.model.h", "step"} <= set(metadata.state_dict_metadata)
    back = {"state_dict": {"model.w": torch.empty(4, 3), "model.h": torch.empty(5, dtype=torch.bfloat16)}}
    dcp.load(back, storage_reader=SafeFileSystemReader(tmp_path))
    assert torch.equal(back["state_dict"]["model.w"], state["state_dict"]["model.w"])


def test_init_from_refuses_a_planted_metadata(planted):
    from klear_lightning.checkpoint import load_model_weights

    folder, marker = planted
    with pytest.raises(UnsafeFileError, match=r"step=4\.ckpt/\.metadata: refused to unpickle global 'posix\.system'"):
        load_model_weights(folder, _tiny_model())
    with pytest.raises(CheckpointException) as refused:  # torch wraps the reader's error
        dcp.load({"state_dict": {}}, storage_reader=SafeFileSystemReader(folder))
    assert "/.metadata: refused to unpickle global 'posix.system'" in "".join(traceback.format_exception(refused.value))
    assert not marker.exists(), "the planted pickle ran"


def _config(tmp_path: Path) -> Path:
    cfg = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "run"),
        },
        "model": {"net": {"dim": 32, "depth": 2, "heads": 2, "attention_backend": "reference"}},
        "data": {"class_path": "tests.helpers.tiny.RandomAVData", "init_args": {"seed": 2}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_generate_and_resume_refuse_a_planted_metadata(planted, tmp_path):
    from klear_lightning.generate import inference_module
    from klear_lightning.lightning_cli import cli_main

    folder, marker = planted
    config = _config(tmp_path)
    with pytest.raises(UnsafeFileError, match=r"\.metadata: refused to unpickle"):
        inference_module(config, folder)
    for command in ("fit", "validate"):
        with pytest.raises(UnsafeFileError, match=r"\.metadata: refused to unpickle"):
            cli_main([command, "--config", str(config), "--ckpt_path", str(folder)])
    assert not marker.exists(), "the planted pickle ran"
