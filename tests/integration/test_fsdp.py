"""FSDP2 on 2 CPU processes (gloo, ModelParallelStrategy), the whole path `configs/pretrain.yaml` takes:
bf16 parameters (fp32 master weights), gradient clipping, validation with the EMA swap, sampling and
media logging, sharded checkpoints, a SIGKILL, and an exact resume from the last sharded folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import subprocess_env


def _config(run: Path, steps: int, record: str, kill_at: int | None = None) -> dict:
    kill = [
        {
            "class_path": "tests.helpers.callbacks.KillOnceAt",
            "init_args": {"step": kill_at},
        }
    ]
    return {
        "seed_everything": 5,
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "max_steps": steps,
            "gradient_clip_val": 0.5,
            "limit_val_batches": 1,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "logger": {"class_path": "klear_lightning.logging.KlearMLFlowLogger", "init_args": {"run_dir": str(run)}},
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "strategy": {
                "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run / "ckpt"),
                        "every_n_train_steps": 2,
                        "save_top_k": -1,
                        "filename": "{step}",
                    },
                },
                {"class_path": "klear_lightning.callbacks.ema.EMA", "init_args": {"decay": 0.9}},
                {
                    "class_path": "klear_lightning.callbacks.media_logger.MediaLogger",
                    "init_args": {"tasks": ["t2av"], "clips": 1, "sampler": {"steps": 2}},
                },
                {"class_path": "tests.helpers.callbacks.LossRecorder", "init_args": {"path": record}},
                *(kill if kill_at else []),
            ],
        },
        "model": {
            "net": {"dim": 32, "depth": 2, "heads": 2, "attention_backend": "reference"},
            "task_weights": {"t2av": 1.0, "t2v": 1.0, "ti2av": 1.0},
            "optim": {"lr": 1e-3},
            "parallel": {"activation_checkpointing": True, "param_dtype": "bfloat16"},
        },
        "data": {"class_path": "tests.helpers.tiny.RandomAVData", "init_args": {"seed": 2}},
    }


def _torchrun(cfg: Path, *extra: str, killed: bool = False) -> None:
    env = subprocess_env()
    # --standalone: a free port (other test runs may share the machine)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "klear_lightning.cli",
        "fit",
        "--config",
        str(cfg),
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if killed:
        assert done.returncode != 0 and "exitcode: -9" in done.stderr, done.stderr[-4000:]  # SIGKILL
    else:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _read(record: Path) -> list[dict[int, list[float]]]:
    """Per rank: every loss recorded for each step, in order (a resumed step appears twice)."""
    out = []
    for rank in (0, 1):
        losses: dict[int, list[float]] = {}
        for step, loss in map(json.loads, Path(f"{record}.rank{rank}.jsonl").read_text().splitlines()):
            losses.setdefault(step, []).append(loss)
        out.append(losses)
    return out


@pytest.mark.slow
def test_fsdp2_two_processes_whole_path_killed_and_resumed(tmp_path):
    # validates (EMA swap, sampling, media) at step 2, is killed at the end of step 4, then the same
    # command resumes from the last sharded checkpoint (step 2) and runs steps 3 and 4 again
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "run", 4, str(tmp_path / "loss"), kill_at=4)))
    _torchrun(config, killed=True)
    ckpt = tmp_path / "run" / "ckpt" / "step=2.ckpt"
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file(), "expected a sharded (distributed) checkpoint folder"
    assert not (tmp_path / "run" / "ckpt" / "step=4.ckpt").exists(), "killed before its step-4 checkpoint"
    media = tmp_path / "run" / "media" / "step_0000002" / "t2av"
    assert sorted(p.suffix for p in media.iterdir()) == [".mp4", ".png", ".png", ".wav"], (
        "validation media (and the panel) at step 2"
    )
    _torchrun(config, "--ckpt_path", str(ckpt))
    losses = _read(tmp_path / "loss")
    assert losses[0][1] != losses[1][1], "ranks must draw different noise"
    for rank in (0, 1):
        assert sorted(losses[rank]) == [1, 2, 3, 4]
        for step in (3, 4):
            killed, resumed = losses[rank][step]
            assert resumed == pytest.approx(killed, rel=1e-5), (rank, step)

    # the weights after validation at step 2 (EMA swapped in and back) gave the same step-3 loss as the
    # resumed run, which never validated: the swap restored the training weights exactly.
    # the next stage starts from the sharded folder (model.init_from), loaded without a process group
    from klear_lightning.module import KlearModule
    from tests.helpers.tiny import tiny_config

    cfg = tiny_config(dim=32, depth=2, heads=2)
    torch.manual_seed(0)
    fresh = KlearModule(net=cfg)
    fresh.configure_model()
    torch.manual_seed(0)
    staged = KlearModule(net=cfg, init_from=str(tmp_path / "run" / "ckpt" / "step=4.ckpt"))
    staged.configure_model()
    changed = [k for k, v in fresh.model.state_dict().items() if not torch.equal(v, staged.model.state_dict()[k])]
    assert len(changed) > 10

    # `klear generate` / `klear test` read the sharded folder too: EMA weights from meta.pt, else the shards
    from klear_lightning.generate import inference_module

    folder = tmp_path / "run" / "ckpt" / "step=4.ckpt"
    shadow = torch.load(folder / "meta.pt", weights_only=True)["callbacks"]["EMA"]["shadow"]
    ema, _ = inference_module(config, folder)
    raw, _ = inference_module(config, folder, use_ema=False)
    for name, value in shadow.items():
        torch.testing.assert_close(ema.model.state_dict()[name], value, rtol=0, atol=0)
    for name, value in staged.model.state_dict().items():
        torch.testing.assert_close(raw.model.state_dict()[name], value, rtol=0, atol=0)
    assert any(not torch.equal(ema.model.state_dict()[n], raw.model.state_dict()[n]) for n in shadow)
