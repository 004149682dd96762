"""A bad config fails before training starts, with a message naming the field at fault."""

from __future__ import annotations

import pytest
import yaml

from klear_lightning.errors import ConfigError
from klear_lightning.lightning_cli import cli_main
from tests.helpers.tiny import RandomAVData, quiet_trainer, tiny_module


def _run(tmp_path, model: dict | None = None, data: dict | None = None) -> None:
    cfg = {
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path)},
        "model": {"net": {"dim": 32, "depth": 1, "heads": 2}, **(model or {})},
        "data": data or {"class_path": "tests.helpers.tiny.RandomAVData"},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli_main(["fit", "--config", str(path)])


def test_unknown_task_name(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.task_weights\.t2x: unknown task 't2x'"):
        _run(tmp_path, model={"task_weights": {"t2v": 1.0, "t2x": 1.0}})


def test_task_weights_all_zero(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.task_weights: all task weights are zero"):
        _run(tmp_path, model={"task_weights": {"t2v": 0.0, "t2a": 0.0}})


def test_missing_data_path(tmp_path):
    data = {
        "class_path": "klear_lightning.data.datamodule.AVDataModule",
        "init_args": {"root": str(tmp_path / "nowhere"), "train_splits": {"sound": 1.0}},
    }
    with pytest.raises(ConfigError, match=r"^data\.init_args\.root: path does not exist: .*nowhere"):
        _run(tmp_path, data=data)


def test_unknown_attention_backend(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.net\.attention_backend: unknown attention backend 'fast'"):
        _run(tmp_path, model={"net": {"dim": 32, "depth": 1, "heads": 2, "attention_backend": "fast"}})


def test_codec_model_width_mismatch(tmp_path):
    module = tiny_module(
        net=tiny_module().model_config.__class__.preset(
            "tiny", dim=32, depth=1, heads=2, text_dim=16, video_channels=8, audio_channels=4
        )
    )
    with pytest.raises(
        ConfigError, match=r"^model\.net\.video_channels = 8 does not match the video codec channels = 4"
    ):
        quiet_trainer(tmp_path, steps=1).fit(module, datamodule=RandomAVData())


@pytest.mark.parametrize("field, value", [("video_latent_fps", 5.0), ("audio_latent_fps", 43.0)])
def test_latent_fps_mismatch_outside_the_cli(tmp_path, field, value):
    """A module built in Python (no CLI links) whose latent rates differ from the data's would give
    aligned MixD-RoPE wrong audio times: it fails before training, naming the field."""
    base = tiny_module().model_config
    module = tiny_module(
        net=base.__class__.preset(
            "tiny",
            **{
                **{
                    k: getattr(base, k)
                    for k in (
                        "dim",
                        "depth",
                        "heads",
                        "text_dim",
                        "video_channels",
                        "audio_channels",
                        "video_latent_fps",
                        "audio_latent_fps",
                    )
                },
                "rope_mode": "aligned",
                field: value,
            },
        )
    )
    expected = getattr(RandomAVData().sequence, field)
    with pytest.raises(
        ConfigError, match=rf"^model\.net\.{field} = {value} does not match the data's {field} = {expected}"
    ):
        quiet_trainer(tmp_path, steps=1).fit(module, datamodule=RandomAVData())
