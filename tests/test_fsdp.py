"""FSDP2 on 2 CPU processes (gloo, ModelParallelStrategy): sharded checkpoint, exact resume from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


class LossRecorder(L.Callback):
    """Appends (global step, loss) of every step on this rank to `<path>.rank<r>.jsonl`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\n")


def _config(run: Path, steps: int, record: str) -> dict:
    return {
        "seed_everything": 5,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "max_steps": steps, "logger": False, "limit_val_batches": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run),
            "strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                         "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": 2, "save_top_k": -1,
                               "filename": "{step}"}},
                {"class_path": "klear_lightning.callbacks.ema.EMA", "init_args": {"decay": 0.9}},
                {"class_path": "test_fsdp.LossRecorder", "init_args": {"path": record}},
            ],
        },
        "model": {
            "model": {"dim": 32, "depth": 2, "heads": 2, "attention_backend": "reference"},
            "task_weights": {"t2av": 1.0, "t2v": 1.0, "ti2av": 1.0},
            "optim": {"lr": 1e-3},
            "parallel": {"activation_checkpointing": True, "param_dtype": "float32"},
        },
        "data": {"class_path": "test_module.RandomAVData", "init_args": {"seed": 2}},
    }


def _torchrun(cfg: Path, *extra: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "klear_lightning.cli", "fit", "--config", str(cfg), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _read(record: Path) -> dict[int, dict[int, float]]:
    out = {}
    for rank in (0, 1):
        lines = Path(f"{record}.rank{rank}.jsonl").read_text().splitlines()
        out[rank] = {step: loss for step, loss in map(json.loads, lines)}
    return out


@pytest.mark.slow
def test_fsdp2_two_processes_sharded_checkpoint_and_resume(tmp_path):
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump(_config(tmp_path / "ref", 4, str(tmp_path / "ref_loss"))))
    _torchrun(ref)
    ckpt = tmp_path / "ref" / "ckpt" / "step=2.ckpt"
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file(), "expected a sharded (distributed) checkpoint folder"
    resumed = tmp_path / "resume.yaml"
    resumed.write_text(yaml.safe_dump(_config(tmp_path / "resume", 4, str(tmp_path / "resume_loss"))))
    _torchrun(resumed, "--ckpt_path", str(ckpt))
    want, got = _read(tmp_path / "ref_loss"), _read(tmp_path / "resume_loss")
    assert want[0][1] != want[1][1], "ranks must draw different noise"
    for rank in (0, 1):
        assert sorted(got[rank]) == [3, 4]
        for step in (3, 4):
            assert got[rank][step] == pytest.approx(want[rank][step], rel=1e-5), (rank, step)

    # the next stage starts from the sharded folder (model.init_from), loaded without a process group
    from test_module import tiny_config

    from klear_lightning.module import KlearModule

    cfg = tiny_config(dim=32, depth=2, heads=2)
    torch.manual_seed(0)
    fresh = KlearModule(model=cfg)
    fresh.configure_model()
    torch.manual_seed(0)
    staged = KlearModule(model=cfg, init_from=str(tmp_path / "ref" / "ckpt" / "step=4.ckpt"))
    staged.configure_model()
    changed = [k for k, v in fresh.model.state_dict().items() if not torch.equal(v, staged.model.state_dict()[k])]
    assert len(changed) > 10

    # `klear generate` / `klear test` read the sharded folder too: EMA weights from meta.pt, else the shards
    from klear_lightning.cli import load_for_inference

    folder = tmp_path / "ref" / "ckpt" / "step=4.ckpt"
    shadow = torch.load(folder / "meta.pt", weights_only=True)["callbacks"]["EMA"]["shadow"]
    ema, _ = load_for_inference(ref, folder)
    raw, _ = load_for_inference(ref, folder, use_ema=False)
    for name, value in shadow.items():
        torch.testing.assert_close(ema.model.state_dict()[name], value, rtol=0, atol=0)
    for name, value in staged.model.state_dict().items():
        torch.testing.assert_close(raw.model.state_dict()[name], value, rtol=0, atol=0)
    assert any(not torch.equal(ema.model.state_dict()[n], raw.model.state_dict()[n]) for n in shadow)
