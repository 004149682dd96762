"""Reading checkpoints: a missing, truncated, foreign or unsafe file fails with one line naming the setting."""

from __future__ import annotations

import os
from dataclasses import asdict

import pytest
import torch

from klear_lightning.checkpoint import CheckpointError, check_checkpoint_path, load_model_weights, read_checkpoint
from klear_lightning.models import ModelConfig, build_model
from tests.helpers.tiny import RandomAVData, quiet_trainer, tiny_config, tiny_module


def _klear_checkpoint(path, cfg: ModelConfig) -> None:
    model = build_model(cfg)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "klear": {"model_config": asdict(cfg)},
        },
        path,
    )


class _Foreign:
    pass


def test_unreadable_files_name_the_setting(tmp_path):
    good = tmp_path / "good.ckpt"
    _klear_checkpoint(good, tiny_config())
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(os.urandom(2048))
    pickled = tmp_path / "object.ckpt"
    torch.save({"x": _Foreign()}, pickled)
    with pytest.raises(CheckpointError, match=r"^model\.init_from: .*missing\.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt", "model.init_from")
    for path in (truncated, noise):
        with pytest.raises(CheckpointError, match=r"^ckpt_path: .* is not a checkpoint written by torch\.save"):
            read_checkpoint(path)
    with pytest.raises(
        CheckpointError, match=r"^ckpt_path: .* refused \(checkpoints are read with weights_only=True\)"
    ):
        read_checkpoint(pickled)
    assert "state_dict" in read_checkpoint(good)


def test_foreign_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"^ckpt_path: .* holds no `model\.\*` weights"):
        check_checkpoint_path(plain)
    with pytest.raises(CheckpointError, match=r"^ckpt_path: .* is not a sharded checkpoint"):
        check_checkpoint_path(tmp_path)
    check_checkpoint_path("last")  # Lightning resolves it itself


def test_checkpoint_of_another_model_names_the_differing_field(tmp_path):
    other = tmp_path / "other.ckpt"
    _klear_checkpoint(other, tiny_config(dim=64, heads=4))
    with pytest.raises(
        CheckpointError, match=r"^model\.init_from: .* another model: model\.net\.dim = 64 there, 32 here"
    ):
        load_model_weights(other, build_model(tiny_config(dim=32, heads=4)))


def test_resuming_from_another_models_checkpoint_fails_before_loading(tmp_path):
    trainer = quiet_trainer(tmp_path, steps=1)
    trainer.fit(tiny_module(), datamodule=RandomAVData())
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    wider = tiny_module(net=tiny_config(dim=48, heads=2))
    with pytest.raises(CheckpointError, match=r"^ckpt_path: .* another model: model\.net\.dim = 32 there, 48 here"):
        quiet_trainer(tmp_path / "b", steps=2).fit(wider, datamodule=RandomAVData(), ckpt_path=path)
