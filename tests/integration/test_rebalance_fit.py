"""Curriculum rebalancing through a real `klear fit`: the weight of the split made harder rises."""

from __future__ import annotations

import pytest

from tests.helpers import klear


def _harder_video(root, partition: str, split: str, mix: float, seed: int) -> None:
    """Rewrite one split's shards with every frame mixed with uniform random pixels (a split the
    model cannot learn as far as the others)."""
    import shutil

    import numpy as np

    from klear_lightning.data.shards import ShardWriter, iter_tar, parse_sample, read_index

    samples = [
        parse_sample(raw, str(info.url)).to_sample()
        for info in read_index(root / partition, split)
        for raw in iter_tar(info.url)
    ]
    shutil.rmtree(root / partition / split)
    rng = np.random.default_rng(seed)
    with ShardWriter(root / partition, split) as writer:
        for sample in samples:
            noise = rng.integers(0, 256, sample.video.shape)
            sample.video = np.round((1 - mix) * sample.video + mix * noise).astype(np.uint8)
            writer.write(sample)


@pytest.mark.slow
def test_klear_fit_raises_the_weight_of_the_split_made_harder(tmp_path):
    """A real `klear fit` (tiny model, 40 steps, validation every 10) on a SyncWorld of two splits
    whose `sound` video is half random pixels: the logged `rebalance/split/sound` rises at every
    validation after the first (the reference). Its raw loss is not the higher one here, so a
    raw-loss rule would not find it: it is the split that improves least."""
    import yaml
    from mlflow.tracking import MlflowClient

    from klear_lightning.data.cache import cache_latents
    from klear_lightning.data.syncworld import generate_syncworld
    from klear_lightning.logging import sqlite_uri
    from klear_lightning.sequence import ClipSpec

    clip = ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000)
    root, run = tmp_path / "syncworld", tmp_path / "run"
    generate_syncworld(
        root, clips_per_split=32, splits=["sound", "singing"], duration=clip.duration, size=clip.height, holdout=[]
    )
    for partition in ("train", "val"):
        _harder_video(root, partition, "sound", mix=0.5, seed=0)
    cache_latents(root, ["sound", "singing"], partitions=["train", "val"], clip=clip, workers=1)
    run.mkdir()
    config = {
        "seed_everything": 0,
        "stage": "specialize",
        "ablation": "rebalance_test",
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 40,
            "val_check_interval": 10,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "default_root_dir": str(run),
            "logger": {"class_path": "klear_lightning.logging.KlearMLFlowLogger", "init_args": {"run_dir": str(run)}},
            "callbacks": [{"class_path": "klear_lightning.callbacks.rebalance.Rebalance", "init_args": {"rate": 0.5}}],
        },
        "model": {
            "net": {"dim": 32, "depth": 2, "heads": 2, "audio_patch": 2},
            "task_weights": {"t2a": 1.0, "t2av": 1.0},
            "optim": {"lr": 3e-3, "warmup_steps": 5},
        },
        "data": {
            "class_path": "klear_lightning.data.AVDataModule",
            "init_args": {
                "root": str(root),
                "train_splits": {"sound": 1.0, "singing": 1.0},
                "val_splits": ["sound", "singing"],
                "clip": dict(vars(clip)),
                "batch_size": 8,
                "num_workers": 0,
                "epoch_samples": 64,
                "seed": 1,
            },
        },
    }
    (run / "cfg.yaml").write_text(yaml.safe_dump(config))
    done = klear("fit", "--config", str(run / "cfg.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(sqlite_uri(run))
    run_id = client.search_runs([client.get_experiment_by_name("klear").experiment_id])[0].info.run_id
    weights = [
        m.value for m in sorted(client.get_metric_history(run_id, "rebalance/split/sound"), key=lambda m: m.step)
    ]
    assert len(weights) == 4 and weights[0] == pytest.approx(0.5)
    assert weights[1] > weights[0] and weights[2] > weights[1] and weights[3] > weights[2], weights
