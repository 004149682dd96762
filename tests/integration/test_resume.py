"""Exact resume: a `klear fit` on the real AVDataModule (a tiny SyncWorld, cached latents, two
DataLoader worker processes), killed with SIGKILL after a mid-epoch checkpoint and resumed with
`--ckpt_path last`, logs the same per-step losses as an uninterrupted run, into the same MLflow run:
model, optimizer, RNGs and the data module's train stream all continue where they stopped."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from klear_lightning.checkpoint import AtomicCheckpointIO
from klear_lightning.data.cache import cache_latents
from klear_lightning.data.syncworld import generate_syncworld
from klear_lightning.logging import sqlite_uri
from klear_lightning.sequence import ClipSpec
from tests.helpers import klear

STEPS = 8  # epochs of 6 batches (2 workers x 3); the checkpoint at step 3 is mid-epoch, on worker 1's turn
CLIP = ClipSpec(duration=2.0, fps=8.0, height=32, width=32, sample_rate=16000)


@pytest.fixture(scope="module")
def syncworld(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syncworld")
    generate_syncworld(root, clips_per_split=6, splits=["sound"], duration=CLIP.duration, size=CLIP.height, holdout=[])
    cache_latents(root, ["sound"], partitions=["train"], clip=CLIP, workers=1)
    return root


def _config(run_dir: Path, data_root: Path, kill_at: int | None) -> dict:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(run_dir / "ckpt"),
                "every_n_train_steps": 3,
                "save_last": True,
                "save_top_k": -1,
            },
        },
        {"class_path": "klear_lightning.callbacks.ema.EMA", "init_args": {"decay": 0.9}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.helpers.callbacks.KillAt", "init_args": {"step": kill_at}})
    return {
        "seed_everything": 3,
        "stage": "pretrain",
        "ablation": "resume_test",
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": STEPS,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": True,
            "default_root_dir": str(run_dir),
            "logger": {
                "class_path": "klear_lightning.logging.KlearMLFlowLogger",
                "init_args": {"run_dir": str(run_dir)},
            },
            "callbacks": callbacks,
        },
        "model": {
            "net": {"dim": 32, "depth": 2, "heads": 2, "attention_backend": "reference"},
            "task_weights": {"t2av": 1.0, "t2v": 1.0, "t2a": 1.0, "ti2av": 1.0},
            "caption_dropout": 0.2,
            "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        },
        "data": {
            "class_path": "klear_lightning.data.AVDataModule",
            "init_args": {
                "root": str(data_root),
                "train_splits": {"sound": 1.0},
                "clip": dict(vars(CLIP)),
                "batch_size": 2,
                "num_workers": 2,
                "epoch_samples": 12,
                "shuffle_buffer": 2,
                "seed": 1,
            },
        },
    }


def _losses(run_dir: Path) -> tuple[int, dict[int, float]]:
    client = MlflowClient(sqlite_uri(run_dir))
    exp = client.get_experiment_by_name("klear")
    runs = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    return len(runs), {m.step: m.value for m in history}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, syncworld):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    for d, kill in ((ref_dir, None), (kill_dir, 5)):
        d.mkdir()
        (d / "cfg.yaml").write_text(yaml.safe_dump(_config(d, syncworld, kill)))
    done = klear("fit", "--config", str(ref_dir / "cfg.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = klear("fit", "--config", str(kill_dir / "cfg.yaml"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    stream = torch.load(kill_dir / "ckpt" / "last.ckpt", weights_only=True)["AVDataModule"]
    assert (stream["epoch"], stream["consumed"]) == (0, 3)
    (kill_dir / "cfg.yaml").write_text(yaml.safe_dump(_config(kill_dir, syncworld, None)))
    resumed = klear("fit", "--config", str(kill_dir / "cfg.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    n_ref, ref = _losses(ref_dir)
    n_kill, got = _losses(kill_dir)
    assert n_ref == 1 and n_kill == 1, "resume must continue the same MLflow run"
    assert len(ref) == STEPS and sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), f"step {step}"
    ckpt = torch.load(kill_dir / "ckpt" / "last.ckpt", weights_only=True)
    ref_ckpt = torch.load(ref_dir / "ckpt" / "last.ckpt", weights_only=True)
    for k, v in ref_ckpt["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=1e-6, atol=1e-7)


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        io.save_checkpoint({"w": torch.zeros(3), "bad": Unsaveable()}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
