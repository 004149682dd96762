"""A tiny untrained model's checkpoint and config on a two-clip SyncWorld (`klear generate`, `klear test --prompts`)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml


def tiny_syncworld_checkpoint(root: Path) -> tuple[Path, Path]:
    """(config.yaml, model.ckpt) under `root`: a one-block denoiser over `root/data`, a SyncWorld of two
    `sound` clips at 1 s / 8 fps / 32 px; the checkpoint holds the initial weights."""
    from klear_lightning.data.syncworld import generate_syncworld
    from klear_lightning.lightning_cli import instantiate_model_and_data

    generate_syncworld(root / "data", clips_per_split=2, splits=["sound"])
    cfg = {
        "model": {"net": {"dim": 32, "depth": 1, "heads": 2, "video_patch": 2, "audio_patch": 2}},
        "data": {
            "class_path": "klear_lightning.data.datamodule.AVDataModule",
            "init_args": {
                "root": str(root / "data"),
                "train_splits": {"sound": 1.0},
                "num_workers": 0,
                "clip": {"duration": 1.0, "fps": 8.0, "height": 32, "width": 32},
                "stats_samples": 2,
            },
        },
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    module, _ = instantiate_model_and_data(config)
    module.configure_model()
    ckpt = root / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}, ckpt)
    return config, ckpt
